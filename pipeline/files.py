"""File-system helpers: atomic writes of small files (JSON, CSV, PNG) through a temporary beside the target,
renamed into place when complete; creating an output's folder; and an atomic swap of two paths (for model folders)
where the system has one."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that look at it still work) to write to; renamed
    onto ``path`` only when the block succeeds, removed otherwise. OS errors become one-line OutputErrors."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def make_parent(path: Path) -> None:
    """Create the folder of ``path`` and its parents; a file in the way is an error that names it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()),
                       path.parent)
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder") from None


#: renameat2 flag and "relative to the working directory" (linux/fs.h, fcntl.h)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: errors meaning "this kernel or filesystem cannot exchange": the caller falls back to two renames
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


@functools.cache
def _renameat2() -> ctypes._CFuncPtr | None:
    """libc's renameat2 (glibc 2.28+), or None where there is none (macOS, musl before 1.2.x)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    True when swapped; False where this system or filesystem cannot (nothing changed: the caller renames in two
    steps instead). Other failures raise OSError.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))
