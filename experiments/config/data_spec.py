"""What a cell's data settings may name, declared where the cell is checked (the data stage reads them from here):

- the keys and formats of a local data spec (read by :func:`experiments.data.sources.load_split`);
- the vocabulary trainers and the sizes a ``vocab: {train, size}`` setting may ask for (trained by
  :mod:`experiments.data.vocabulary`);
- the archives their authors published for data on no hub (:data:`ARCHIVES`, fetched and verified by
  :mod:`experiments.data.archive`): a cell naming a missing file one of them holds is told that prefetch fetches it.

The paper trained and tested on the balanced 4.5M Wikipedia DiscoFuse (``train_balanced.tsv``, ``dev_balanced.tsv``,
``test_balanced.tsv``), which only Google's ``discofuse_v1_wikipedia.zip`` holds (the hub has the full 16.3M set):
:data:`DISCOFUSE_BALANCED` records where that archive is, its size and its SHA-256; the grids name its files under
:data:`DISCOFUSE_DIR`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# -- local data specs (experiments.data.sources) ------------------------------------------------------------------
SPEC_KEYS = {"path", "format", "columns", "source_path", "target_path", "xml_unescape"}
FORMATS = {"jsonl", "csv", "tsv", "wikisplit", "parallel"}

# -- vocabularies trained here (experiments.data.vocabulary: its TRAINERS are these, by name) -----------------------
VOCAB_TRAINERS = ("wordpiece", "sentencepiece")
MIN_VOCAB_SIZE = 16
MAX_VOCAB_SIZE = 1 << 20


# -- data on no hub: the archives their authors published (experiments.data.archive fetches them) -----------------
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


def archive_for(path: str | os.PathLike) -> Archive | None:
    """The archive a data file is extracted from, recognised by its file name."""
    name = Path(path).name
    return next((a for a in ARCHIVES if name in a.members.values()), None)
