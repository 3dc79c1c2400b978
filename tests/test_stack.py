"""Real imagery in: product folders, band files at several resolutions, masks, other CRSs, virtual and remote tiles.

Products are built here by code (a .SAFE-like tree with JPEG 2000 band files and an SCL layer, a Landsat C2 folder
with QA_PIXEL); a COG is served over HTTP by a server the test starts on 127.0.0.1. The real BigEarthNet patches
in ../shared are used where present.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from pipeline.cli import cli
from pipeline.names import is_dataset_name, tile_name
from pipeline.raster import WindowReader, open_raster

#: ../shared beside the repository (a git worktree elsewhere can point at it with $RSVAE_SHARED)
SHARED = Path(os.environ.get("RSVAE_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
REAL_S2 = SHARED / "data" / "real" / "sentinel2"
ORIGIN = (600000.0, 5000020.0)


def run(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def _field(size: int, seed: int, scale: float = 1000.0) -> np.ndarray:
    """A smooth positive uint16 field (no zeros: 0 is Sentinel-2's nodata)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    return (scale + 400 * np.sin(3 * x + seed) * np.cos(2 * y) + rng.integers(0, 50, (size, size))).astype(np.uint16)


def _write(path: Path, data: np.ndarray, res: float, *, driver: str = "GTiff", nodata=None, crs="EPSG:32632",
           origin=ORIGIN) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    with rasterio.open(path, "w", driver=driver, width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=from_origin(*origin, res, res), nodata=nodata,
                       **opts) as ds:
        ds.write(data, 1)
    return path


S2_BANDS = {10: ["B02", "B03", "B04", "B08"], 20: ["B05", "B06", "B07", "B8A", "B11", "B12"], 60: ["B01", "B09"]}


@pytest.fixture(scope="module")
def safe(tmp_path_factory) -> Path:
    """A Sentinel-2 L2A .SAFE-like tree: JPEG 2000 bands at 10, 20 and 60 m (600 m square), and SCL at 20 m
    with a cloud (class 9) block of 5 x 5 and a shadow (class 3) block of 2 x 3 pixels at 20 m."""
    root = tmp_path_factory.mktemp("s2") / "S2A_MSIL2A_20240601T103031_N0510_R108_T32TQM_20240601T150000.SAFE"
    img = root / "GRANULE" / "L2A_T32TQM_A000001_20240601T103031" / "IMG_DATA"
    (root / "MTD_MSIL2A.xml").parent.mkdir(parents=True)
    (root / "MTD_MSIL2A.xml").write_text("<not-read/>")
    for k, (res, names) in enumerate(S2_BANDS.items()):
        for j, name in enumerate(names):
            _write(img / f"R{res}m" / f"T32TQM_20240601T103031_{name}_{res}m.jp2", _field(600 // res, 10 * k + j),
                   res, driver="JP2OpenJPEG", nodata=0)
    # a 20 m copy of B02 too, as real products have: the 10 m one must be chosen
    _write(img / "R20m" / "T32TQM_20240601T103031_B02_20m.jp2", np.full((30, 30), 7, np.uint16), 20,
           driver="JP2OpenJPEG", nodata=0)
    scl = np.full((30, 30), 4, np.uint8)
    scl[2:7, 2:7] = 9
    scl[20:22, 10:13] = 3
    _write(img / "R20m" / "T32TQM_20240601T103031_SCL_20m.jp2", scl, 20, driver="JP2OpenJPEG")
    return root


@pytest.fixture(scope="module")
def landsat(tmp_path_factory) -> Path:
    """A Landsat 9 Collection 2 Level-2 folder: SR_B1-SR_B7, ST_B10 and QA_PIXEL (30 m, 40 x 40)."""
    root = tmp_path_factory.mktemp("ls") / "LC09_L2SP_193029_20240612_20240613_02_T1"
    stem = "LC09_L2SP_193029_20240612_20240613_02_T1"
    for b in range(1, 8):
        _write(root / f"{stem}_SR_B{b}.TIF", _field(40, b, 9000), 30, nodata=0)
    _write(root / f"{stem}_ST_B10.TIF", _field(40, 99, 40000), 30, nodata=0)
    qa = np.full((40, 40), 1 << 6, np.uint16)  # clear
    qa[0:4, :] = 1  # fill
    qa[10:15, 10:15] = (1 << 3) | (1 << 1)  # cloud + dilated cloud
    qa[30:32, 30:35] = 1 << 4  # shadow
    qa[20, 20] = 1 << 7  # water: not masked
    _write(root / f"{stem}_QA_PIXEL.TIF", qa, 30, nodata=1)
    return root


def _touch(folder: Path, names: list[str]) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    return folder


@pytest.mark.parametrize("names, sensor, default, quality", [
    # Landsat 8 Level-1: B1-B11 (pan B8, cirrus B9, thermal B10/B11), QA_PIXEL
    ([f"LC08_L1TP_193029_20240807_20240814_02_T1_B{b}.TIF" for b in range(1, 12)]
     + ["LC08_L1TP_193029_20240807_20240814_02_T1_QA_PIXEL.TIF"],
     "Landsat 8 Level-1", ["B2", "B3", "B4", "B5", "B6", "B7"], "QA_PIXEL"),
    # Landsat 5 Level-2: SR_B1-SR_B5, SR_B7, thermal ST_B6
    ([f"LT05_L2SP_193029_20000807_20200814_02_T1_SR_B{b}.TIF" for b in (1, 2, 3, 4, 5, 7)]
     + ["LT05_L2SP_193029_20000807_20200814_02_T1_ST_B6.TIF", "LT05_L2SP_193029_20000807_20200814_02_T1_QA_PIXEL.TIF"],
     "Landsat 5 Collection 2 Level-2", ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"], "QA_PIXEL"),
    # a .SAFE layout: TCI/AOT/WVP and QI_DATA masks are no bands; B01 only at 60 m; SCL at 20 and 60 m
    (["GRANULE/L2A_X/IMG_DATA/R10m/T_B02_10m.jp2", "GRANULE/L2A_X/IMG_DATA/R10m/T_TCI_10m.jp2",
      "GRANULE/L2A_X/IMG_DATA/R10m/T_AOT_10m.jp2", "GRANULE/L2A_X/IMG_DATA/R20m/T_B02_20m.jp2",
      "GRANULE/L2A_X/IMG_DATA/R20m/T_SCL_20m.jp2", "GRANULE/L2A_X/IMG_DATA/R60m/T_SCL_60m.jp2",
      "GRANULE/L2A_X/IMG_DATA/R60m/T_B01_60m.jp2", "GRANULE/L2A_X/QI_DATA/MSK_DETFOO_B03.jp2"],
     "Sentinel-2", ["B02"], "SCL"),
])
def test_products_recognised_from_file_names(tmp_path, names, sensor, default, quality):
    from pipeline.product_folders import recognise

    product = recognise(_touch(tmp_path / "p", names))
    assert product.sensor == sensor and product.quality.label == quality
    assert [b.name for b in product.select()] == default
    if sensor == "Sentinel-2":
        assert set(product.bands) == {"B01", "B02"} and product.bands["B02"].path.name == "T_B02_10m.jp2"
        assert product.quality.path.name == "T_SCL_20m.jp2"


def _valid(path: Path) -> np.ndarray:
    with open_raster(path) as ds:
        _, valid = WindowReader(ds).read(rasterio.windows.Window(0, 0, ds.width, ds.height))
    return valid


def test_dataset_names_and_tile_names():
    assert is_dataset_name("/vsizip/a.zip/x.tif") and is_dataset_name("https://h/x.tif")
    assert is_dataset_name("s3://bucket/x.tif") and is_dataset_name("SENTINEL2_L2A:/d/MTD_MSIL2A.xml:10m:EPSG_32632")
    assert not is_dataset_name("scene.vrt") and not is_dataset_name("data/x.tif")
    assert tile_name("https://host/a/x.tif?X-Sig=abc") == "x"
    assert tile_name("/vsicurl/http://127.0.0.1:8/b/y.tif") == "y"
    assert tile_name("SENTINEL2_L2A:/d/S2A_X.SAFE/MTD_MSIL2A.xml:10m:EPSG_32632") == "S2A_X_10m_EPSG_32632"


def test_safe_product_to_vrt_with_scl_mask(safe, tmp_path):
    out = tmp_path / "stacks" / "scene.vrt"
    msg = run("stack", safe, "-o", out)
    # 20 m SCL pixels are 2 x 2 at 10 m: cloud 5x5 -> 100, shadow 2x3 -> 24
    assert "Sentinel-2 bands B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12 on 60 x 60 pixels of 10" in msg
    assert "SCL masked 124 of 3600 pixels" in msg
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
        assert [float(ds.tags(b)["wavelength"]) for b in range(1, 11)] == [490, 560, 665, 705, 740, 783, 842, 865,
                                                                            1610, 2190]
        data = ds.read()
        assert ds.res == (10, 10) and ds.crs.to_epsg() == 32632
    with rasterio.open(next(safe.rglob("*_B02_10m.jp2"))) as b02:
        np.testing.assert_array_equal(data[0], b02.read(1))  # the 10 m band maps 1:1, not the 20 m copy
    with rasterio.open(next(safe.rglob("*_B05_20m.jp2"))) as b05:  # 20 m band resampled: block means agree
        np.testing.assert_allclose(data[3].reshape(30, 2, 30, 2).mean(axis=(1, 3))[2:-2, 2:-2],
                                   b05.read(1)[2:-2, 2:-2], rtol=0.03)
    valid = _valid(out)
    assert (~valid).sum() == 124 and not valid[4:14, 4:14].any()
    xml = out.read_text()
    assert 'relativeToVRT="1"' in xml and str(safe) not in xml and "scene.mask.tif" in xml
    assert (out.parent / "scene.mask.tif").is_file()
    # masked pixels are never sampled: the sample's band statistics count exactly the valid pixels
    run("ingest", out, "-o", tmp_path / "s.nc", "-q")
    from pipeline.sample import load_sample

    smp = load_sample(tmp_path / "s.nc")
    assert smp.pixels.shape == (3600 - 124, 10) and smp.wavelengths[0] == 490


def test_materialised_cog_equals_vrt(safe, tmp_path):
    run("stack", safe, "-o", tmp_path / "s.vrt", "--bands", "B8A,b2,B12", "--resolution", 20)
    run("stack", safe, "-o", tmp_path / "s.tif", "--bands", "B8A,b2,B12", "--resolution", 20)
    with rasterio.open(tmp_path / "s.vrt") as v, rasterio.open(tmp_path / "s.tif") as t:
        assert t.descriptions == v.descriptions == ("B8A", "B02", "B12") and t.res == (20, 20)
        assert t.tags(1)["wavelength"] == "865" and t.nodata == 0
        a, b = v.read(), t.read()
    valid = _valid(tmp_path / "s.vrt")
    assert (~valid).sum() == 31  # 25 cloud + 6 shadow pixels at 20 m
    np.testing.assert_array_equal(a[:, valid], b[:, valid])
    assert (b[:, ~valid] == 0).all()
    np.testing.assert_array_equal(_valid(tmp_path / "s.tif"), valid)


def test_landsat_c2_qa_pixel_bits_and_no_mask(landsat, tmp_path):
    msg = run("stack", landsat, "-o", tmp_path / "l.vrt")
    assert "Landsat 9 Collection 2 Level-2 bands SR_B2, SR_B3, SR_B4, SR_B5, SR_B6, SR_B7 on 40 x 40" in msg
    assert "QA_PIXEL masked 195 of 1600 pixels" in msg  # fill 160 + cloud 25 + shadow 10; water kept
    valid = _valid(tmp_path / "l.vrt")
    assert (~valid).sum() == 195 and valid[20, 20]
    msg = run("stack", landsat, "-o", tmp_path / "n.vrt", "--no-mask", "--bands", "SR_B5,sr_b4")
    assert "masked" not in msg and not (tmp_path / "n.mask.tif").exists()
    with rasterio.open(tmp_path / "n.vrt") as ds:
        assert ds.descriptions == ("SR_B5", "SR_B4") and ds.tags(1)["wavelength"] == "865"


def test_band_files_other_crs_and_mask_file(tmp_path):
    """Band files given one by one: the sensor name from the file name; a band in another CRS is warped to the
    first one's; a --mask on another grid is resampled with nearest."""
    a = _write(tmp_path / "x_B04.tif", _field(60, 1), 10, nodata=0)
    from rasterio.warp import reproject, transform

    src = _field(60, 2)
    dst = np.zeros((70, 70), np.uint16)
    xs, ys = transform("EPSG:32632", "EPSG:32633", [ORIGIN[0] - 100], [ORIGIN[1] + 100])
    reproject(src, dst, src_transform=from_origin(*ORIGIN, 10, 10), src_crs="EPSG:32632",
              dst_transform=from_origin(xs[0], ys[0], 10, 10), dst_crs="EPSG:32633", dst_nodata=0)
    b = _write(tmp_path / "y_B08.tif", dst, 10, nodata=0, crs="EPSG:32633", origin=(xs[0], ys[0]))
    m = np.zeros((20, 20), np.uint8)
    m[0:5, 0:5] = 2
    mask = _write(tmp_path / "m.tif", m, 30, origin=ORIGIN)
    msg = run("stack", a, b, "-o", tmp_path / "s.vrt", "--mask", mask, "--mask-values", "2")
    assert "bands B04, B08" in msg and re.search(r"on 6\d x 59 pixels of 10 .*--mask masked 225 of", msg), msg
    with rasterio.open(tmp_path / "s.vrt") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.tags(2)["wavelength"] == "842"
        band8 = ds.read(2)
    run("stack", a, b, "-o", tmp_path / "one.vrt", "--bands", "b8")  # --bands picks among the files' bands
    with rasterio.open(tmp_path / "one.vrt") as ds:
        assert ds.descriptions == ("B08",)
    inner = band8[10:50, 10:50]
    assert (inner > 0).all() and np.abs(inner.astype(float) - src[10:50, 10:50]).mean() < 60


def test_bad_inputs_one_line_nothing_written(safe, tmp_path):
    def bad(*args, match):
        out = run("stack", *args, "-o", tmp_path / "o.vrt", code=1)
        assert re.search(match, out) and out.count("\n") == 1 and "Traceback" not in out, out
        assert not list(tmp_path.glob("o*")), list(tmp_path.glob("o*"))

    (tmp_path / "empty").mkdir()
    bad(tmp_path / "empty", match=r"no Sentinel-2 or Landsat band files in .*empty; give the band files instead")
    bad(safe, "--bands", "B02,B13", match=r"\.SAFE: Sentinel-2 product has no band 'B13'")
    far = _write(tmp_path / "far_B02.tif", _field(10, 0), 10, origin=(700000, 5000000))
    near = _write(tmp_path / "near_B03.tif", _field(10, 0), 10)
    bad(near, far, match=r"far_B02\.tif: does not overlap .*near_B03\.tif")
    bad(near, "--bands", "B04", match=r"near_B03\.tif: no band named 'B04' among the inputs' bands \(B03\)")
    small = _write(tmp_path / "small.tif", np.zeros((5, 5), np.uint8), 10)
    bad(safe, "--mask", small, "--mask-values", "1", match=r"small\.tif: the mask does not cover the scene")
    bad("http://127.0.0.1:9/x.tif", match=r"^Error: http://127\.0\.0\.1:9/x\.tif: cannot open \(")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers Range requests (GDAL's /vsicurl/ reads COGs by ranges)."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start, _, end = rng.removeprefix("bytes=").partition("-")
        start, end = int(start), min(int(end) if end else size - 1, size - 1)
        f = open(path, "rb")  # noqa: SIM115  (closed by the handler after copyfile)
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Limited(f, end - start + 1)


class _Limited:
    def __init__(self, f, n):
        self.f, self.n = f, n

    def read(self, size=-1):
        size = self.n if size < 0 else min(size, self.n)
        data = self.f.read(size)
        self.n -= len(data)
        return data

    def close(self):
        self.f.close()


@pytest.fixture
def http_folder(demo):
    """The demo's test tiles served at http://127.0.0.1:PORT/ by a thread of this process."""
    folder = Path(demo.test[0]).parent
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_remote_and_virtual_tiles_score_like_local(demo, model_dir, http_folder, tmp_path):
    tile = Path(demo.test[0])
    run("score", model_dir, tile, "-o", tmp_path / "local.tif", "-q")
    with zipfile.ZipFile(tmp_path / "scene.zip", "w") as z:
        z.write(tile, tile.name)
    names = {"http": f"{http_folder}/{tile.name}", "vsicurl": f"/vsicurl/{http_folder}/{tile.name}",
             "vsizip": f"/vsizip/{tmp_path / 'scene.zip'}/{tile.name}"}
    with rasterio.open(tmp_path / "local.tif") as ds:
        local = ds.read()
    for key, name in names.items():
        run("score", model_dir, name, "-o", tmp_path / f"{key}.tif", "-q")
        with rasterio.open(tmp_path / f"{key}.tif") as ds:
            np.testing.assert_array_equal(ds.read(), local)
            assert ds.tags()["rsvae_input"] == tile.stem
    run("ingest", names["http"], "-o", tmp_path / "s.nc", "-q", "--max-pixels", 500)
    # a stack of a URL is a local VRT that reads the URL (what the workflow makes of a URL entry)
    run("stack", names["http"], "-o", tmp_path / "url.vrt")
    assert f"/vsicurl/{http_folder}/" in (tmp_path / "url.vrt").read_text()
    run("score", model_dir, tmp_path / "url.vrt", "-o", tmp_path / "url.tif", "-q")
    with rasterio.open(tmp_path / "url.tif") as ds:
        np.testing.assert_array_equal(ds.read(), local)
    out = run("score", model_dir, f"{http_folder}/missing.tif", "-o", tmp_path / "m.tif", code=1)
    assert out.startswith(f"Error: {http_folder}/missing.tif: cannot open (") and not (tmp_path / "m.tif").exists()


def test_subdataset_names_are_tiles(demo, model_dir, tmp_path):
    """Driver-prefixed subdataset names (here netCDF variables, one band each) stack into the tile they came from."""
    import rasterio.shutil

    tile = Path(demo.test[0])
    rasterio.shutil.copy(tile, tmp_path / "cube.nc", driver="netCDF")
    with rasterio.open(tile) as ds:
        count = ds.count
    names = [f"netcdf:{tmp_path / 'cube.nc'}:Band{b}" for b in range(1, count + 1)]
    assert all(is_dataset_name(n) for n in names)
    run("stack", *names, "-o", tmp_path / "cube.vrt")
    run("score", model_dir, tmp_path / "cube.vrt", "-o", tmp_path / "cube.tif", "-q")
    run("score", model_dir, tile, "-o", tmp_path / "local.tif", "-q")
    with rasterio.open(tmp_path / "cube.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), rtol=1e-5)
        assert a.transform == b.transform


def test_other_crs_error_gives_the_stack_command(demo, model_dir, tmp_path):
    from rasterio.warp import calculate_default_transform, reproject

    tile = Path(demo.test[0])
    moved = tmp_path / "utm33.tif"
    with rasterio.open(tile) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:32633", src.width, src.height, *src.bounds)
        profile = dict(src.profile, crs="EPSG:32633", transform=t, width=w, height=h, driver="GTiff")
        with rasterio.open(moved, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b), resampling=rasterio.enums.Resampling.nearest)
    out = run("score", model_dir, moved, "-o", tmp_path / "o.tif", code=1)
    fix = re.search(r"with: (rsvae stack .*)$", out.strip())
    assert fix and f"--like {model_dir}" in fix.group(1), out
    args = fix.group(1).split()[1:]
    args[-1] = str(tmp_path / args[-1])
    run(*args)
    run("score", model_dir, args[-1], "-o", tmp_path / "o.tif", "-q")
    with rasterio.open(tmp_path / "o.tif") as ds, rasterio.open(tile) as src:
        assert ds.crs == src.crs and (ds.read(1) != ds.nodata).mean() > 0.5


@pytest.mark.skipif(not REAL_S2.is_dir(), reason="../shared/data/real/sentinel2 is absent")
def test_real_bigearthnet_patches(tmp_path):
    patches = sorted(p for p in REAL_S2.iterdir() if p.is_dir())
    vrts = []
    for patch in patches:
        vrts.append(tmp_path / f"{patch.name}.vrt")
        msg = run("stack", patch, "-o", vrts[-1])
        assert "Sentinel-2 bands B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12 on 120 x 120 pixels of 10" in msg
    run("ingest", vrts[0], "-o", tmp_path / "s.nc", "-q")  # the patches lie in different UTM zones
    from pipeline.sample import load_sample

    smp = load_sample(tmp_path / "s.nc")
    assert smp.bands == 10 and list(smp.wavelengths) == [490, 560, 665, 705, 740, 783, 842, 865, 1610, 2190]
    assert smp.pixels.shape[0] == 120 * 120 and np.isfinite(smp.pixels).all()
    assert os.path.getsize(vrts[0]) < 20000


def test_like_raster_grid_larger_than_the_input_leaves_the_rest_invalid(tmp_path):
    band = _write(tmp_path / "p_B02.tif", _field(20, 3), 10)  # declares no nodata (as BigEarthNet patches)
    like = _write(tmp_path / "like.tif", np.zeros((30, 40), np.uint8), 10, origin=(ORIGIN[0] - 50, ORIGIN[1]))
    run("stack", band, "--like", like, "-o", tmp_path / "s.vrt")
    with rasterio.open(tmp_path / "s.vrt") as ds:
        assert (ds.width, ds.height, ds.nodata) == (40, 30, 0)
    valid = _valid(tmp_path / "s.vrt")
    assert valid.sum() == 20 * 20 and valid[:20, 5:25].all()
