"""Stacking and scoring a STAC item whose assets are remote COGs, against the same assets as local files.

Builds (once, cached in --cache) a Sentinel-2-like scene as COGs named by their Earth Search asset keys (uint16,
deflate, 512-pixel tiles with overviews: blue/green/red/nir at 10 m, SIZE x SIZE; rededge1-3/nir08/swir16/swir22 and
scl at 20 m; coastal/nir09 at 60 m) and an Earth Search-style item (STAC 1.0, ``eo:bands``) whose hrefs point at
a server on 127.0.0.1 that answers Range requests (the tests' server), then times, each in a new process as a user
runs it:

- ``rsvae stack ITEM_URL -o remote.vrt`` (item read over HTTP, COG headers read by ranges, the SCL mask computed
  from the remote SCL) and ``rsvae stack FOLDER -o local.vrt`` (the downloaded assets, named by key);
- ``rsvae score`` of a small model on both stacks (every pixel of the remote one read over HTTP).

Prints a markdown table with wall seconds, HTTP requests and bytes served per step. Timings on a shared machine
are noisy; the ratios within one run are what count. The server is local, so network latency is not measured.

    python benchmarks/stac_stack.py                 # 2048 x 2048 at 10 m (10 bands), seconds to a minute
    python benchmarks/stac_stack.py --size 256      # a smoke run
"""

from __future__ import annotations

import argparse
import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_stack import _RangeHandler  # noqa: E402  (the tests' Range server, reused)

#: Earth Search keys -> (band, common name, centre wavelength um, resolution m)
ASSETS = {"coastal": ("B01", "coastal", 0.443, 60), "blue": ("B02", "blue", 0.49, 10),
          "green": ("B03", "green", 0.56, 10), "red": ("B04", "red", 0.665, 10),
          "rededge1": ("B05", "rededge", 0.704, 20), "rededge2": ("B06", "rededge", 0.74, 20),
          "rededge3": ("B07", "rededge", 0.783, 20), "nir": ("B08", "nir", 0.842, 10),
          "nir08": ("B8A", "nir08", 0.865, 20), "nir09": ("B09", "nir09", 0.945, 60),
          "swir16": ("B11", "swir16", 1.61, 20), "swir22": ("B12", "swir22", 2.19, 20)}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def build(folder: Path, size: int) -> None:
    """The scene's COGs in ``folder`` (skipped when there already)."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    layers = {k: v[3] for k, v in ASSETS.items()} | {"scl": 20}
    for key, res in layers.items():
        path = folder / f"{key}.tif"
        if path.is_file():
            continue
        n = size * 10 // res
        y, x = np.mgrid[0:n, 0:n] / n
        if key == "scl":
            data = np.full((n, n), 4, np.uint8)
            data[n // 8: n // 4, n // 8: n // 4] = 9
        else:
            data = (1000 + 400 * np.sin(3 * x + len(key)) * np.cos(2 * y)
                    + rng.integers(0, 50, (n, n))).astype(np.uint16)
        profile = dict(driver="GTiff", width=n, height=n, count=1, dtype=data.dtype, crs="EPSG:32632",
                       transform=from_origin(600000, 5000000, res, res), nodata=0)
        with MemoryFile() as mem:
            with mem.open(**profile) as ds:
                ds.write(data, 1)
            copy(mem.name, str(path) + ".part", driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512)
        Path(str(path) + ".part").rename(path)
    with rasterio.open(folder / "blue.tif") as ds:
        assert ds.width == size


def item(base: str) -> dict:
    """An Earth Search-style item of the scene at ``base``."""
    assets = {key: {"href": f"{base}/{key}.tif", "type": COG, "roles": ["data", "reflectance"],
                    "eo:bands": [{"name": b, "common_name": c, "center_wavelength": um}]}
              for key, (b, c, um, _) in ASSETS.items()}
    assets["scl"] = {"href": f"{base}/scl.tif", "type": COG, "roles": ["data"]}
    return {"type": "Feature", "stac_version": "1.0.0", "id": "S2X_BENCH", "geometry": None, "bbox": None,
            "properties": {"datetime": "2024-06-01T10:30:31Z", "platform": "sentinel-2a"}, "links": [],
            "assets": assets}


class Counter:
    """GET requests and body bytes the server answered."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def take(self) -> tuple[int, int]:
        with self.lock:
            out = (self.requests, self.bytes)
            self.requests = self.bytes = 0
        return out


def serve(folder: Path, counter: Counter) -> tuple[http.server.ThreadingHTTPServer, str]:
    """``folder`` served on 127.0.0.1 with Range requests, counting requests and body bytes."""

    class Handler(_RangeHandler):
        def send_header(self, keyword, value):
            if keyword.lower() == "content-length" and self.command == "GET":  # a HEAD sends no body
                with counter.lock:
                    counter.requests += 1
                    counter.bytes += int(value)
            super().send_header(keyword, value)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Handler(*a, directory=str(folder),
                                                                                      **k))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def timed(args: list[str]) -> float:
    """Wall seconds of one command in a new process (start-up included)."""
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="pixels a side at 10 m")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rsvae-bench-stac")
    ap.add_argument("--work", type=Path, help="folder for the stacks and the model (default: --cache/work)")
    a = ap.parse_args(argv)
    assets = a.cache / f"s2_{a.size}"
    work = a.work or a.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    build(assets, a.size)
    counter = Counter()
    server, base = serve(assets, counter)
    rsvae = [sys.executable, "-m", "pipeline"]
    try:
        (assets / "item.json").write_text(json.dumps(item(base)))
        rows = []
        counter.take()
        rows.append(("`rsvae stack ITEM_URL` -> VRT (remote COGs)",
                     timed([*rsvae, "stack", f"{base}/item.json", "-o", str(work / "remote.vrt"), "-q"]),
                     *counter.take()))
        rows.append(("`rsvae stack FOLDER` -> VRT (the same assets downloaded)",
                     timed([*rsvae, "stack", str(assets), "-o", str(work / "local.vrt"), "-q"]), 0, 0))
        subprocess.run([*rsvae, "ingest", str(work / "local.vrt"), "-o", str(work / "s.nc"), "-q",
                        "--max-pixels", "20000"], check=True)
        subprocess.run([*rsvae, "train", str(work / "s.nc"), "-o", str(work / "model"), "-q", "--epochs", "3",
                        "--threads", "1"], check=True)
        counter.take()
        rows.append(("`rsvae score` on the remote stack",
                     timed([*rsvae, "score", str(work / "model"), str(work / "remote.vrt"),
                            "-o", str(work / "remote_scores.tif"), "-q"]), *counter.take()))
        rows.append(("`rsvae score` on the local stack",
                     timed([*rsvae, "score", str(work / "model"), str(work / "local.vrt"),
                            "-o", str(work / "local_scores.tif"), "-q"]), 0, 0))
    finally:
        server.shutdown()
    size_mib = sum(p.stat().st_size for p in assets.glob("*.tif")) / 2**20
    print(f"\nSentinel-2-like item, {a.size} x {a.size} at 10 m, 10 bands stacked of 12 + SCL "
          f"({size_mib:.1f} MiB of COGs), served from 127.0.0.1\n")
    print("| step | wall s | HTTP requests | MiB served |\n| --- | ---: | ---: | ---: |")
    for label, wall, requests, nbytes in rows:
        print(f"| {label} | {wall:.2f} | {requests} | {nbytes / 2**20:.2f} |")
    print(f"\nremote / local: stack {rows[0][1] / rows[1][1]:.2f} x, score {rows[2][1] / rows[3][1]:.2f} x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
