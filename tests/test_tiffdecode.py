"""Decoding a GeoTIFF's tiles directly gives exactly what GDAL reads, or is not used at all."""

import numpy as np
import pytest
import rasterio

from pipeline.errors import InputError
from pipeline.raster import WindowReader, iter_windows, open_raster, pixel_major, valid_mask
from pipeline.scoring import score_raster
from pipeline.streaming import BlockReader
from pipeline.tiffdecode import TileDecoder
from tests.conftest import write_tif


def _scene(dtype, bands=5, rows=70, cols=90, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, (bands, rows, cols)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -3000), min(info.max, 3000), (bands, rows, cols)).astype(dtype)


def _reads(path, direct):
    """Every block of ``path`` as WindowReader gives it: [(data, valid)], and whether tiles were decoded."""
    with open_raster(path) as ds:
        reader = WindowReader(ds, direct=direct)
        got = [reader.read(w) for w in iter_windows(ds)]
        reader.close()
        return got, reader.tiles is not None


CASES = [  # compression, predictor, dtype
    ("deflate", 3, "float32"), ("deflate", 1, "float32"), ("deflate", 2, "int16"), ("deflate", 3, "float64"),
    ("lzw", 2, "uint16"), ("lzw", 3, "float32"), ("zstd", 3, "float32"), ("zstd", 2, "uint8"),
    ("lzma", 1, "float32"), ("none", 1, "float32"), ("none", 2, "uint16"),
]


@pytest.mark.parametrize("compress,predictor,dtype", CASES)
def test_decoded_tiles_equal_gdal(tmp_path, compress, predictor, dtype):
    data = _scene(dtype)
    nodata = -9999 if np.dtype(dtype).kind in "fi" else 0
    data[2, 5, 7] = nodata
    if np.dtype(dtype).kind == "f":
        data[0, 40, 80] = np.nan
        data[4, 69, 89] = np.inf  # in an edge tile
    path = write_tif(tmp_path / "t.tif", data, nodata=nodata, tiled=True, blockxsize=32, blockysize=32,
                     compress=compress, predictor=predictor, interleave="pixel")
    direct, used = _reads(path, True)
    gdal, not_used = _reads(path, False)
    assert used and not not_used
    assert len(direct) == len(gdal) == 9  # 3 x 3 tiles, the last row and column cut
    for (d, dv), (g, gv) in zip(direct, gdal, strict=True):
        assert pixel_major(d) and not pixel_major(g)
        assert d.shape == g.shape and d.dtype == g.dtype
        np.testing.assert_array_equal(d, g)  # NaN equals NaN here: bit-for-bit the same values
        np.testing.assert_array_equal(dv, gv)
    assert not direct[0][1][5, 7]
    if np.dtype(dtype).kind == "f":
        assert not direct[5][1][8, 16] and not direct[8][1][5, 25]  # NaN, and inf in the corner tile


