"""Row-band reading with a margin gives exactly the blocks BlockReader reads (or, padded, what the scorer pads them
to), decoding each tile once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.halo import RowBandReader, row_bands, suits
from pipeline.raster import iter_windows, open_raster, pixel_major
from pipeline.scoring import pad_to_halo
from pipeline.streaming import BlockReader
from tests.conftest import write_tif


@pytest.mark.parametrize("layout", [{"tiled": True, "blockxsize": 16, "blockysize": 16}, {}])
@pytest.mark.parametrize("margin", [1, 4])
def test_row_bands_give_blockreaders_blocks(tmp_path, layout, margin):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 50, 37)).astype(np.float32)
    img[:, 20, 7] = -9999.0
    tile = write_tif(tmp_path / "t.tif", img, nodata=-9999.0, **layout)
    with open_raster(tile) as ds:
        windows = iter_windows(ds)
        width, height = ds.width, ds.height
    assert suits(windows, margin, width, 3, 4)
    n = 0
    with BlockReader(tile, windows, width, height, margin=margin) as a, \
            RowBandReader(tile, windows, width, height, margin=margin) as b:
        for x, y in zip(a, b, strict=True):  # compared at once: BlockReader refills its buffers
            assert x.index == y.index and x.window == y.window and x.inner == y.inner
            np.testing.assert_array_equal(x.data, y.data)
            np.testing.assert_array_equal(x.valid, y.valid)
            n += 1
    assert n == len(windows)


@pytest.mark.parametrize("layout", [{"tiled": True, "blockxsize": 16, "blockysize": 16},
                                    {"tiled": True, "blockxsize": 16, "blockysize": 16, "interleave": "band"}, {}])
def test_padded_row_bands_give_the_blocks_the_scorer_pads_to(tmp_path, layout):
    rng = np.random.default_rng(1)
    img = rng.normal(size=(3, 40, 37)).astype(np.float32)
    img[:, 3, 30] = np.nan
    img[:, 17, 0] = -9999.0
    tile = write_tif(tmp_path / "t.tif", img, nodata=-9999.0, **layout)
    with open_raster(tile) as ds:
        windows = iter_windows(ds)
        width, height = ds.width, ds.height
    margin, n = 3, 0
    with BlockReader(tile, windows, width, height, margin=margin) as a, \
            RowBandReader(tile, windows, width, height, margin=margin, pad=True, depth=2) as b:
        for x, y in zip(a, b, strict=True):
            want_data, want_valid = pad_to_halo(x, margin)
            assert y.inner == (slice(margin, margin + int(y.window.height)),
                               slice(margin, margin + int(y.window.width)))
            assert pad_to_halo(y, margin)[0] is y.data  # already padded: handed over as it is
            np.testing.assert_array_equal(y.data, want_data)
            np.testing.assert_array_equal(y.valid, want_valid)
            if layout.get("interleave") != "band" and layout.get("tiled"):  # tiles decoded directly: kept so
                assert pixel_major(y.data)
            time.sleep(0.01)  # the reader fills its other buffers meanwhile, never the one held here
            np.testing.assert_array_equal(y.data, want_data)
            n += 1
    assert n == len(windows)


def test_pad_to_halo_keeps_pixel_interleaved_blocks_so():
    from rasterio.windows import Window

    from pipeline.streaming import Block

    pixels = np.arange(2 * 5 * 6, dtype=np.float32).reshape(5, 6, 2)  # (rows, cols, bands) memory
    block = Block(0, Window(0, 0, 6, 5), pixels.transpose(2, 0, 1), np.ones((5, 6), bool), (slice(0, 5), slice(0, 4)))
    data, valid = pad_to_halo(block, 2)  # the top-left corner of a raster: 2 rows and columns padded before
    assert pixel_major(data) and data.shape == (2, 9, 8) and valid.shape == (9, 8)
    np.testing.assert_array_equal(data[:, 2:7, 2:], pixels.transpose(2, 0, 1))
    assert not valid[:2].any() and not valid[:, :2].any() and valid[2:7, 2:].all() and not data[:, :2].any()


def test_row_bands_refuse_what_they_cannot_read():
    from rasterio.windows import Window

    assert not suits([Window(0, 0, 10, 2), Window(0, 2, 10, 2)], 4, 10, 1, 4)  # bands thinner than the margin
    assert not suits([Window(0, 0, 10, 16)], 4, 10, 1000, 4, budget=1000)  # over the memory budget
    with pytest.raises(ValueError):
        row_bands([Window(0, 0, 5, 16), Window(5, 0, 5, 8)])
