"""Data that is on no hub, fetched from the archive its authors published: downloaded, verified, then extracted.

The archives are declared in :mod:`experiments.config.data_spec` (``ARCHIVES``: DiscoFuse's balanced 4.5M Wikipedia
files, which only Google's ``discofuse_v1_wikipedia.zip`` holds, with its URL, size and SHA-256, so that a cell's
check can say a missing file is fetched by prefetch); :func:`fetch_archive` streams one
to a temporary file beside the destination, refuses it in one line when its size or digest differ (nothing is
kept), and only then extracts the members into a staging folder and moves each into place with ``os.replace``, so a
reader never sees a half-written file. ``python -m experiments.launch.prefetch GRID`` calls it for every such file a grid
names that is missing (the grids name ``data/discofuse/*_balanced.tsv``, ``DISCOFUSE_DIR``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..config.data_spec import Archive

CHUNK_BYTES = 1 << 20


class ArchiveError(RuntimeError):
    """A download that cannot be used (one line: the URL, what was wrong, that nothing was kept)."""


def fetch_archive(archive: Archive, destination: Path, urls: tuple[str, ...] | None = None,
                  out: Callable[[str], None] = print, timeout_s: float = 60.0) -> list[Path]:
    """Put ``archive``'s members into ``destination`` (returns their paths); files already there are kept. Mirrors
    are tried in order when one cannot be reached; a download of another size or digest is refused at once."""
    destination = Path(destination)
    targets = [destination / name for name in archive.members.values()]
    if all(t.is_file() for t in targets):
        out(f"data {archive.name}: already extracted in {destination}")
        return targets
    destination.mkdir(parents=True, exist_ok=True)
    partial = destination / f".{archive.name}.part-{os.getpid()}"
    problems = []
    try:
        for url in urls or archive.urls:
            try:
                _download(url, partial, archive, timeout_s)
                break
            except (urllib.error.URLError, HTTPException, OSError) as err:  # unreachable or cut off: the next mirror
                partial.unlink(missing_ok=True)
                problems.append(f"{url}: {type(err).__name__}: {err}")
        else:
            raise ArchiveError(f"{archive.name}: no mirror delivered it ({'; '.join(problems)}); nothing kept")
        _extract(partial, archive, destination)
    finally:
        partial.unlink(missing_ok=True)
    out(f"data {archive.name}: {archive.size / 2**20:,.1f} MB verified (sha256 {archive.sha256[:12]}…), "
        f"{', '.join(t.name for t in targets)} in {destination}")
    return targets


def _download(url: str, partial: Path, archive: Archive, timeout_s: float) -> None:
    """Stream ``url`` into ``partial`` while hashing it; ArchiveError (and ``partial`` removed) on a size or digest
    other than the recorded ones, whatever the server says."""
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a recorded https URL or a mirror
        announced = response.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) != archive.size:
            raise ArchiveError(f"{url}: the server announces {int(announced):,} bytes, expected {archive.size:,} "
                               f"({archive.name}); nothing kept")
        with open(partial, "wb") as fh, tqdm(total=archive.size, unit="B", unit_scale=True, desc=archive.name,
                                             mininterval=5.0, disable=None) as progress:
            while chunk := response.read(CHUNK_BYTES):
                received += len(chunk)
                if received > archive.size:
                    break
                digest.update(chunk)
                fh.write(chunk)
                progress.update(len(chunk))
    if received != archive.size:
        partial.unlink(missing_ok=True)
        raise ArchiveError(f"{url}: received {received:,} bytes, expected {archive.size:,} ({archive.name}: an "
                           "interrupted download or another file); nothing kept")
    if digest.hexdigest() != archive.sha256:
        partial.unlink(missing_ok=True)
        raise ArchiveError(f"{url}: sha256 {digest.hexdigest()}, expected {archive.sha256} ({archive.name} as its "
                           "authors published it); nothing kept")


def _extract(zip_path: Path, archive: Archive, destination: Path) -> None:
    """Each wanted member into a staging folder beside the destination, then moved into place (``os.replace``)."""
    staging = destination / f".{archive.name}.extract-{os.getpid()}"
    staging.mkdir()
    try:
        with zipfile.ZipFile(zip_path) as bundle:
            names = set(bundle.namelist())
            for member, target in archive.members.items():
                if member not in names:
                    raise ArchiveError(f"{archive.name}: no member {member}; expected {sorted(archive.members)}; "
                                       "nothing kept")
                with bundle.open(member) as src, open(staging / target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
        for target in archive.members.values():
            os.replace(staging / target, destination / target)
    except zipfile.BadZipFile as err:
        raise ArchiveError(f"{archive.name}: not a readable zip ({err}); nothing kept") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
