"""Remote reads that end: GDAL's HTTP time-outs and retries by default (the user's GDAL_HTTP_* settings win), and a
stalled server, a truncated body or a server without range requests each reported in one line naming the URL."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.raster import HTTP_DEFAULTS, read_env


def test_http_defaults_apply_unless_the_user_sets_them(monkeypatch):
    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    env = read_env("https://example.org/a.tif")
    assert {k: env[k] for k in HTTP_DEFAULTS} == HTTP_DEFAULTS
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "5")
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "TRUE")
    env = read_env("https://example.org/a.tif")
    assert "GDAL_HTTP_LOW_SPEED_TIME" not in env and "GDAL_DISABLE_READDIR_ON_OPEN" not in env
    assert env["GDAL_HTTP_MAX_RETRY"] == HTTP_DEFAULTS["GDAL_HTTP_MAX_RETRY"]


@pytest.fixture
def stalled() -> Iterator[tuple[str, list[socket.socket]]]:
    """A 127.0.0.1 server that accepts connections and never answers: (its URL, the accepted connections)."""
    srv = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed: the test is over
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/scene.tif", accepted
    finally:
        srv.close()
        for conn in accepted:
            conn.close()
        thread.join(5)


def test_stalled_server_fails_with_one_line(stalled, model_dir, tmp_path):
    url, accepted = stalled
    # the user's setting (2 s without a byte) wins over the 30 s default; the run is bounded so a hang fails
    env = dict(os.environ, GDAL_HTTP_LOW_SPEED_TIME="2", GDAL_HTTP_MAX_RETRY="1", GDAL_HTTP_RETRY_DELAY="0.1")
    result = subprocess.run([sys.executable, "-m", "pipeline", "score", str(model_dir), url, "-o",
                             str(tmp_path / "s.tif")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "too slow" in lines[0], result.stderr
    assert accepted  # it did connect: the time-out, not a refused connection, ended it
    assert not (tmp_path / "s.tif").exists()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves one folder; subclasses break it the ways servers do."""

    def log_message(self, *args) -> None:
        pass


class _NoRanges(_Handler):
    """Answers every request with the whole file (200), whatever its Range header asks."""


class _Ranges(_Handler):
    """Honours Range requests (GDAL reads COGs by ranges); ``cut`` sends what of a range's body."""

    def cut(self, body: bytes, start: int) -> bytes:
        return body

    def send_head(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start, _, end = rng.removeprefix("bytes=").partition("-")
        start, end = int(start), min(int(end) if end else size - 1, size - 1)
        body = path.read_bytes()[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(self.cut(body, start))
        return None


class _Truncating(_Ranges):
    """Honours Range requests but sends only half of any range past the file's first bytes, then hangs up."""

    def cut(self, body: bytes, start: int) -> bytes:
        self.close_connection = True
        return body[: len(body) // 2] if start > 0 else body


class _BusyFirst(_Ranges):
    """Answers its first two requests with 503 (busy), then serves ranges."""

    busy = [2]

    def send_head(self):
        if self.busy[0] > 0:
            self.busy[0] -= 1
            self.send_error(503, "busy")
            return None
        return super().send_head()


class _QuietServer(http.server.ThreadingHTTPServer):
    """A test server that keeps a client's hang-up (GDAL closing a connection mid-body) off stderr, which the
    CLI's captured output would otherwise show."""

    def handle_error(self, request, client_address) -> None:
        pass


def _serve(handler: type, folder: Path) -> tuple[http.server.ThreadingHTTPServer, threading.Thread, str]:
    server = _QuietServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize(("handler", "says"), [(_NoRanges, "Range downloading not supported"),
                                               (_Truncating, "could not read")])
def test_broken_servers_give_one_line(handler, says, demo, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    tile = Path(demo.test[0])
    server, thread, base = _serve(handler, tile.parent)
    try:
        url = f"{base}/{tile.name}"
        result = CliRunner().invoke(cli, ["score", str(model_dir), url, "-o", str(tmp_path / "s.tif")])
    finally:
        server.shutdown()
        thread.join()
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and says in lines[0], result.output
    assert not (tmp_path / "s.tif").exists()


@pytest.mark.parametrize(("retries", "code"), [(None, 0), ("0", 1)])
def test_busy_server_retried_by_default(retries, code, demo, model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("GDAL_HTTP_MAX_RETRY", raising=False)  # the default (3 retries) unless the test sets one
    if retries is not None:
        monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", retries)
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    tile = Path(demo.test[0])
    handler = type("Busy", (_BusyFirst,), {"busy": [2]})
    server, thread, base = _serve(handler, tile.parent)
    try:
        url = f"{base}/{tile.name}"
        result = CliRunner().invoke(cli, ["score", str(model_dir), url, "-o", str(tmp_path / "s.tif"), "-q"])
    finally:
        server.shutdown()
        thread.join()
    assert result.exit_code == code, result.output
    assert (tmp_path / "s.tif").exists() == (code == 0)
    if code:
        assert len(result.output.strip().splitlines()) == 1 and url in result.output and "503" in result.output
