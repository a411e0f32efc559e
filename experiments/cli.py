"""The plumbing every entry point (``python -m experiments.<launch|evaluate|prefetch|rehearse|sync|relocate>``)
shares, written once:

- the exit statuses (:data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_REFUSED`, :data:`EXIT_INTERRUPTED`);
- :func:`entry_point`: a refusal (:class:`experiments.config.validate.Refusal`, or the library's checkpoint and tokenizer
  errors) raised anywhere below a command's ``main`` becomes ONE line, ``error: <what>``, on stderr and exit status
  2; with ``unexpected=True`` so does any other exception (the launcher's last resort; ``BERTGEN_TRACEBACK=1``
  shows the traceback);
- the ``--tracking-uri`` and ``--device`` options and how they are read (:func:`tracking_uri`, :func:`device`): the
  same URI means the same store from every command, the relative ``sqlite:///outputs/mlflow.db`` the README prints
  included (read against the working directory, then passed on absolute, so a job that runs elsewhere writes the
  same file).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from typing import Any, Callable

import torch

from bertgen.checkpoint import CheckpointError
from bertgen.tokenization import TokenizerError

from .config.validate import Refusal, short_text
from .tracking.store import resolve_tracking_uri, sqlite_path

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130
# What is refused rather than failed: the harness's own refusals and the library's (bertgen cannot import Refusal).
REFUSALS = (Refusal, CheckpointError, TokenizerError)
DEVICES = ("cpu", "cuda")


def refuse(message: object) -> int:
    """Print the one-line refusal and return :data:`EXIT_REFUSED`."""
    print(f"error: {short_text(message, None)}", file=sys.stderr)
    return EXIT_REFUSED


def entry_point(main: Callable[..., int] | None = None, *, unexpected: bool = False):
    """Wrap a command's ``main``: a refusal raised under it is one ``error:`` line and exit status 2. With
    ``unexpected``, an exception nothing foresaw is too (``error: unexpected <type>: ...``), never a traceback."""

    def wrap(body: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(body)
        def wrapped(*args: Any, **kwargs: Any) -> int:
            try:
                return body(*args, **kwargs)
            except REFUSALS as err:
                return refuse(err)
            except Exception as err:  # noqa: BLE001 - the point: never a traceback for the user
                if not unexpected:
                    raise
                if os.environ.get("BERTGEN_TRACEBACK"):
                    traceback.print_exc()
                return refuse(f"unexpected {type(err).__name__}: {short_text(err, 200)}; expected none (a bug; "
                              "BERTGEN_TRACEBACK=1 shows where)")
        return wrapped

    return wrap(main) if main is not None else wrap


# -- --tracking-uri -------------------------------------------------------------------------------------------------
def add_tracking_uri(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--tracking-uri", metavar="URI", help=help + "; a relative sqlite:///path is read from the "
                                                                     "working directory")


def tracking_uri(given: str | None, output_root: str | os.PathLike) -> str:
    """The store a command writes to: ``given`` (``--tracking-uri`` or a grid's ``mlflow.tracking_uri``), else
    ``$MLFLOW_TRACKING_URI``, else ``<output_root>/mlflow.db``; a relative ``sqlite:///`` path is made absolute
    against the working directory, as MLflow reads it here, so jobs started elsewhere use the same file."""
    uri = resolve_tracking_uri(given, output_root)
    return absolute_sqlite(uri)


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///outputs/mlflow.db`` → ``sqlite:////<cwd>/outputs/mlflow.db``; any other URI unchanged."""
    db = sqlite_path(uri)
    return f"sqlite:///{db.absolute()}" if db is not None and not db.is_absolute() else uri


# -- --device -------------------------------------------------------------------------------------------------------
def add_device(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--device", choices=DEVICES, default=default,
                        help=f"default: {default or 'cuda when available, else cpu'}")


def device(name: str | None) -> str:
    """``--device``: the named one (refused when it is cuda on a machine without one), else cuda when available."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise Refusal("--device cuda: no CUDA device on this machine")
    return name

