"""Raster I/O: validity masks, window iteration, the atomic COG writer."""

import numpy as np
import pytest
import rasterio

from pipeline.cog_writer import RasterWriter, write_raster
from pipeline.errors import InputError
from pipeline.raster import WindowReader, describe, iter_windows, open_raster, valid_mask
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


# ---- streaming: threaded reader with reused buffers, background writer, overviews and statistics

def _tiled(tmp_path, bands=3, rows=70, cols=90, block=32):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(bands, rows, cols)).astype(np.float32)
    data[:, 5, 7] = np.nan
    return data, write_tif(tmp_path / "t.tif", data, nodata=-9999.0, tiled=True, blockxsize=block, blockysize=block)


@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("margin", [0, 2])
def test_block_reader_yields_every_window_in_order_with_margins(tmp_path, threads, margin):
    from pipeline.streaming import BlockReader

    data, path = _tiled(tmp_path)
    with open_raster(path) as ds:
        windows = iter_windows(ds)
    seen = []
    with BlockReader(path, windows, 90, 70, margin=margin, threads=threads) as blocks:
        for block in blocks:
            w = block.window
            r0, c0 = max(0, w.row_off - margin), max(0, w.col_off - margin)
            r1, c1 = min(70, w.row_off + w.height + margin), min(90, w.col_off + w.width + margin)
            np.testing.assert_array_equal(block.data, data[:, r0:r1, c0:c1])
            core, valid = block.core()
            np.testing.assert_array_equal(core, data[:, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width])
            np.testing.assert_array_equal(valid, np.isfinite(core).all(0))
            seen.append(block.index)
    assert seen == list(range(len(windows)))


