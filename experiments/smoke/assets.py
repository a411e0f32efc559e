"""The smoke assets' light part: their settings, where they go, their content hash, and ``ensure_smoke_assets``.

The grid loader (cell ids, ``--dry-run``) and the launcher need the assets' paths and settings without building them;
they import this module only. The pretraining (:mod:`experiments.smoke.pretrain`: torch, tokenizers, bertgen) is
imported by :func:`ensure_smoke_assets` only when the assets must be built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PRETRAIN_SOURCE = Path(__file__).with_name("pretrain.py")  # the code that builds the assets: part of their hash


@dataclass(frozen=True)
class TinySize:
    """Width and depth shared by the three tiny checkpoints (hidden 64, 2 layers, 4 heads)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 128  # token positions every model can read
    dropout: float = 0.1  # what config.json says, i.e. what fine-tuning uses (as in the public checkpoints)


@dataclass
class PretrainSettings:
    steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 30
    eval_batches: int = 4
    seed: int = 0
    # A few hundred steps cannot overfit, and dropout would only slow learning down; config.json still carries
    # TinySize.dropout for fine-tuning.
    dropout: float = 0.0


@dataclass
class SmokeSettings:
    corpus_documents: int = 8_000
    corpus_seed: int = 20200101
    wordpiece_vocab_size: int = 1000
    bpe_vocab_size: int = 1000
    size: TinySize = field(default_factory=TinySize)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    sequence_length: int = 64  # tokens per pretraining sequence
    task_sizes: dict[str, int] = field(default_factory=lambda: {"train": 3000, "validation": 200, "test": 200})
    task_seeds: dict[str, int] = field(default_factory=lambda: {"fusion": 11, "split": 23})

    @classmethod
    def quick(cls) -> "SmokeSettings":
        """A reduced build (a few seconds) with the same layouts, for tests: smaller corpus, vocabularies, tasks
        and a few dozen pretraining steps — enough to lower the loss, not to learn the grammar."""
        return cls(corpus_documents=600, wordpiece_vocab_size=400, bpe_vocab_size=400,
                   pretrain=PretrainSettings(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, eval_batches=2),
                   task_sizes={"train": 40, "validation": 8, "test": 8})


TASK_SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"


def content_hash(settings: SmokeSettings) -> str:
    """Changes whenever the settings or the code that builds the assets (this file, smoke/pretrain.py) change, so
    stale assets are never reused."""
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode("utf-8"))
    digest.update(Path(__file__).read_bytes())
    digest.update(PRETRAIN_SOURCE.read_bytes())
    return digest.hexdigest()[:12]


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _relocate(manifest: dict[str, Any], old_root: str, new_root: Path) -> dict[str, Any]:
    """The manifest with paths under ``old_root`` moved to ``new_root`` (the assets are built under a temp name)."""
    text = json.dumps(manifest).replace(json.dumps(old_root)[1:-1], json.dumps(str(new_root))[1:-1])
    return json.loads(text)


def ensure_smoke_assets(root: str | os.PathLike, settings: SmokeSettings | None = None) -> dict[str, Any]:
    """The smoke assets under ``root/smoke-<hash>``, built if missing; returns the manifest (paths, pretraining
    losses). Safe to call from several processes: each builds under a temporary name and the first rename wins."""
    settings = settings or SmokeSettings()
    root = Path(root).resolve()
    final = root / f"smoke-{content_hash(settings)}"
    if (final / MANIFEST).is_file():
        return json.loads((final / MANIFEST).read_text(encoding="utf-8"))
    root.mkdir(parents=True, exist_ok=True)
    # Imported here, not at the top: torch, tokenizers and bertgen's models take seconds to import, and the grid loader
    # and the launcher import this module for the paths alone.
    from .pretrain import build_assets

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        manifest = build_assets(tmp, settings)
        manifest = _relocate(manifest, str(tmp), final)
        manifest["hash"] = final.name.removeprefix("smoke-")
        write_json(tmp / MANIFEST, manifest)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((final / MANIFEST).read_text(encoding="utf-8"))
