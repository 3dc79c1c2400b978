"""STAC imagery in: items (Earth Search-style STAC 1.0 ``eo:bands``, Planetary Computer-style STAC 1.1 ``bands``)
whose assets are small COGs written here and served from 127.0.0.1 with Range requests, local items and folders of
downloaded assets, and a STAC API search answered by a small local server, in the CLI and the workflow's plan.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from pipeline.cli import cli
from tests.test_stack import _RangeHandler
from tests.test_workflow import check_geotiff, job_counts, repo, snakemake  # noqa: F401  (repo: a fixture)

ORIGIN = (600000.0, 5000020.0)
#: Sentinel-2 L2A assets as Earth Search names them: key -> (band name, common name, um, resolution m)
S2 = {"coastal": ("B01", "coastal", 0.443, 60), "blue": ("B02", "blue", 0.49, 10), "green": ("B03", "green", 0.56, 10),
      "red": ("B04", "red", 0.665, 10), "rededge1": ("B05", "rededge", 0.704, 20),
      "rededge2": ("B06", "rededge", 0.74, 20), "rededge3": ("B07", "rededge", 0.783, 20),
      "nir": ("B08", "nir", 0.842, 10), "nir08": ("B8A", "nir08", 0.865, 20), "nir09": ("B09", "nir09", 0.945, 60),
      "swir16": ("B11", "swir16", 1.61, 20), "swir22": ("B12", "swir22", 2.19, 20)}
#: Landsat 8 Collection 2 Level-2 assets as the Planetary Computer names them (30 m)
LS = {"coastal": ("OLI_B1", "coastal", 0.44), "blue": ("OLI_B2", "blue", 0.48), "green": ("OLI_B3", "green", 0.56),
      "red": ("OLI_B4", "red", 0.65), "nir08": ("OLI_B5", "nir08", 0.87), "swir16": ("OLI_B6", "swir16", 1.61),
      "swir22": ("OLI_B7", "swir22", 2.2), "lwir11": ("TIRS_B10", "lwir11", 10.9)}
S2_DEFAULT = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def run(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def _cog(path: Path, data: np.ndarray, res: float, nodata=None) -> Path:
    """A small tiled GeoTIFF with overviews written as a COG (GDAL's COG driver)."""
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
                   crs="EPSG:32632", transform=from_origin(*ORIGIN, res, res), nodata=nodata)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(data, 1)
        copy(mem.name, path, driver="COG", BLOCKSIZE=256)
    return path


