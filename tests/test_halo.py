"""Row-band reading with a margin gives exactly the blocks BlockReader reads, decoding each tile once."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.halo import RowBandReader, row_bands, suits
from pipeline.raster import iter_windows, open_raster
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


def test_row_bands_refuse_what_they_cannot_read():
    from rasterio.windows import Window

    assert not suits([Window(0, 0, 10, 2), Window(0, 2, 10, 2)], 4, 10, 1, 4)  # bands thinner than the margin
    assert not suits([Window(0, 0, 10, 16)], 4, 10, 1000, 4, budget=1000)  # over the memory budget
    with pytest.raises(ValueError):
        row_bands([Window(0, 0, 5, 16), Window(5, 0, 5, 8)])
