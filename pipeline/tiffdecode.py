"""Reading a local tiled, pixel-interleaved GeoTIFF's blocks by decoding its tiles directly (tifffile + imagecodecs).

A tile of a pixel-interleaved file holds every band of its pixels, (rows, cols, bands). GDAL hands a band-major
block out of it by copying each band out one value at a time (to its per-band block cache, then to the caller): for
64 float32 bands that copy costs about as much as decompressing the tile (37 % of reading, ``perf``-profiled). Here
the tile's bytes are read into a reused buffer, decompressed (libdeflate for deflate) and un-predicted straight into the
caller's buffer, and the block is handed out as a (bands, rows, cols) *view* of that pixel-interleaved memory: the
same values GDAL reads, bit for bit (tests hold them equal), with no copy. The scorer feeds such blocks to the model
pixel-major.

Only files where this is exactly GDAL's reading qualify (``TileDecoder.open`` says why not, and the caller reads
through GDAL): a local GTiff whose first image is tiled, pixel-interleaved, little-endian, with more than one band of
one sample type, a lossless compression (none, deflate, LZW, ZSTD, LZMA) and predictor none, horizontal or
floating-point, and every tile present; ``raster.WindowReader`` asks for a decoder only where validity comes from
nodata alone (no mask band to read).
"""

from __future__ import annotations

import os
import sys
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.names import is_dataset_name

if TYPE_CHECKING:
    import rasterio.io
    from rasterio.windows import Window

#: TIFF compressions decoded here (none, LZW, deflate, old-style deflate, LZMA, ZSTD): lossless codecs whose decoded
#: bytes are the samples as stored.
COMPRESSIONS = {1, 5, 8, 32946, 34925, 50000}
#: TIFF predictors undone here: none, horizontal differencing, floating-point.
PREDICTORS = {1, 2, 3}


