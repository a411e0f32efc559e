"""What the launcher checks besides the grid and the pre-flight (issue 13), and how it fails.

- :func:`check_json_files`: the JSON files of local checkpoints (``config.json``, the tokenizer's) are bounded in size
  and nesting before anything parses them for real (a ``config.json`` 200k levels deep is a RecursionError in any
  recursive reader).
- :func:`check_decoding`: what the cells decode with, against the checkpoints they read: beam search keeps
  ``2 * num_beams`` candidates, so the output vocabulary must have that many tokens (else the cell fails after its
  training).
- :func:`check_writable`: the output root (and the folders the launch writes under it) can be written, checked
  before the first byte is.
- :func:`check_pending`: every selected cell's ``pending_metrics.jsonl`` is readable and holds only good records,
  checked before the experiment or any run exists (experiments.tracking.sync sets bad records aside).
- :func:`check_store_filesystem`: a Slurm launch whose embedded sqlite store lies on a network filesystem (NFS,
  Lustre, GPFS, BeeGFS, CIFS ...) is refused, saying how to run an MLflow server instead, unless the grid sets
  ``mlflow.allow_network_filesystem: true``; local and debug launches (one machine) are not affected.

Every refusal is a :class:`experiments.grid.document.GridError`: one line, ``<file>: <key>: <what was expected>``
(:func:`experiments.cli.entry_point` prints it; an exception nothing here foresaw ends there in one line too).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from bertgen.checkpoint import is_local_reference
from bertgen.schemes import SCHEMES

from ..config.cell import CellConfig
from ..config.validate import nearest_existing, short_text
from ..grid.document import GridError
from ..grid.identity import cell_dir, cell_label
from ..grid.load import Grid
from ..tracking.runs import PENDING_FILE
from ..tracking.store import network_filesystem, sqlite_path
from ..tracking.sync import scan_pending

JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
              "generation_config.json", "model.safetensors.index.json")
MAX_JSON_BYTES = 256 * 2**20  # the largest real tokenizer.json files are tens of MB


def _local_dirs(cell: CellConfig) -> dict[str, Path]:
    out = {}
    for family, ref in asdict(cell.checkpoints).items():
        if ref and is_local_reference(ref) and Path(ref).expanduser().is_dir():
            out[family] = Path(ref).expanduser()
    return out


def check_json_files(grid: Grid, cells: list[CellConfig]) -> None:
    seen: set[Path] = set()
    for cell in cells:
        for family, directory in _local_dirs(cell).items():
            for name in JSON_FILES:
                file = directory / name
                if file in seen or not file.is_file():
                    continue
                seen.add(file)
                field = f"checkpoints.{family}"
                if file.stat().st_size > MAX_JSON_BYTES:
                    raise GridError(grid.where, field, f"{file}: larger than {MAX_JSON_BYTES} bytes; expected a "
                                                         f"checkpoint's {name}")
                try:
                    json.loads(file.read_bytes())
                except RecursionError:
                    raise GridError(grid.where, field, f"{file}: nested too deeply to read; expected a "
                                                         f"checkpoint's {name}") from None
                except (ValueError, OSError) as err:
                    raise GridError(grid.where, field, f"{file}: not readable JSON ({short_text(err)}); expected a "
                                                         f"checkpoint's {name}") from None


def _vocab_size(directory: Path) -> int | None:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # the pre-flight names it
    size = config.get("vocab_size") if isinstance(config, dict) else None
    if not isinstance(size, int) and isinstance(config, dict) and isinstance(config.get("decoder"), dict):
        size = config["decoder"].get("vocab_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def check_decoding(grid: Grid, cells: list[CellConfig]) -> None:
    for cell in cells:
        beams = cell.decode.num_beams
        if beams <= 1:
            continue
        family = SCHEMES[cell.scheme].output_vocab
        directory = _local_dirs(cell).get(family)
        size = _vocab_size(directory) if directory is not None else None
        if size is not None and 2 * beams > size:
            raise GridError(grid.where, "decode.num_beams",
                            f"expected at most {size // 2} beams for the {size}-token output vocabulary of "
                            f"{directory} (beam search keeps 2 x num_beams candidates), got {beams} "
                            f"(cell {cell_label(cell)})")


def check_writable(grid: Grid, names: tuple[str, ...] = ("launches", "submitit", "cells")) -> None:
    """The output root, or the nearest folder above it that exists, is a directory this user can write; so is each
    of the folders the launch writes into that already exists."""
    root = grid.output_root
    targets = [nearest_existing(root)] + [root / name for name in names if (root / name).exists()]
    for target in targets:
        if not target.is_dir():
            raise GridError(grid.where, "output_root", f"expected a directory, {target} is not one")
        if not os.access(target, os.W_OK | os.X_OK):
            raise GridError(grid.where, "output_root", f"expected a writable directory, {target} is not "
                                                         "writable by this user (nothing was written)")


def check_pending(grid: Grid, cells: list[CellConfig]) -> None:
    for cell in cells:
        pending = cell_dir(cell) / PENDING_FILE
        if not pending.is_file():
            continue
        try:
            _, rejected = scan_pending(pending)
        except (ValueError, OSError) as err:
            raise GridError(grid.where, "pending metrics", f"{short_text(err, 220)}") from None
        if rejected:
            number, why, _ = rejected[0]
            shown = pending.relative_to(grid.output_root) if pending.is_relative_to(grid.output_root) else pending
            raise GridError(grid.where, "pending metrics",
                            f"<output_root>/{shown}:{number}: {why} ({len(rejected)} bad); expected only records "
                            "the cell wrote (experiments.tracking.sync sets bad ones aside)")


def check_store_filesystem(grid: Grid, uri: str, executor: str, mountinfo: Path | None = None) -> None:
    """Cells of a Slurm array write to the tracking store from many nodes at once; a sqlite file on a network
    filesystem is then at the mercy of that filesystem's locking (sqlite's FAQ, MLflow's docs: run a server)."""
    db = sqlite_path(uri)
    if executor != "slurm" or db is None or grid.allow_network_filesystem:
        return
    found = network_filesystem(db.parent, mountinfo)
    if found is None:
        return
    name, kind, mount = found
    raise GridError(grid.where, "mlflow.tracking_uri",
                    f"the embedded MLflow store {db} is on {name} ({kind} mounted at {mount}), whose file locking "
                    "sqlite cannot trust with a Slurm array's concurrent writers; expected a tracking server: start "
                    "one on a node with a local disk (mlflow server --backend-store-uri sqlite:////<local disk>/"
                    "mlflow.db --artifacts-destination <shared folder> --host 0.0.0.0 --port 5000) and pass --set "
                    "mlflow.tracking_uri=http://<that node>:5000, or accept the risk with --set "
                    "mlflow.allow_network_filesystem=true (nothing was submitted)")

