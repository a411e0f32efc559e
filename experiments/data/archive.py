"""Data that is on no hub, fetched from the archive its authors published: downloaded, verified, then extracted.

The paper trained and tested on the balanced 4.5M Wikipedia DiscoFuse (``train_balanced.tsv``, ``dev_balanced.tsv``,
``test_balanced.tsv``), which only Google's ``discofuse_v1_wikipedia.zip`` holds (the hub has the full 16.3M set).
:data:`DISCOFUSE_BALANCED` records where that archive is, its size and its SHA-256; :func:`fetch_archive` streams it
to a temporary file beside the destination, refuses it in one line when its size or digest differ (nothing is
kept), and only then extracts the members into a staging folder and moves each into place with ``os.replace``, so a
reader never sees a half-written file. ``python -m experiments.launch.prefetch GRID`` calls it for every such file a grid
names that is missing (the grids name ``data/discofuse/*_balanced.tsv``, :data:`DISCOFUSE_DIR`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    """A published archive: where it is (mirrors tried in order), what it must be, which members are wanted."""

    name: str
    urls: tuple[str, ...]
    size: int  # bytes
    sha256: str
    members: dict  # member path inside the archive -> the file name it is written to
    provenance: str  # where the URL, size and digest were read


DISCOFUSE_BALANCED = Archive(
    name="discofuse_v1_wikipedia.zip",
    urls=("https://storage.googleapis.com/gresearch/discofuse/discofuse_v1_wikipedia.zip",
          "https://storage.googleapis.com/discofuse.appspot.com/discofuse_v1_wikipedia.zip"),
    size=1_717_422_334,
    sha256="e8a5ec52cdd9820ce9b410b47c3a57a49a300470c976202cd7caab613658ebfe",
    members={f"discofuse_v1/wikipedia/{split}_balanced.tsv": f"{split}_balanced.tsv"
             for split in ("train", "dev", "test")},
    provenance=("URLs: google-research-datasets/discofuse README (appspot) and huggingface/datasets' discofuse "
                "script (gresearch); size and SHA-256: huggingface/datasets datasets/discofuse/dataset_infos.json "
                "(download_checksums of the gresearch URL); not downloaded from this project"),
)
ARCHIVES = (DISCOFUSE_BALANCED,)
DISCOFUSE_DIR = Path("data") / "discofuse"  # where the grids expect the balanced files (relative to the launch)


class ArchiveError(RuntimeError):
    """A download that cannot be used (one line: the URL, what was wrong, that nothing was kept)."""


def archive_for(path: str | os.PathLike) -> Archive | None:
    """The archive a data file is extracted from, recognised by its file name."""
    name = Path(path).name
    return next((a for a in ARCHIVES if name in a.members.values()), None)


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
