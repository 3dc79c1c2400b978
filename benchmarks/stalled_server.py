"""How long `rsvae stack` and `rsvae score` take to fail against a server that accepts and never answers.

A socket on 127.0.0.1 accepts connections and sends nothing (for at most --limit seconds); each command runs in its
own process with rsvae's default GDAL HTTP settings (``raster.HTTP_DEFAULTS``; a GDAL_HTTP_* variable in your
environment wins) and this prints its exit code, seconds and the one line it printed.

    python benchmarks/stalled_server.py MODEL        # MODEL: any model folder (for the score command)
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def silent_server(limit: float) -> tuple[str, threading.Event]:
    """A URL served by a socket that accepts and never answers, until the event is set or ``limit`` seconds pass."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    done = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        end = time.monotonic() + limit
        while not done.is_set() and time.monotonic() < end:
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
        for c in held:
            c.close()
        srv.close()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/scene.tif", done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model folder, for `rsvae score`")
    p.add_argument("--limit", type=float, default=400.0, help="seconds the server and each command may run")
    a = p.parse_args(argv)
    rsvae = shutil.which("rsvae") or str(Path(sys.executable).with_name("rsvae"))
    url, done = silent_server(a.limit)
    with tempfile.TemporaryDirectory() as tmp:
        for args in (["stack", url, "-o", f"{tmp}/x.vrt"], ["score", a.model, url, "-o", f"{tmp}/x.tif"]):
            t0 = time.perf_counter()
            r = subprocess.run([rsvae, *args], capture_output=True, text=True, timeout=a.limit)
            print(f"rsvae {args[0]}: exit {r.returncode} after {time.perf_counter() - t0:.1f} s: {r.stderr.strip()}")
    done.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
