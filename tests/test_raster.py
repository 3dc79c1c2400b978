"""Raster I/O: validity masks, window iteration, the atomic COG writer."""

import numpy as np
import pytest
import rasterio

from pipeline.errors import InputError
from pipeline.raster import (
    RasterWriter,
    WindowReader,
    describe,
    iter_windows,
    open_raster,
    valid_mask,
    write_raster,
)
from tests.conftest import write_tif


def test_valid_mask_every_band_must_be_valid():
    data = np.ones((3, 2, 2), np.float32)
    data[0, 0, 0] = np.nan
    data[2, 1, 1] = -9999
    data[1, 0, 1] = np.inf
    assert valid_mask(data, -9999.0).tolist() == [[False, False], [True, False]]


def test_nodata_not_representable_in_dtype_is_ignored():
    data = np.zeros((2, 2, 2), np.uint16)
    assert valid_mask(data, -9999.0).all()


def test_dataset_mask_is_honoured(tmp_path):
    data = np.ones((2, 8, 8), np.float32)
    path = write_tif(tmp_path / "m.tif", data)
    with rasterio.open(path, "r+") as ds:
        mask = np.full((8, 8), 255, np.uint8)
        mask[:2] = 0
        ds.write_mask(mask)
    with open_raster(path) as ds:
        _, valid = WindowReader(ds).read(iter_windows(ds)[0])
    assert not valid[:2].any() and valid[2:].all()


def test_windows_cover_the_raster_once(tmp_path):
    data = np.arange(3 * 70 * 90, dtype=np.float32).reshape(3, 70, 90)
    path = write_tif(tmp_path / "t.tif", data, tiled=True, blockxsize=32, blockysize=32)
    with open_raster(path) as ds:
        seen = np.zeros((70, 90), int)
        for w in iter_windows(ds):
            seen[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (seen == 1).all()


def test_writer_makes_cog_with_georeference(tmp_path):
    src = write_tif(tmp_path / "in.tif", np.ones((2, 600, 600), np.float32), nodata=-1.0)
    info = describe(src)
    out = tmp_path / "out" / "o.tif"
    write_raster(out, np.ones((2, 600, 600), np.float32), crs=info.crs, transform=info.transform, nodata=-1.0,
                 descriptions=["a", "b"])
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.crs == info.crs and ds.transform == info.transform and ds.nodata == -1.0
        assert ds.descriptions == ("a", "b")
        assert ds.overviews(1)  # 600 px > one 256 block: overviews exist
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.tif"]  # no temporaries left


def test_writer_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "o.tif"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError), RasterWriter(out, width=4, height=4, count=1, dtype="float32") as w:
        w.write(np.zeros((1, 4, 4), np.float32))
        raise RuntimeError("boom")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["o.tif"]


@pytest.mark.parametrize("content,message", [(None, "file not found"), (b"", "empty file"),
                                             (b"not a tiff", "not a readable raster")])
def test_bad_inputs_named(tmp_path, content, message):
    path = tmp_path / "x.tif"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        describe(path)
    assert str(path) in str(err.value)
