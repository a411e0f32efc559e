"""Fetch every hub checkpoint and dataset a grid names, for compute nodes without internet.

    python -m experiments.launch.prefetch GRID [--cache-dir DIR] [--only PATTERN] [--set key=value ...]

Run it where there is network (a login node); it downloads what the selected cells would fetch themselves:
checkpoints (``huggingface_hub.snapshot_download`` with the files ``bertgen.checkpoint`` reads) and hub data
(``datasets.load_dataset`` with the cell's exact call, ``experiments.data.sources.hub_request``; Gigaword's archive
with ``hf_hub_download``), and data that is on no hub from the archive its authors published, verified against the
size and SHA-256 recorded in :mod:`experiments.config.data_spec` (DiscoFuse's balanced files, where the grids name them:
``data/discofuse/*_balanced.tsv``), and prints what each weighs and how much was fetched. ``--cache-dir DIR`` puts
them under ``DIR/hub`` and ``DIR/datasets`` instead of the default HF caches; the jobs then need ``HF_HUB_CACHE=DIR/hub
HF_DATASETS_CACHE=DIR/datasets`` (printed). With ``HF_HUB_OFFLINE=1`` set for the jobs, the launch pre-flight
(:func:`check_hub`) resolves every hub checkpoint against the local cache and refuses in one line, exit status 2,
before anything is written, when one is not there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import huggingface_hub
from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

from bertgen.checkpoint import HUB_FILES, is_local_reference
from bertgen.families import FAMILIES

from ..cli import EXIT_FAILED, EXIT_OK, entry_point
from ..config.cell import CellConfig
from ..config.data_spec import archive_for
from ..config.tasks import get_task
from ..config.validate import Refusal, short_text
from ..data.archive import fetch_archive
from ..data.sources import hub_request
from ..grid.document import GridError
from ..grid.load import load_grid, select

OFFLINE_VALUES = ("1", "true", "yes", "on")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in OFFLINE_VALUES


# -- what a grid names ------------------------------------------------------------------------------------------------
def hub_checkpoints(cells: list[CellConfig]) -> dict[str, list[str]]:
    """hub id -> the ``checkpoints.<family>`` fields naming it (local directories and pkg: references left out)."""
    found: dict[str, list[str]] = {}
    for cell in cells:
        for family in FAMILIES:
            ref = getattr(cell.checkpoints, family)
            if ref and not is_local_reference(str(ref)) and not Path(str(ref)).expanduser().is_dir():
                fields = found.setdefault(str(ref), [])
                if f"checkpoints.{family}" not in fields:
                    fields.append(f"checkpoints.{family}")
    return found


def hub_data(cells: list[CellConfig]) -> dict[str, Any]:
    """key -> ``HubRequest`` of every split the cells read from the hub (their ``data.<split>`` is null)."""

    found: dict[str, Any] = {}
    for cell in cells:
        task = get_task(cell.task)
        if getattr(task, "synthetic", False):
            continue
        for split in task.splits:
            own = split if split in ("train", "validation", "test") else "test"  # extra test sets go with test
            if getattr(cell.data, own) is not None:
                continue
            request = hub_request(task, split)
            found.setdefault(json.dumps([request.loader, request.kwargs], sort_keys=True), request)
    return found


# -- fetching ---------------------------------------------------------------------------------------------------------
def _size(path: Path) -> int:
    """Bytes under ``path``, each file once (the hub cache's snapshots link to blobs)."""
    if not path.exists():
        return 0
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            real = Path(root, name).resolve()
            if real not in seen and real.is_file():
                seen.add(real)
                total += real.stat().st_size
    return total


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _roots(cache_dir: Path | None) -> tuple[Path, Path]:
    from datasets import config as ds_config  # lazy: loads datasets (~2 s), which this module does not otherwise

    if cache_dir is not None:
        return cache_dir / "hub", cache_dir / "datasets"
    return Path(huggingface_hub.constants.HF_HUB_CACHE), Path(ds_config.HF_DATASETS_CACHE)


def fetch_checkpoint(repo_id: str, hub_cache: Path) -> Path:
    return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_FILES, cache_dir=str(hub_cache)))


def fetch_data(request: Any, hub_cache: Path, datasets_cache: Path) -> None:
    if request.loader == "datasets.load_dataset":
        import datasets  # lazy: loads datasets (~2 s), which this module does not otherwise

        datasets.load_dataset(**request.kwargs, cache_dir=str(datasets_cache))
    else:
        huggingface_hub.hf_hub_download(**request.kwargs, cache_dir=str(hub_cache))


