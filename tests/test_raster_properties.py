"""Property-based tests of the raster I/O: whatever the shape, block layout, pixel type, band count, nodata,
NaN/inf pattern and dataset mask, reading gives back exactly the file's pixels, window by window with no gap or
overlap, and exactly the right pixels valid; the writer gives back exactly what it was given."""

from __future__ import annotations

import numpy as np
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from pipeline.cog_writer import write_raster
from pipeline.raster import WindowReader, iter_windows, open_raster

DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64"]
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def rasters(draw):
    """A random raster: array (bands, rows, cols), nodata, dataset mask (or None) and GeoTIFF layout options."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    bands = draw(st.integers(1, 4))
    rows, cols = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind == "f":
        data = rng.normal(0, draw(st.sampled_from([1.0, 1e6, 1e30])), (bands, rows, cols)).astype(dtype)
        for special in (np.nan, np.inf, -np.inf):
            data[rng.random(data.shape) < draw(st.sampled_from([0.0, 0.02, 0.3]))] = special
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (bands, rows, cols), endpoint=True, dtype=dtype)
        data[rng.random(data.shape) < 0.3] = rng.integers(info.min, info.max, endpoint=True, dtype=dtype)
    nodata_kind = draw(st.sampled_from(["none", "present", "absent", "nan"] if dtype.kind == "f"
                                       else ["none", "present", "absent"]))
    nodata = None
    if nodata_kind == "present":  # a value that occurs, in some bands of some pixels
        nodata = data.flat[draw(st.integers(0, data.size - 1))].item()
        if dtype.kind == "f" and not np.isfinite(nodata):
            nodata = float(data.dtype.type(-9999))
            data[:, : rows // 2, : cols // 3] = nodata
    elif nodata_kind == "absent":
        nodata = float(np.finfo(dtype).min) if dtype.kind == "f" else int(np.iinfo(dtype).min)
        data[data == nodata] = 0
    elif nodata_kind == "nan":
        nodata = float("nan")
    mask = None
    if draw(st.booleans()):
        mask = np.where(rng.random((rows, cols)) < draw(st.sampled_from([0.0, 0.3, 1.0])), 0, 255).astype(np.uint8)
    layout = {"interleave": draw(st.sampled_from(["pixel", "band"]))}
    if draw(st.booleans()):
        size = draw(st.sampled_from([16, 32, 64]))
        layout.update(tiled=True, blockxsize=size, blockysize=size)
    else:
        layout["blockysize"] = draw(st.integers(1, rows))
    if draw(st.booleans()):
        layout["compress"] = "deflate"
    return data, nodata, mask, layout


def expected_valid(data: np.ndarray, nodata: float | None, mask: np.ndarray | None) -> np.ndarray:
    """Validity by the definition, pixel by pixel: every band finite, not nodata, not masked."""
    bad = np.zeros(data.shape, bool)
    if data.dtype.kind == "f":
        bad |= ~np.isfinite(data)
    if nodata is not None and not np.isnan(nodata):
        bad |= data == data.dtype.type(nodata)
    valid = ~bad.any(axis=0)
    if mask is not None:
        valid &= mask != 0
    return valid


@PROPS
@given(case=rasters())
def test_reading_gives_every_pixel_once_and_exactly_the_valid_ones(case, tmp_path_factory):
    data, nodata, mask, layout = case
    path = tmp_path_factory.mktemp("r") / "in.tif"
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype, nodata=nodata, crs="EPSG:32632", transform=from_origin(0, 0, 10, 10), **layout)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if mask is not None:
            ds.write_mask(mask)
    got = np.zeros_like(data)
    valid = np.zeros(data.shape[1:], bool)
    seen = np.zeros(data.shape[1:], np.int32)
    with open_raster(path) as ds:
        reader = WindowReader(ds)
        for w in iter_windows(ds):
            block, ok = reader.read(w)
            assert block.dtype == data.dtype and ok.dtype == bool
            rows = slice(int(w.row_off), int(w.row_off + w.height))
            cols = slice(int(w.col_off), int(w.col_off + w.width))
            got[:, rows, cols] = block
            valid[rows, cols] = ok
            seen[rows, cols] += 1
    assert (seen == 1).all()  # the windows tile the raster: no gap, no overlap
    assert np.array_equal(got, data, equal_nan=data.dtype.kind == "f")
    assert np.array_equal(valid, expected_valid(data, nodata, mask))


@PROPS
@given(case=rasters())
def test_writer_round_trips_pixels_and_georeference(case, tmp_path_factory):
    data, nodata, _, _ = case
    if nodata is not None and np.isnan(nodata):
        nodata = None
    path = tmp_path_factory.mktemp("w") / "out.tif"
    names = [f"b{i}" for i in range(data.shape[0])]
    transform = from_origin(500000, 5000000, 30, 30)
    write_raster(path, data, crs="EPSG:32632", transform=transform, nodata=nodata, descriptions=names)
    with rasterio.open(path) as ds:
        back = ds.read()
        assert ds.dtypes[0] == str(data.dtype)
        assert ds.crs == "EPSG:32632" and ds.transform == transform
        assert ds.descriptions == tuple(names)
        assert ds.nodata == nodata or (ds.nodata is not None and nodata is not None and
                                       data.dtype.type(ds.nodata) == data.dtype.type(nodata))
    assert np.array_equal(back, data, equal_nan=data.dtype.kind == "f")
    assert [p.name for p in path.parent.iterdir()] == ["out.tif"]  # no temporaries left