def _field(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    return (1000 + 400 * np.sin(3 * x + seed) * np.cos(2 * y) + rng.integers(0, 50, (size, size))).astype(np.uint16)


def _s2_assets(folder: Path, seed: int) -> None:
    """Sentinel-2-like COGs named by key over 600 m: 10, 20, 60 m bands and SCL at 20 m with a 5 x 5 cloud."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, (key, (_, _, _, res)) in enumerate(S2.items()):
        _cog(folder / f"{key}.tif", _field(600 // res, seed + k), res, nodata=0)
    scl = np.full((30, 30), 4, np.uint8)
    scl[2:7, 2:7] = 9
    _cog(folder / "scl.tif", scl, 20, nodata=0)


def _ls_assets(folder: Path, seed: int) -> None:
    """Landsat-8-like COGs named by key (30 m, 20 x 20) and QA_PIXEL with the cloud bit set on a 4 x 4 block."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, key in enumerate(LS):
        _cog(folder / f"{key}.tif", _field(20, seed + k) + 7000, 30, nodata=0)
    qa = np.full((20, 20), 21824, np.uint16)  # clear land
    qa[5:9, 5:9] = 1 << 3
    _cog(folder / "qa_pixel.tif", qa, 30, nodata=1)


def earth_search_item(item_id: str, base: str, cloud: float = 5.0) -> dict:
    """An Earth Search-style Sentinel-2 L2A item (STAC 1.0.0, ``eo:bands``) with assets at ``base``."""
    assets = {}
    for key, (name, common, um, _) in S2.items():
        band = {"name": name, "common_name": common, "center_wavelength": um}
        assets[key] = {"href": f"{base}/{key}.tif", "type": COG, "roles": ["data", "reflectance"],
                       "eo:bands": [band], "raster:bands": [{"nodata": 0, "scale": 0.0001, "offset": -0.1}]}
        # the same band as JPEG 2000 (Earth Search keeps both): not to be read
        assets[f"{key}-jp2"] = {"href": f"{base}/missing/{key}.jp2", "type": "image/jp2",
                                "roles": ["data", "reflectance"], "eo:bands": [band]}
    assets["scl"] = {"href": f"{base}/scl.tif", "type": COG, "roles": ["data"]}
    assets["aot"] = {"href": f"{base}/missing/aot.tif", "type": COG, "roles": ["data"]}
    assets["visual"] = {"href": f"{base}/missing/visual.tif", "type": COG, "roles": ["visual"],
                        "eo:bands": [{"name": n, "common_name": c} for n, c in
                                     (("B04", "red"), ("B03", "green"), ("B02", "blue"))]}
    assets["thumbnail"] = {"href": f"{base}/missing/thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    assets["granule_metadata"] = {"href": f"{base}/missing/md.xml", "type": "application/xml", "roles": ["metadata"]}
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "sentinel-2-l2a",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
            "bbox": [10.1, 45.1, 10.2, 45.2],
            "geometry": {"type": "Polygon", "coordinates": [[[10.1, 45.1], [10.2, 45.1], [10.2, 45.2],
                                                             [10.1, 45.2], [10.1, 45.1]]]},
            "properties": {"datetime": "2024-06-01T10:30:31Z", "platform": "sentinel-2a",
                           "eo:cloud_cover": cloud},
            "links": [], "assets": assets}


def planetary_item(item_id: str, base: str) -> dict:
    """A Planetary Computer-style Landsat 8 C2 L2 item in STAC 1.1 (``bands`` with ``eo:`` fields), hrefs signed
    with a query string as PC's are."""
    sas = "?st=2024-06-01T00%3A00%3A00Z&se=2024-06-02T00%3A00%3A00Z&sp=rl&sig=abc%3D"
    assets = {key: {"href": f"{base}/{key}.tif{sas}", "type": COG, "roles": ["data"],
                    "bands": [{"name": name, "eo:common_name": common, "eo:center_wavelength": um}]}
              for key, (name, common, um) in LS.items()}
    assets["qa_pixel"] = {"href": f"{base}/qa_pixel.tif{sas}", "type": COG, "roles": ["cloud", "cloud-shadow"],
                          "bands": [{"name": "QA_PIXEL"}]}
    assets["rendered_preview"] = {"href": f"{base}/missing/preview.png", "type": "image/png",
                                  "roles": ["overview"]}
    return {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": "landsat-c2-l2",
            "bbox": [10.1, 45.1, 10.2, 45.2], "geometry": None,
            "properties": {"datetime": "2024-06-12T10:00:00Z", "platform": "landsat-8", "eo:cloud_cover": 3.0},
            "links": [], "assets": assets}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder served at http://127.0.0.1:PORT/ (Range requests) that also answers a STAC API at /api:
    yields (folder, base URL, requests seen)."""
    folder = tmp_path_factory.mktemp("served")
    seen: list[str] = []

    class Handler(_RangeHandler):
        def do_GET(self):  # noqa: N802
            seen.append(f"GET {self.path}")
            url = urlparse(self.path)
            if url.path == "/api":
                return self._json(_landing(base))
            if url.path == "/api/search":
                return self._json(_search(folder, {k: v[0] for k, v in parse_qs(url.query).items()}))
            return super().do_GET()

        def do_POST(self):  # noqa: N802
            seen.append(f"POST {self.path}")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if urlparse(self.path).path != "/api/search":
                self.send_error(404)
                return None
            return self._json(_search(folder, body))

        def _json(self, doc: dict) -> None:
            data = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Handler(*a, directory=str(folder),
                                                                                      **k))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _s2_assets(folder / "s2a", 0)
    _s2_assets(folder / "s2b", 20)
    _ls_assets(folder / "ls", 40)
    for name, doc in (("s2a", earth_search_item("S2A_32TQM_20240601_0_L2A", f"{base}/s2a", 5.0)),
                      ("s2b", earth_search_item("S2B_32TQM_20240611_0_L2A", f"{base}/s2b", 45.0)),
                      ("ls", planetary_item("LC08_L2SP_193029_20240612_02_T1", f"{base}/ls"))):
        (folder / "items").mkdir(exist_ok=True)
        (folder / "items" / f"{name}.json").write_text(json.dumps(doc))
    try:
        yield folder, base, seen
    finally:
        server.shutdown()
        thread.join()


def _landing(base: str) -> dict:
    return {"type": "Catalog", "id": "test-api", "stac_version": "1.0.0", "description": "a test STAC API",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                           "https://api.stacspec.org/v1.0.0/item-search#query"],
            "links": [{"rel": "self", "href": f"{base}/api", "type": "application/json"},
                      {"rel": "root", "href": f"{base}/api", "type": "application/json"},
                      {"rel": "search", "href": f"{base}/api/search", "type": "application/geo+json",
                       "method": "GET"},
                      {"rel": "search", "href": f"{base}/api/search", "type": "application/geo+json",
                       "method": "POST"}]}


def _search(folder: Path, params: dict) -> dict:
    """The served items that match ``collections`` and a ``query`` of ``lt``/``gt`` on properties (what the
    test's searches send), at most ``limit``; no next page."""
    items = [json.loads(p.read_text()) for p in sorted((folder / "items").glob("*.json"))]
    collections = params.get("collections")
    if isinstance(collections, str):
        collections = collections.split(",")
    query = params.get("query") or {}
    if isinstance(query, str):
        query = json.loads(query)
    out = []
    for item in items:
        if collections and item["collection"] not in collections:
            continue
        props = item["properties"]
        if any(("lt" in cond and not props[k] < cond["lt"]) or ("gt" in cond and not props[k] > cond["gt"])
               for k, cond in query.items()):
            continue
        out.append(item)
    out = out[: int(params.get("limit") or 100)]
    return {"type": "FeatureCollection", "features": out, "links": []}


def _bands(vrt: Path) -> tuple[list[str], list[str]]:
    with rasterio.open(vrt) as ds:
        return list(ds.descriptions), [ds.tags(b).get("wavelength") for b in range(1, ds.count + 1)]


# --------------------------------------------------------------------------------------------- items


def test_what_names_an_item():
    from pipeline.stac import is_item_name

    for name in ("item.json", "/d/S2A.geojson", "https://h/items/x.json?sig=1",
                 "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2B_32TQM_20240601_0_L2A",
                 "https://h/v1/collections/hls/items/HLS.S30.T32TQM.2024153T103031.v2.0"):
        assert is_item_name(name), name
    for name in ("scene.tif", "https://h/items/scene.tif", "https://h/collections/x/items", "/d/items/ID",
                 "https://h/items/a/B02.tif"):
        assert not is_item_name(name), name


def test_earth_search_item_remote(served, tmp_path):
    folder, base, seen = served
    url = f"{base}/items/s2a.json"
    before = len(seen)
    msg = run("stack", url, "-o", tmp_path / "s2.vrt")
    assert msg.startswith(f"wrote {tmp_path / 's2.vrt'}: sentinel-2a item S2A_32TQM_20240601_0_L2A bands "
                          + ", ".join(S2_DEFAULT) + " on 60 x 60 pixels of 10 (EPSG:32632); SCL masked 100 of 3600")
    names, wavelengths = _bands(tmp_path / "s2.vrt")
    assert names == S2_DEFAULT
    assert wavelengths == ["490", "560", "665", "704", "740", "783", "842", "865", "1610", "2190"]
    text = (tmp_path / "s2.vrt").read_text()
    assert text.count(f"/vsicurl/{base}/s2a/") == 10 and ".jp2" not in text  # read remotely, COGs not JP2s
    # only the item and the assets were asked for: no thumbnail, no JP2, no listing
    asked = seen[before:]
    assert asked and all(r.startswith("GET /items/s2a.json") or r.startswith("GET /s2a/") for r in asked), asked
    assert not any("missing" in r for r in asked)
    with rasterio.open(tmp_path / "s2.vrt") as ds, rasterio.open(folder / "s2a" / "blue.tif") as src:
        np.testing.assert_array_equal(ds.read(1), src.read(1))
        valid = ds.read_masks(1) > 0
    assert (~valid).sum() == 100 and not valid[4:14, 4:14].any()
    # asset keys, band names and common names pick bands, in the order given
    run("stack", url, "--bands", "nir08,B04,swir16,blue", "-o", tmp_path / "pick.vrt")
    assert _bands(tmp_path / "pick.vrt")[0] == ["B8A", "B04", "B11", "B02"]
    # materialised as a COG: the remote pixels copied, the cloud as nodata
    run("stack", url, "--bands", "blue,rededge1", "-o", tmp_path / "s2.tif", "-q")
    with rasterio.open(tmp_path / "s2.tif") as ds, rasterio.open(folder / "s2a" / "blue.tif") as src:
        data = ds.read(1)
        assert ds.descriptions == ("B02", "B05") and ds.tags(2)["wavelength"] == "704" and ds.nodata == 0
        np.testing.assert_array_equal(data[valid], src.read(1)[valid])
        assert (data[~valid] == 0).all()


def test_planetary_computer_item_stac11_and_items_trained_on_and_scored(served, tmp_path):
    """STAC 1.1 ``bands``, signed hrefs, QA_PIXEL bits; then two Earth Search items stacked, one trained on, the
    other scored."""
    folder, base, _ = served
    item = json.loads((folder / "items" / "ls.json").read_text())
    (tmp_path / "ls.json").write_text(json.dumps(item))  # a local item whose assets are remote
    msg = run("stack", tmp_path / "ls.json", "-o", tmp_path / "ls.vrt")
    assert "landsat-8 item LC08_L2SP_193029_20240612_02_T1 bands OLI_B2, OLI_B3, OLI_B4, OLI_B5, OLI_B6, " \
           "OLI_B7 on 20 x 20 pixels of 30" in msg and "QA_PIXEL masked 16 of 400" in msg
    names, wl = _bands(tmp_path / "ls.vrt")
    assert wl == ["480", "560", "650", "870", "1610", "2200"]
    assert "sig=abc%3D" in (tmp_path / "ls.vrt").read_text()
    run("stack", f"{base}/items/s2a.json", "-o", tmp_path / "a.vrt", "-q")
    run("stack", f"{base}/items/s2b.json", "-o", tmp_path / "b.vrt", "-q")
    run("ingest", tmp_path / "a.vrt", "-o", tmp_path / "s.nc", "-q")
    run("train", tmp_path / "s.nc", "-o", tmp_path / "model", "--epochs", 3, "--hidden", 16, "--threads", 1, "-q")
    run("score", tmp_path / "model", tmp_path / "b.vrt", "-o", tmp_path / "b_scores.tif", "-q")
    with rasterio.open(tmp_path / "b_scores.tif") as ds:
        score = ds.read(1, masked=True)
        assert ds.crs == "EPSG:32632" and (ds.width, ds.height) == (60, 60)
    assert score.mask[4:14, 4:14].all() and score.mask.sum() == 100  # the cloud is not scored
    assert np.isfinite(score.compressed()).all() and score.count() == 3500


def test_local_item_and_folders_of_downloaded_assets(served, tmp_path):
    """An item beside its assets (relative hrefs), the same assets without the item, a Landsat asset folder:
    the same pixels as the remote item."""
    folder, base, _ = served
    run("stack", f"{base}/items/s2a.json", "-o", tmp_path / "remote.vrt", "-q")
    item = json.loads((folder / "items" / "s2a.json").read_text())
    for asset in item["assets"].values():
        asset["href"] = asset["href"].replace(f"{base}/s2a/", "./")
    local = folder / "s2a" / "item.json"
    local.write_text(json.dumps(item))
    try:
        run("stack", local, "-o", tmp_path / "local.vrt", "-q")
        run("stack", folder / "s2a", "-o", tmp_path / "withjson.vrt", "-q")  # the folder, item JSON inside
    finally:
        local.unlink()
    # an item beside only some of its assets: what is missing is said, not silently dropped
    part = tmp_path / "part"
    part.mkdir()
    for key in ("blue", "green", "red", "nir"):
        (part / f"{key}.tif").symlink_to(folder / "s2a" / f"{key}.tif")
    (part / "item.json").write_text(json.dumps(item))
    out = run("stack", part / "item.json", "-o", tmp_path / "part.vrt")
    assert f"Warning: {part / 'item.json'}: the quality asset 'scl' names no file ({part / 'scl.tif'}); not " \
           "masked by SCL" in out
    assert f"Warning: {part / 'item.json'}: band assets B01 (coastal), B05 (rededge1), B06 (rededge2), " \
           "B07 (rededge3), B8A (nir08), B09 (nir09), B11 (swir16), B12 (swir22) name no file; left out" in out
    assert "bands B02, B03, B04, B08 on 60 x 60" in out
    msg = run("stack", folder / "s2a", "-o", tmp_path / "keys.vrt")  # the folder, asset files only
    assert "Sentinel-2 (assets by key) bands " + ", ".join(S2_DEFAULT) in msg and "SCL masked 100" in msg
    with rasterio.open(tmp_path / "remote.vrt") as ds:
        want, want_mask = ds.read(), ds.read_masks(1)
    for name in ("local", "withjson", "keys"):
        assert _bands(tmp_path / f"{name}.vrt")[0] == S2_DEFAULT
        with rasterio.open(tmp_path / f"{name}.vrt") as ds:
            np.testing.assert_array_equal(ds.read(), want)
            np.testing.assert_array_equal(ds.read_masks(1), want_mask)
    assert "vsicurl" not in (tmp_path / "keys.vrt").read_text()
    run("stack", folder / "s2a", "--bands", "rededge2,nir,B8A", "-o", tmp_path / "pick.vrt", "-q")
    assert _bands(tmp_path / "pick.vrt")[0] == ["B06", "B08", "B8A"]
    out = run("stack", folder / "s2a", "--bands", "rededge", "-o", tmp_path / "pick.vrt", code=1)
    assert "product has no band 'rededge'" in out  # three bands have that common name: none is guessed
    msg = run("stack", folder / "ls", "--bands", "red,nir08", "-o", tmp_path / "ls.vrt")
    assert "Landsat 8/9 (assets by key) bands B4, B5" in msg and "QA_PIXEL masked 16 of 400" in msg


@pytest.fixture
def no_backoff(monkeypatch):
    """Retries of STAC requests without waits between them (the refused connections below)."""
    import pipeline.stac

    monkeypatch.setattr(pipeline.stac, "BACKOFF", 0.0)


def test_bad_stac_inputs_named_in_one_line(served, tmp_path, no_backoff):
    folder, base, _ = served

    def bad(*args, match):
        out = run("stack", *args, "-o", tmp_path / "x.vrt", code=1).strip()
        assert "\n" not in out and "Traceback" not in out, out
        assert out.startswith("Error: ") and match in out, out
        assert not (tmp_path / "x.vrt").exists()

    empty = json.loads((folder / "items" / "s2a.json").read_text())
    empty["assets"] = {k: v for k, v in empty["assets"].items() if k in ("thumbnail", "visual", "aot")}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    bad(tmp_path / "empty.json", match=f"{tmp_path / 'empty.json'}: STAC item S2A_32TQM_20240601_0_L2A has no "
                                       "usable band assets")
    bad(f"{base}/items/s2a.json", "--bands", "B02,pan",
        match=f"{base}/items/s2a.json: sentinel-2a item S2A_32TQM_20240601_0_L2A product has no band 'pan' (it has "
              "B01, B02,")
    bad("http://127.0.0.1:9/item.json", match="http://127.0.0.1:9/item.json: cannot read the STAC item (")
    bad(f"{base}/items/none.json", match=f"{base}/items/none.json: cannot read the STAC item (")
    bad(tmp_path / "none.json", match=f"{tmp_path / 'none.json'}: STAC item file not found")
    (tmp_path / "coll.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    bad(tmp_path / "coll.json", match="coll.json: not a STAC item (a GeoJSON Feature with assets; this is "
                                      "'FeatureCollection')")
    gone = json.loads((folder / "items" / "s2a.json").read_text())
    gone["assets"]["red"]["href"] = f"{base}/s2a/gone.tif"
    (tmp_path / "gone.json").write_text(json.dumps(gone))
    bad(tmp_path / "gone.json", match=f"{base}/s2a/gone.tif: cannot open (")
    local = json.loads((folder / "items" / "s2a.json").read_text())
    for asset in local["assets"].values():
        asset["href"] = "./" + asset["href"].rsplit("/", 1)[1]
    (tmp_path / "local.json").write_text(json.dumps(local))  # relative hrefs, but no files beside it
    bad(tmp_path / "local.json", match="has no usable band assets (single-band rasters with a centre wavelength "
                                       "in eo:bands or bands); 24 band assets name no file, e.g. coastal: "
                                       f"{tmp_path / 'coastal.tif'}")


def test_a_silent_stac_server_ends_in_the_time_out(monkeypatch, tmp_path):
    """A server that accepts the connection and never answers: the item read ends at the read time-out (here
    shortened to 1 s, one retry) with one line, not a hang."""
    import socket

    import pipeline.stac

    monkeypatch.setattr(pipeline.stac, "TIMEOUT", (1.0, 1.0))
    monkeypatch.setattr(pipeline.stac, "RETRIES", 1)
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # the kernel accepts; nobody answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/item.json"
        out = run("stack", url, "-o", tmp_path / "x.vrt", code=1).strip()
    assert out == f"Error: {url}: cannot read the STAC item (Read timed out; tried 2 times)", out


# --------------------------------------------------------------------------------------------- searches


def test_search_resolved_once_and_recorded(served, tmp_path):
    """A search in the config is one request; its items are recorded in RESULTS/stac and each is a stack job;
    planning again (every job of a run reads the Snakefile) asks the API nothing."""
    from pipeline.config import validate
    from pipeline.workflow import plan, stack_input

    folder, base, seen = served
    search = {"url": f"{base}/api", "collections": ["sentinel-2-l2a"], "query": {"eo:cloud_cover": {"lt": 20}},
              "max_items": 10}
    config = validate({"demo": False, "results": str(tmp_path / "res"), "normal": [{"stac": search}],
                       "targets": [f"{base}/items/s2b.json", str(folder / "items" / "ls.json")]})
    before = len(seen)
    p = plan(config)
    asked = seen[before:]
    assert [r for r in asked if "/api/search" in r] and all("/api" in r for r in asked), asked
    assert list(p.normal) == ["S2A_32TQM_20240601_0_L2A"]  # s2b has 45 % clouds; ls is another collection
    assert set(p.targets) == {"s2b", "LC08_L2SP_193029_20240612_02_T1"}  # a URL by its name, a file by its id
    item_file = p.stacks["S2A_32TQM_20240601_0_L2A"]
    assert item_file == str(tmp_path / "res" / "stac" / "items" / "S2A_32TQM_20240601_0_L2A.json")
    assert stack_input(item_file) == [item_file] and stack_input(p.stacks["s2b"]) == []
    assert p.normal["S2A_32TQM_20240601_0_L2A"] == f"{tmp_path / 'res'}/stacks/S2A_32TQM_20240601_0_L2A.vrt"
    record = json.loads(next((tmp_path / "res" / "stac").glob("search-*.json")).read_text())
    assert record["type"] == "FeatureCollection" and record["rsvae:search"] == config["normal"][0]["stac"]
    assert [f["id"] for f in record["features"]] == ["S2A_32TQM_20240601_0_L2A"]
    before = len(seen)
    assert plan(config).stacks == p.stacks and len(seen) == before
    # the recorded item stacks like the served one (its hrefs stay absolute)
    run("stack", item_file, "-o", tmp_path / "a.vrt", "-q")
    assert _bands(tmp_path / "a.vrt")[0] == S2_DEFAULT
    # another search is asked again
    changed = validate({**config, "normal": [{"stac": {**search, "query": {"eo:cloud_cover": {"lt": 50}}}}]})
    assert set(plan(changed).normal) == {"S2A_32TQM_20240601_0_L2A", "S2B_32TQM_20240611_0_L2A"}


def test_bad_searches_named_in_one_line(served, tmp_path, no_backoff):
    from pipeline.config import validate
    from pipeline.errors import ConfigError
    from pipeline.workflow import plan

    folder, base, _ = served

    def config(**search):
        return validate({"demo": False, "results": str(tmp_path / "res"), "normal": [{"stac": search}],
                         "targets": [str(folder / "items" / "ls.json")]})

    with pytest.raises(ConfigError, match=r"^stac search at http://127\.0\.0\.1:9/api: "):
        plan(config(url="http://127.0.0.1:9/api"))
    with pytest.raises(ConfigError, match=r"^stac search at .*/api: no items match "):
        plan(config(url=f"{base}/api", collections=["nothing"]))
    with pytest.raises(ConfigError, match=r"unknown key 'normal\.0\.stac\.colections'"):
        config(url=f"{base}/api", colections=["x"])


@pytest.mark.slow  # end to end, > 15 s: run by .ci/run, not by the README's test command
def test_a_search_runs_through_the_workflow(served, repo):  # noqa: F811  (the fixture imported above)
    """Snakemake on a config whose normal tiles are a STAC search and whose target is an item URL: one stack job
    per item, then the usual steps; the search was asked once."""
    import yaml

    folder, base, seen = served
    search = {"url": f"{base}/api", "collections": ["sentinel-2-l2a"], "query": {"eo:cloud_cover": {"lt": 20}}}
    (repo / "stac.yaml").write_text(yaml.safe_dump({
        "demo": False, "normal": [{"stac": search}], "targets": [f"{base}/items/s2b.json"],
        "truth": "none/{tile}.tif", "ingest": {"max_pixels": 1000},
        "train": {"epochs": 2, "patience": 0, "batch_size": 256, "hidden": [16]}}))
    before = len(seen)
    result = snakemake(repo, "-c2", "--configfile", "stac.yaml", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert job_counts(result.stdout)["stack"] == 2
    assert len([r for r in seen[before:] if "/api/search" in r]) == 1
    res = repo / "results"
    assert (res / "stac" / "items" / "S2A_32TQM_20240601_0_L2A.json").is_file()
    with rasterio.open(res / "stacks" / "S2A_32TQM_20240601_0_L2A.vrt") as ds:
        assert list(ds.descriptions) == S2_DEFAULT and ds.res == (10, 10)
    check_geotiff(res / "scores" / "s2b.tif", res / "stacks" / "s2b.vrt", 4, "float32")
    with rasterio.open(res / "scores" / "s2b.tif") as ds:
        assert ds.read(1, masked=True).mask.sum() == 100  # SCL's cloud, not scored


@pytest.mark.slow  # end to end, > 15 s: run by .ci/run, not by the README's test command
def test_benchmark_smoke(tmp_path, capsys, monkeypatch):
    """benchmarks/stac_stack.py runs end to end at a tiny size (no timing asserted)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import stac_stack

    assert stac_stack.main(["--size", "120", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "`rsvae stack ITEM_URL` -> VRT (remote COGs)" in out and "remote / local: stack" in out