def prefetch(cells: list[CellConfig], cache_dir: Path | None = None, out: Callable[[str], None] = print) -> int:
    """Fetch what ``cells`` read from the hub; returns the bytes the caches grew by."""
    archives = archive_data(cells)
    for directory, archive in archives.items():  # data on no hub (DiscoFuse's balanced set): its authors' archive
        fetch_archive(archive, directory, out=out)
    hub_cache, datasets_cache = _roots(cache_dir)
    checkpoints, data = hub_checkpoints(cells), hub_data(cells)
    if not checkpoints and not data:
        out("nothing " + ("else " if archives else "") + "to fetch: every checkpoint and data file of these cells is "
            "local")
        return 0
    before_all = _size(hub_cache) + _size(datasets_cache)
    for repo_id, fields in checkpoints.items():
        before = _size(hub_cache)
        path = fetch_checkpoint(repo_id, hub_cache)
        grew = _size(hub_cache) - before
        out(f"checkpoint {repo_id} ({', '.join(fields)}): {_mb(_size(path))} at {path}"
            + (f", fetched {_mb(grew)}" if grew else ", already cached"))
    for request in data.values():
        before = _size(hub_cache) + _size(datasets_cache)
        fetch_data(request, hub_cache, datasets_cache)
        grew = _size(hub_cache) + _size(datasets_cache) - before
        what = " ".join(f"{k}={v}" for k, v in request.kwargs.items())
        out(f"data {what}: " + (f"fetched {_mb(grew)}" if grew else "already cached"))
    total = _size(hub_cache) + _size(datasets_cache) - before_all
    out(f"fetched {_mb(total)} in all ({len(checkpoints)} checkpoints, {len(data)} data splits) into {hub_cache}"
        f" and {datasets_cache}")
    env = f"HF_HUB_CACHE={hub_cache} HF_DATASETS_CACHE={datasets_cache} " if cache_dir is not None else ""
    out(f"compute nodes without internet: launch with {env}HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 in the environment")
    return total


# -- the launch pre-flight ----------------------------------------------------------------------------------------------
def hub_cached(repo_id: str) -> bool:
    """Whether the files a cell reads of ``repo_id`` are in the local HF cache."""
    try:
        huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or an invalid id
        return False


def resolve_hub_id(repo_id: str) -> str | None:
    """None when ``repo_id`` is usable by a cell, else why not: in the local cache (offline: only there), or, online,
    on the hub. A hub that does not answer is not a refusal online (the cell fetches it)."""
    if hub_cached(repo_id):
        return None

    if offline():
        return (f"hub id {repo_id!r} is not in the local HF cache ({huggingface_hub.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1; "
                f"expected it prefetched (python -m experiments.launch.prefetch GRID on a machine with internet) or a "
                "checkpoint directory")

    try:
        huggingface_hub.model_info(repo_id, timeout=10)
    except GatedRepoError:
        return f"hub id {repo_id!r} is gated: log in (hf auth login) and accept its terms, or pass a directory"
    except (RepositoryNotFoundError, HFValidationError):
        return f"hub id {repo_id!r} does not exist on the hub; expected a hub model id or a checkpoint directory"
    except Exception:  # noqa: BLE001 - no network here: the cell fetches it (or fails there, naming it)
        return None
    return None


def check_hub(grid: Any, cells: list[CellConfig], dry_run: bool = False) -> list[str]:
    """Every hub checkpoint of ``cells`` resolves (module docstring); :class:`GridError` (one line) on the first
    that does not. A dry run only looks: one not in the local cache is a warning naming the command that fetches it
    (returned), and online a wrong or gated id is still refused."""
    warnings = []
    for repo_id, fields in hub_checkpoints(cells).items():
        users = [c for c in cells if repo_id in asdict(c.checkpoints).values()]
        example = f" (cells: {len(users)}, e.g. {users[0].task}/{users[0].scheme})" if users else ""
        if dry_run and hub_cached(repo_id):
            continue
        problem = None if dry_run and offline() else resolve_hub_id(repo_id)
        if problem is not None:
            raise GridError(grid.where, fields[0], problem + example)
        if dry_run:
            warnings.append(f"{grid.where}: {fields[0]}: hub id {repo_id!r} is not in the local HF cache yet; "
                            f"fetch it with: python -m experiments.launch.prefetch {grid.where} (where there is internet)"
                            + example)
    return warnings


def archive_data(cells: list[CellConfig]) -> dict[Path, Any]:
    """directory -> the published archive (experiments.config.data_spec) of each missing local data file the cells name
    that such an archive holds (DiscoFuse's balanced files)."""
    found: dict[Path, Any] = {}
    for cell in cells:
        for spec in cell.data.splits.values():
            paths = [spec] if isinstance(spec, str) else [spec[k] for k in ("path", "source_path", "target_path")
                                                          if isinstance(spec, dict) and k in spec]
            for path in (Path(p).expanduser() for p in paths):
                archive = archive_for(path)
                if archive is not None and not path.is_file():
                    found.setdefault(path.parent, archive)
    return found


# -- command line -----------------------------------------------------------------------------------------------------
@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.launch.prefetch",
                                     description="Download every hub checkpoint and dataset a grid names.")
    parser.add_argument("grid", type=Path)
    parser.add_argument("--cache-dir", type=Path, help="fetch into DIR/hub and DIR/datasets (default: the HF caches)")
    parser.add_argument("--only", metavar="PATTERN", help="only these cells (as experiments.launch --only)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets")
    args = parser.parse_args(argv)

    grid = load_grid(args.grid, args.sets, check_paths=False)  # what is missing is what it fetches
    cells = select(grid.cells, args.only)
    if offline():
        raise Refusal("HF_HUB_OFFLINE is set: prefetch needs the hub (unset it here)")
    try:
        prefetch(cells, args.cache_dir.resolve() if args.cache_dir else None)
    except Exception as err:  # noqa: BLE001 - a failed download: one line naming it
        print(f"error: {type(err).__name__}: {short_text(err, 400)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
