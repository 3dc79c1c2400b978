"""A fork server for the process tests: imports rsvae (and torch) once, then runs each command in a forked child.

Each child is a real ``rsvae`` process (its own PID, signals, files; it runs ``pipeline.cli.main``, the console
script's entry point) that skips torch's two-second import. Protocol, one JSON object per line on stdin/stdout:

    {"op": "run", "argv": [...], "cwd": ..., "stdout": path, "stderr": path, "hook": {...}?}  ->  {"pid": N}
    {"op": "wait", "pid": N}                                                                 ->  {"code": C}

``code`` is the exit status, or minus the signal that ended the child. A ``hook`` makes the child send itself
``signal`` right before (``"when": "before"``) or after its ``call``-th call of ``target`` (e.g.
``os.rename``), to interrupt it at an exact point; tests use it where an outside signal cannot be timed.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys

import rasterio  # noqa: F401  (imported once here, not in every child)
import torch  # noqa: F401

import pipeline.cli
import pipeline.detectors
import pipeline.sample
import pipeline.scoring
import pipeline.training  # noqa: F401

# The optimiser imports torch._dynamo on first use (a second or more): do it here, once. The server stays
# single-threaded, so forking it is safe.
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
assert len(os.listdir("/proc/self/task")) == 1, "the fork server must not start threads before forking"


def _resolve(target: str) -> tuple[object, str]:
    """``"os.rename"`` -> (os, "rename"); ``"rasterio.io.DatasetWriter.write"`` -> (DatasetWriter, "write")."""
    parts = target.split(".")
    for n in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for name in parts[n:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ValueError(f"cannot resolve {target!r}")


def _install_hook(hook: dict) -> None:
    owner, attr = _resolve(hook["target"])
    real = getattr(owner, attr)
    calls = {"n": 0}

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        hit = calls["n"] == hook["call"]
        if hit and hook.get("when", "before") == "before":
            os.kill(os.getpid(), hook["signal"])
        result = real(*args, **kwargs)
        if hit and hook.get("when") == "after":
            os.kill(os.getpid(), hook["signal"])
        return result

    setattr(owner, attr, wrapper)


def _child(cmd: dict) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, cmd["stdout"]), (2, cmd["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
        os.chdir(cmd["cwd"])
        if cmd.get("hook"):
            _install_hook(cmd["hook"])
        sys.argv = ["rsvae", *cmd["argv"]]
        try:
            pipeline.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  (report anything, then leave without running the server's code)
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            pid = os.fork()
            if pid == 0:
                _child(cmd)
            reply = {"pid": pid}
        elif cmd["op"] == "wait":
            _, status = os.waitpid(cmd["pid"], 0)
            reply = {"code": os.waitstatus_to_exitcode(status)}
        else:
            reply = {"error": f"unknown op {cmd['op']!r}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
