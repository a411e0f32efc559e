"""A split read from local files as a cell will read it, checked first: the launch's pre-flight and the
evaluation's read the data this way before anything is written.

Each file is checked for UTF-8 over its whole length (streamed); a file over ``FULL_READ_BYTES`` is then loaded on
its first ``HEAD_LINES`` lines only, so checking a large corpus takes seconds.
"""

from __future__ import annotations

import codecs
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from datasets.utils import logging as ds_logging

from .sources import load_split

FULL_READ_BYTES = 64 * 2**20
HEAD_LINES = 2000


def spec_files(spec: Any) -> list[Path]:
    """The local files a data spec names (a path, or a mapping with path / source_path / target_path)."""
    return [Path(spec).expanduser()] if isinstance(spec, str) else [
        Path(spec[k]).expanduser() for k in ("path", "source_path", "target_path") if k in spec]


def load_local_split(task: str, split: str, spec: Any, data_fraction: float | None = None,
                     max_examples: int | None = None) -> Any:
    """A split from local files, read as the cell will read it (``load_split``) after its files are checked for
    UTF-8 over their whole length; a file over FULL_READ_BYTES is loaded on its first HEAD_LINES lines. Raises
    ValueError or OSError (one line each)."""
    for file in spec_files(spec):
        _check_utf8(file)
    with _bounded(spec) as readable, quiet_datasets():
        return load_split(task, split, readable, seed=0, data_fraction=data_fraction, max_examples=max_examples)


def _check_utf8(path: Path) -> None:
    """The whole file decodes as UTF-8 (streamed: constant memory, any size); same message as experiments.data.batches."""
    if not path.is_file():
        return  # experiments.data.batches names the missing file
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not valid UTF-8 (byte {offset + err.start}); expected UTF-8 text") from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not valid UTF-8 (truncated character at the end); expected UTF-8 text") from None


@contextlib.contextmanager
def _bounded(spec: Any) -> Iterator[Any]:
    """The spec itself, or, when one of its files is larger than FULL_READ_BYTES, the same spec over copies of their
    first HEAD_LINES lines (same names, in a temporary directory removed afterwards)."""
    keys = ("path", "source_path", "target_path")
    as_dict = {"path": spec} if isinstance(spec, str) else dict(spec)
    big = [k for k in keys if k in as_dict and Path(as_dict[k]).expanduser().is_file()
           and Path(as_dict[k]).expanduser().stat().st_size > FULL_READ_BYTES]
    if not big:
        yield spec
        return
    tmp = Path(tempfile.mkdtemp(prefix="bertgen-preflight-"))
    try:
        for i, k in enumerate(big):
            source = Path(as_dict[k]).expanduser()
            head = tmp / str(i) / source.name
            head.parent.mkdir()
            with open(source, "rb") as src, open(head, "wb") as dst:
                for _, line in zip(range(HEAD_LINES), src):
                    dst.write(line)
            as_dict[k] = str(head)
        yield as_dict
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars from datasets' map while checking: the launcher's error must stay one line."""
    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()