def test_block_reader_raises_unreadable_block_in_consumer(tmp_path):
    from pipeline.streaming import BlockReader

    data = np.random.default_rng(0).normal(size=(3, 256, 256)).astype(np.float32)
    path = write_tif(tmp_path / "t.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    size = path.stat().st_size
    with open(path, "r+b") as f:  # overwrite the middle of the file: some tiles no longer decompress
        f.seek(size // 2)
        f.write(b"\xff" * (size // 4))
    with open_raster(path) as ds:
        windows = iter_windows(ds)
    with pytest.raises(InputError, match="could not read window"), \
            BlockReader(path, windows, 256, 256, threads=2) as blocks:
        for _ in blocks:
            pass


def test_valid_mask_scratch_gives_the_same_answer():
    data = np.random.default_rng(1).normal(size=(4, 9, 11)).astype(np.float32)
    data[2, 3, 4], data[0, 1, 1] = np.inf, -1.0
    scratch = np.empty(data.size + 7, bool)
    np.testing.assert_array_equal(valid_mask(data, -1.0, scratch=scratch), valid_mask(data, -1.0))


def test_block_writer_raises_the_writing_threads_error(tmp_path):
    from rasterio.windows import Window

    from pipeline.errors import OutputError
    from pipeline.streaming import BlockWriter

    class Failing:
        def write(self, array, window):
            raise OutputError("disk full")

    with pytest.raises(OutputError, match="disk full"), BlockWriter([Failing()], depth=1) as sink:
        for _ in range(20):
            sink.write(Window(0, 0, 1, 1), np.zeros((1, 1, 1), np.float32))


def test_overview_factors_until_one_block():
    from pipeline.cog_writer import overview_factors

    assert overview_factors(256, 256) == []
    assert overview_factors(600, 600) == [2, 4]
    assert overview_factors(257, 10) == [2]


def test_writer_records_statistics_of_valid_values_and_overviews(tmp_path):
    data = np.random.default_rng(2).gamma(2.0, size=(2, 600, 520)).astype(np.float32)
    data[:, :10, :] = -1.0
    data[1, 100, 100] = np.nan
    out = tmp_path / "o.tif"
    write_raster(out, data, nodata=-1.0)
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == [2, 4]
        assert ds.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        for b in (1, 2):
            tags = ds.tags(b)
            v = data[b - 1][(data[b - 1] != -1.0) & np.isfinite(data[b - 1])].astype(np.float64)
            assert float(tags["STATISTICS_MINIMUM"]) == pytest.approx(v.min(), rel=1e-12)
            assert float(tags["STATISTICS_MAXIMUM"]) == pytest.approx(v.max(), rel=1e-12)
            assert float(tags["STATISTICS_MEAN"]) == pytest.approx(v.mean(), rel=1e-9)
            assert float(tags["STATISTICS_STDDEV"]) == pytest.approx(v.std(), rel=1e-9)
            assert float(tags["STATISTICS_VALID_PERCENT"]) == pytest.approx(100 * v.size / data[0].size)
        ovr = ds.read(1, out_shape=(300, 260))  # the first overview level: averages of valid pixels
        assert np.nanmin(ovr[5:]) >= data[0][10:].min() and np.nanmax(ovr[5:]) <= data[0].max()
    for level in (0, 1):  # overviews are compressed like the full resolution
        with rasterio.open(out, overview_level=level) as ovr:
            assert ovr.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
            assert ovr.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"


def test_closing_a_writer_waits_for_the_write_in_flight(tmp_path, monkeypatch):
    """A signal can land at the first instruction of BlockWriter.__exit__, before it joins its thread; the
    RasterWriter's close must then wait for the thread's write in flight (GDAL crashed closing under it) and refuse
    later writes, and stop_workers joins the thread the __exit__ never reached."""
    import threading
    import time

    from rasterio.windows import Window

    from pipeline import streaming
    from pipeline.errors import OutputError
    from pipeline.streaming import BlockWriter

    real_write = rasterio.io.DatasetWriter.write
    entered, writes_done = threading.Event(), []

    def slow_write(self, *args, **kwargs):
        entered.set()
        time.sleep(0.3)
        real_write(self, *args, **kwargs)
        writes_done.append(time.perf_counter())

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", slow_write)
    out = tmp_path / "out.tif"
    from rasterio.transform import from_origin

    writer = RasterWriter(out, width=8, height=8, count=1, dtype="float32", crs="EPSG:32632",
                          transform=from_origin(500000, 5000000, 30, 30)).__enter__()
    sink = BlockWriter([writer]).__enter__()  # entered, but its __exit__ never runs (as when a signal hits it)
    for r in range(0, 8, 4):
        sink.write(Window(0, r, 8, 4), np.ones((1, 4, 8), np.float32))
    assert entered.wait(5)
    writer.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)  # the ExitStack goes on to close the output
    closed_at = time.perf_counter()
    # the close waited for the write in flight (and any that won the lock before it): none ends after it
    assert writes_done and all(t <= closed_at for t in writes_done)
    streaming.stop_workers()
    assert not sink._thread.is_alive() and not streaming.WORKERS
    # the queued block was dropped (stopped) or refused (closed), never written to the closed dataset
    assert sink._error is None or "after the output was closed" in str(sink._error)
    with pytest.raises(OutputError, match="after the output was closed"):
        writer.write(np.ones((1, 4, 8), np.float32), Window(0, 0, 8, 4))
    assert all(t <= closed_at for t in writes_done) and not out.exists() and list(tmp_path.iterdir()) == []


def test_stop_workers_skips_a_thread_whose_start_was_interrupted():
    """A signal landing at the first instruction of Thread.start() leaves a registered thread that never ran."""
    import threading

    from pipeline import streaming

    never = threading.Thread(target=lambda: None)
    streaming.WORKERS[never] = threading.Event()  # registered, as start_worker does first, but never started
    ran = threading.Event()
    stop = threading.Event()
    started = threading.Thread(target=lambda: (ran.set(), stop.wait(5)))
    streaming.start_worker(started, stop)
    streaming.stop_workers()
    assert ran.is_set() and not started.is_alive() and not streaming.WORKERS