@dataclass
class TileDecoder:
    """Decodes the tiles of one file into pixel-interleaved buffers; one per thread (it holds a decode buffer)."""

    path: str
    width: int
    height: int
    tile: tuple[int, int]  # rows, cols
    bands: int
    dtype: np.dtype
    offsets: np.ndarray
    counts: np.ndarray
    decompress: Any  # imagecodecs function or None (uncompressed)
    unpredict: Any  # imagecodecs function or None (no predictor)

    @classmethod
    def open(cls, ds: rasterio.io.DatasetReader) -> tuple[TileDecoder | None, str]:
        """A decoder for the open dataset ``ds`` (``(decoder, "")``), or ``(None, why not)``: then read with GDAL."""
        name = ds.name
        if ds.driver != "GTiff" or is_dataset_name(name) or not os.path.isfile(name):
            return None, "not a local GeoTIFF"
        if ds.count < 2 or len(set(ds.dtypes)) != 1:
            return None, "one band, or bands of several types"
        if sys.byteorder != "little":
            return None, "big-endian machine"
        try:
            import tifffile
        except ImportError:  # pragma: no cover - a dependency; reading still works through GDAL
            return None, "tifffile is not installed"
        try:
            with tifffile.TiffFile(name) as tf:
                page = tf.pages[0]
                why = _unsupported(page, tf.byteorder, ds)
                if why:
                    return None, why
                decompress = None if page.compression == 1 else tifffile.TIFF.DECOMPRESSORS[page.compression]
                unpredict = None if page.predictor == 1 else tifffile.TIFF.UNPREDICTORS[page.predictor]
                offsets = np.asarray(page.dataoffsets, np.int64)
                counts = np.asarray(page.databytecounts, np.int64)
        except Exception as exc:  # anything tifffile cannot parse or decode: GDAL reads it (and reports problems)
            return None, f"tifffile: {exc}"
        if counts.size == 0 or (counts <= 0).any():
            return None, "sparse file (missing tiles)"
        tile_bytes = int(page.tilelength) * int(page.tilewidth) * ds.count * np.dtype(ds.dtypes[0]).itemsize
        if counts.max() > 2 * tile_bytes + 65536:  # more than any codec here makes of a tile: a damaged header
            return None, "tile byte counts out of range"
        return cls(name, ds.width, ds.height, (int(page.tilelength), int(page.tilewidth)), ds.count,
                   np.dtype(ds.dtypes[0]), offsets, counts, decompress, unpredict), ""

    def __post_init__(self) -> None:
        self.across = -(-self.width // self.tile[1])
        self.tile_elements = self.tile[0] * self.tile[1] * self.bands
        self._raw = np.empty(self.tile_elements * self.dtype.itemsize if self.unpredict else 0, np.uint8)
        self._compressed = np.empty(int(self.counts.max()), np.uint8)  # a tile's stored bytes, reused
        self._file: Any = None

    def index(self, window: Window) -> int | None:
        """The tile ``window`` is exactly (clipped to the raster), or None when it is not one tile."""
        r, c = int(window.row_off), int(window.col_off)
        th, tw = self.tile
        if r % th or c % tw or r < 0 or c < 0 or r >= self.height or c >= self.width:
            return None
        if int(window.height) != min(th, self.height - r) or int(window.width) != min(tw, self.width - c):
            return None
        return (r // th) * self.across + c // tw

    def read(self, index: int, buffer: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """Decode tile ``index`` into ``buffer`` (flat, of the file's dtype, ``tile_elements`` long at least) and
        return its top-left ``rows`` x ``cols`` pixels as a (bands, rows, cols) view of pixel-interleaved memory."""
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed by close() or the finalizer
            self._closer = weakref.finalize(self, self._file.close)  # also for readers nobody closes
        th, tw = self.tile
        out = buffer[:self.tile_elements].reshape(1, th, tw, self.bands)
        count = int(self.counts[index])
        self._file.seek(int(self.offsets[index]))
        if self._file.readinto(memoryview(self._compressed)[:count]) != count:
            raise ValueError(f"tile {index} is cut short (file truncated?)")
        data = self._compressed[:count]
        nbytes = self.tile_elements * self.dtype.itemsize
        # the stored samples go to the output itself, or (with a predictor) to a scratch buffer it is undone from
        target = out.reshape(-1).view(np.uint8) if self.unpredict is None else self._raw
        if self.decompress is None:
            target[:len(data)] = data
            got = len(data)
        else:
            got = memoryview(self.decompress(data, out=target)).nbytes  # imagecodecs returns the filled part
        if got != nbytes:
            raise ValueError(f"tile {index} decoded to {got} bytes, expected {nbytes}")
        if self.unpredict is not None:
            self.unpredict(target.view(self.dtype).reshape(out.shape), axis=-2, out=out)
        return out[0, :rows, :cols].transpose(2, 0, 1)

    def close(self) -> None:
        """Close the file (a later ``read`` opens it again)."""
        if self._file is not None:
            self._closer()
            self._file = None


def _unsupported(page: Any, byteorder: str, ds: rasterio.io.DatasetReader) -> str:
    """Why the first image of a TIFF is not read here ("" when it is)."""
    th, tw = ds.block_shapes[0]
    checks = [
        (byteorder == "<", "big-endian file"),
        (page.is_tiled and page.tiledepth == 1, "not tiled"),
        (page.imagewidth == ds.width and page.imagelength == ds.height, "first image is not the dataset's"),
        ((page.tilelength, page.tilewidth) == (th, tw), "tile size differs from GDAL's blocks"),
        (page.planarconfig == 1, "band-interleaved (GDAL reads it without copying)"),
        (page.samplesperpixel == ds.count, "sample count differs from the band count"),
        (page.compression in COMPRESSIONS, f"compression {page.compression} is not decoded here"),
        (page.predictor in PREDICTORS, f"predictor {page.predictor}"),
        (page.fillorder == 1 and not page.is_subsampled, "bit order or subsampling"),
        (page.bitspersample in (8, 16, 32, 64), f"{page.bitspersample} bits per sample"),
        (np.dtype(page.dtype) == np.dtype(ds.dtypes[0]), "sample type differs from GDAL's"),
    ]
    return next((why for ok, why in checks if not ok), "")
