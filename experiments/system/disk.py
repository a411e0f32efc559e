"""A full disk said in one line, whatever the writing library raised, and text files written whole or not at all.

Scratch quotas are the most common way a cluster run dies, and every library reports a full disk its own way:
Python's ``OSError: [Errno 28] No space left on device``, safetensors' ``SafetensorError: Error while serializing:
I/O error: No space left on device (os error 28)``, torch.save's ``RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos 704 vs 662`` (no errno at all), sqlite's ``database or disk is full``.
:func:`writing` wraps a write and turns any of them into :class:`DiskFullError`, whose message is one line naming the
path, the space the write needed and what is free. An error is a full disk when its errno (anywhere in its chain)
or its text says so, or, for one that says neither (torch's), when the filesystem has less free space than the write
needed (``os.statvfs``, measured after the half-written file is removed, so the figure is what the write had).
"""

from __future__ import annotations

import errno
import os
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..config.validate import nearest_existing, short_text

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What libraries that do not pass an errno on say for ENOSPC / EDQUOT (Rust's io::Error, sqlite, MLflow servers).
FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122",
              "database or disk is full", "storagefull", "quota exceeded")
# Free space under which an error that names no cause counts as a full disk: what the write needed plus the
# filesystem's own overhead (blocks, inodes, a journal), which a size computed from the data does not include.
SLACK_BYTES = 256 * 2**10


class DiskFullError(OSError):
    """A write that did not fit; ``str()`` is one line: ``<path>: the disk is full: ...`` (errno ENOSPC)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def size_text(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes this user may still write on the filesystem holding ``path`` (or its nearest existing folder)."""
    try:
        stats = os.statvfs(nearest_existing(Path(path)))
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def says_disk_full(err: BaseException) -> bool:
    """Whether ``err`` or an exception it came from carries ENOSPC/EDQUOT or says "no space left" in words."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
            return True
        if any(text in str(err).lower() for text in FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_error(err: BaseException, path: str | os.PathLike, needed: int | None, what: str,
                    hint: str = "") -> DiskFullError | None:
    """The :class:`DiskFullError` that ``err`` (raised while writing ``needed`` bytes of ``what`` to ``path``) really
    is, or None when it is something else. ``needed=None``: a write whose free space cannot be measured here (an
    MLflow server's disk), recognised by its errno or text only."""
    if isinstance(err, DiskFullError):
        return err
    free = free_bytes(path) if needed is not None else None
    if not says_disk_full(err) and (free is None or free >= needed + SLACK_BYTES):
        return None
    room = f"needs {size_text(needed)}, {size_text(free)} free there" if needed is not None else "found no room"
    message = f"{path}: the disk is full: writing {what} {room} ({type(err).__name__}: {short_text(err, 100)})"
    return DiskFullError(message + (f"; {hint}" if hint else ""))


def _release_files(err: BaseException) -> None:
    """Drop the locals of the finished frames behind ``err`` and the errors it came from. A writer that failed
    (torch's zip writer, from the traceback of the error that made its ``__exit__`` fail) still holds its
    half-written file open there: deleted, its blocks stay allocated, the filesystem cannot be unmounted and the
    free space measured next is short by its size."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


@contextmanager
def writing(path: str | os.PathLike, needed: int | None, what: str, hint: str = "") -> Iterator[None]:
    """Raise :class:`DiskFullError` (from the original error) when what the block writes does not fit; any other
    error passes unchanged. Remove partial files inside the block (``except: cleanup; raise``) so that the free
    space measured here is what the write had."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - recognised by errno, text or free space; anything else re-raised
        _release_files(err)
        full = disk_full_error(err, path, needed, what, hint)
        if full is None or full is err:
            raise
        raise full from err


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, fsynced, then renamed over it; on any error
    the temporary file is removed and the previous ``path`` (if any) is left as it was. A full disk is a
    :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    data = text.encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path, len(data), path.name):
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