def test_valid_mask_is_the_same_for_both_layouts():
    data = _scene("float32", bands=7, rows=9, cols=11)
    data[3, 2, 2], data[6, 8, 10], data[0, 0, 5] = np.nan, -9999, np.inf
    interleaved = np.ascontiguousarray(data.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert pixel_major(interleaved)
    scratch = np.empty(data.size, bool)
    np.testing.assert_array_equal(valid_mask(interleaved, -9999.0, scratch=scratch), valid_mask(data, -9999.0))
    assert valid_mask(data, -9999.0).sum() == 9 * 11 - 3


@pytest.mark.parametrize("why,profile", [
    ("band-interleaved", dict(tiled=True, blockxsize=32, blockysize=32, compress="deflate", interleave="band")),
    ("not tiled", dict(compress="deflate")),
    ("JPEG", dict(tiled=True, blockxsize=32, blockysize=32, compress="jpeg", interleave="pixel")),
    ("big-endian", dict(tiled=True, blockxsize=32, blockysize=32, compress="deflate", endianness="big")),
])
def test_files_it_does_not_decode_are_read_by_gdal(tmp_path, why, profile):
    data = _scene("uint8", bands=3)
    path = write_tif(tmp_path / "t.tif", data, **profile)
    got, used = _reads(path, True)
    assert not used, why
    ref, _ = _reads(path, False)
    for (d, _), (g, _) in zip(got, ref, strict=True):
        np.testing.assert_array_equal(d, g)


def test_a_file_with_a_mask_band_is_read_by_gdal(tmp_path):
    data = _scene("float32")
    path = write_tif(tmp_path / "m.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    with rasterio.open(path, "r+") as ds:
        mask = np.full(data.shape[1:], 255, np.uint8)
        mask[:10] = 0
        ds.write_mask(mask)
    with open_raster(path) as ds:
        reader = WindowReader(ds)
        assert reader.tiles is None and "mask" in reader.why_not_direct
        _, valid = reader.read(iter_windows(ds)[0])
    assert not valid[:10].any() and valid[10:].all()


def test_sparse_and_single_band_files_are_read_by_gdal(tmp_path):
    sparse = tmp_path / "sparse.tif"
    with rasterio.open(sparse, "w", driver="GTiff", width=64, height=64, count=3, dtype="float32", nodata=-1,
                       crs="EPSG:32632", transform=rasterio.transform.from_origin(500000, 5000000, 30, 30),
                       tiled=True, blockxsize=32, blockysize=32, compress="deflate", SPARSE_OK=True) as ds:
        ds.write(np.ones((3, 32, 32), np.float32), window=((0, 32), (0, 32)))
    with open_raster(sparse) as ds:
        decoder, why = TileDecoder.open(ds)
        assert decoder is None and "sparse" in why
    single = write_tif(tmp_path / "one.tif", _scene("float32", bands=1), tiled=True, blockxsize=32, blockysize=32,
                       compress="deflate")
    with open_raster(single) as ds:
        assert TileDecoder.open(ds)[0] is None


def test_windows_that_are_not_tiles_go_through_gdal(tmp_path):
    data = _scene("float32")
    path = write_tif(tmp_path / "t.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    with open_raster(path) as ds:
        reader = WindowReader(ds)
        assert reader.tiles is not None
        got, _ = reader.read(rasterio.windows.Window(5, 3, 40, 20))
    assert not pixel_major(got)
    np.testing.assert_array_equal(got, data[:, 3:23, 5:45])


def test_streaming_reader_decodes_into_its_buffers(tmp_path):
    """The threaded reader's buffers are whole tiles although the raster is smaller than one tile."""
    data = _scene("float32", rows=20, cols=25)
    path = write_tif(tmp_path / "small.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    with open_raster(path) as ds:
        windows = iter_windows(ds)
    with BlockReader(path, windows, 25, 20, threads=2) as blocks:
        got = [b.data.copy() for b in blocks]
    np.testing.assert_array_equal(np.concatenate(got, axis=1) if len(got) > 1 else got[0], data)


def test_a_corrupt_tile_is_reported_with_the_file_and_window(tmp_path):
    data = _scene("float32")
    path = write_tif(tmp_path / "c.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate",
                     predictor=3)
    with open_raster(path) as ds:
        decoder, _ = TileDecoder.open(ds)
        offset = int(decoder.offsets[4])
    raw = bytearray(path.read_bytes())
    raw[offset + 2:offset + 40] = b"\xff" * 38  # inside the deflate stream of tile 4 (row 32, col 32)
    path.write_bytes(bytes(raw))
    with open_raster(path) as ds:
        reader = WindowReader(ds)
        with pytest.raises(InputError, match=r"c\.tif: could not read window at row 32, col 32"):
            for w in iter_windows(ds):
                reader.read(w)


def test_scores_are_the_same_from_decoded_tiles_and_from_gdal(tmp_path, model_dir):
    """The scorer feeds pixel-interleaved blocks to the model pixel-major: same scores as band-major blocks."""
    from pipeline.detectors import load_detector

    det = load_detector(model_dir)
    bands = det.offset.size
    rng = np.random.default_rng(3)
    data = (rng.random((bands, 80, 70)) * 0.5 + 0.1).astype(np.float32)
    data[:, 10, 10] = -9999
    kw = dict(nodata=-9999, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    pixel = write_tif(tmp_path / "pixel.tif", data, interleave="pixel", **kw)
    band = write_tif(tmp_path / "band.tif", data, interleave="band", **kw)
    score_raster(det, pixel, tmp_path / "s_pixel.tif")
    score_raster(det, band, tmp_path / "s_band.tif")
    with rasterio.open(tmp_path / "s_pixel.tif") as a, rasterio.open(tmp_path / "s_band.tif") as b:
        sa, sb = a.read(), b.read()
    assert sa[0, 10, 10] == -9999
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-5)


def test_a_damaged_tile_size_leaves_the_file_to_gdal(tmp_path):
    """An absurd TileByteCounts entry (a damaged header) allocates nothing: GDAL reads, and reports the bad tile."""
    import struct

    import tifffile

    data = _scene("float32")
    path = write_tif(tmp_path / "d.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags["TileByteCounts"]
        assert tag.dtype == 4 and tf.byteorder == "<"  # LONG entries, little-endian
        where = tag.valueoffset
    raw = bytearray(path.read_bytes())
    raw[where:where + 4] = struct.pack("<I", 0x7FFFFFFF)
    path.write_bytes(bytes(raw))
    with open_raster(path) as ds:
        reader = WindowReader(ds)
        assert reader.tiles is None and "out of range" in reader.why_not_direct
        with pytest.raises(InputError, match=r"d\.tif: could not read window at row 0, col 0"):
            reader.read(iter_windows(ds)[0])
