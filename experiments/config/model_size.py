"""A cell's model size — layers and width of each stack it builds — read from its checkpoints' ``config.json``.

The paper reports 12-layer (BERT/RoBERTa-Base, GPT-2) and 24-layer (BERT/RoBERTa-Large, GPT-2 Medium) models in
rows of their own (Tables 2, 3, 5), so a run's size is part of what it is: the grid writes it into every cell
(``CellConfig.size``), the launch logs it as a param and a tag, labels show it, and the analysis files a run under
its size's row (``analysis.schema``) — a 24-layer run never lands in a 12-layer row, and a run of any other size
(the CPU study's 6-layer, 384-wide MiniLM) is never compared with the paper's number.

The size is written ``L<layers>-H<hidden>``, or ``L<l>-H<h>+L<l>-H<h>`` (encoder + decoder) when the two stacks
differ. A warm side has its checkpoint's size; a random side (``rnd``) the size ``bertgen.schemes.plan`` gives it,
that of the checkpoint whose vocabulary it uses; the cell's ``model`` overrides (``num_hidden_layers``,
``hidden_size``) change every stack, and so do §5's layer selections (``init_layers``: the first k layers, or a
list of them, give every stack that many layers): bertShare from 10 of BERT-Large's layers is ``L10-H1024``, the
size the paper's text reports it at (§5), not BERT-Large's.

Configs come from :func:`checkpoint_config` (the compute plan's too): the paper's hub checkpoints (``KNOWN_CONFIGS``, no
download), local directories, the hub cache; ``known`` adds configs for paths that do not exist yet (the smoke
assets the launcher builds). A size that cannot be known (a hub id neither known nor cached) is None.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import huggingface_hub

from bertgen.checkpoint import read_config_dict
from bertgen.schemes import PAPER_CHECKPOINT_CONFIGS, SCHEMES

_BERT_MULTI = dict(PAPER_CHECKPOINT_CONFIGS["base"]["bert"], vocab_size=119547)
# The configs of the hub checkpoints the grids name (values of their config.json), so a plan needs no download.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    **{name: PAPER_CHECKPOINT_CONFIGS["base"]["bert"] for name in ("bert-base-cased", "google-bert/bert-base-cased")},
    **{name: PAPER_CHECKPOINT_CONFIGS["large"]["bert"] for name in ("bert-large-cased",
                                                                    "google-bert/bert-large-cased")},
    **{name: _BERT_MULTI for name in ("bert-base-multilingual-cased", "google-bert/bert-base-multilingual-cased")},
    **{name: PAPER_CHECKPOINT_CONFIGS["base"]["roberta"] for name in ("roberta-base", "FacebookAI/roberta-base")},
    **{name: PAPER_CHECKPOINT_CONFIGS["large"]["roberta"] for name in ("roberta-large", "FacebookAI/roberta-large")},
    **{name: PAPER_CHECKPOINT_CONFIGS["base"]["gpt2"] for name in ("gpt2", "openai-community/gpt2")},
    **{name: PAPER_CHECKPOINT_CONFIGS["large"]["gpt2"] for name in ("gpt2-medium", "openai-community/gpt2-medium")},
}


def checkpoint_config(ref: str) -> dict[str, Any] | None:
    """The config.json values of a checkpoint: a known hub id, a local directory or a cached hub id (else None)."""
    if ref in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[ref])
    directory = Path(ref).expanduser()
    try:
        if not (directory / "config.json").is_file():  # a hub id cached locally (experiments.launch.prefetch)?

            cached = huggingface_hub.try_to_load_from_cache(ref, "config.json")
            if not isinstance(cached, str):
                return None
            directory = Path(cached).parent
        return read_config_dict(directory)
    except Exception:  # noqa: BLE001 - no repo id, a bad config: unknown (the pre-flight says why)
        return None


# "L12-H768" or "L12-H768+L6-H384" (encoder+decoder)
SIZE_PATTERN = re.compile(r"L[1-9]\d*-H[1-9]\d*(\+L[1-9]\d*-H[1-9]\d*)?")


def _size_of(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """(layers, hidden) of a BERT-like or GPT-2 config.json."""
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    if not isinstance(layers, int) or not isinstance(hidden, int):
        return None
    return layers, hidden


def size_name(layers: int, hidden: int) -> str:
    return f"L{layers}-H{hidden}"


# The paper's two sizes (bertgen.schemes.PAPER_CHECKPOINT_CONFIGS) → their names in the paper's tables.
PAPER_SIZES: dict[str, str] = {
    size_name(*_size_of(configs["bert"])): name for name, configs in PAPER_CHECKPOINT_CONFIGS.items()}


def selected_layers(init_layers: Mapping[str, Any] | None) -> int | None:
    """How many layers a cell's ``init_layers`` gives every stack (None: the checkpoint's depth)."""
    (kind, value), = (init_layers or {"all": None}).items()
    return value if kind == "first_k" else len(value) if kind == "layers" else None


def model_size(scheme: str, checkpoints: Mapping[str, Any], model: Mapping[str, Any] | None = None,
               known: Mapping[str, Mapping[str, Any]] | None = None,
               init_layers: Mapping[str, Any] | None = None) -> str | None:
    """The size of the model scheme ``scheme`` builds from ``checkpoints`` (family → reference), or None when a
    checkpoint's config cannot be read. ``known``: reference → config for checkpoints not on disk yet."""
    spec = SCHEMES[scheme]
    sizes: dict[str, tuple[int, int] | None] = {}

    def of(family: str) -> tuple[int, int] | None:
        if family not in sizes:
            ref = checkpoints.get(family)
            config = (known or {}).get(str(ref)) if ref else None
            if config is None and ref:
                config = checkpoint_config(str(ref))
            sizes[family] = _size_of(config) if config else None
        return sizes[family]

    sides = [spec.decoder] if spec.encoder is None else [spec.encoder, spec.decoder]
    vocab_of_side = [spec.output_vocab] if spec.encoder is None else [spec.input_vocab, spec.output_vocab]
    stacks = []
    for side, vocab in zip(sides, vocab_of_side):
        size = of(vocab if side == "rnd" else side)  # a random stack takes its vocabulary checkpoint's size
        if size is None:
            return None
        layers, hidden = size
        overrides = model or {}
        layers = selected_layers(init_layers) or overrides.get("num_hidden_layers", layers)
        stacks.append(size_name(layers, overrides.get("hidden_size", hidden)))
    return stacks[0] if len(set(stacks)) == 1 else "+".join(stacks)


def built_size(model: Any) -> str:
    """The size of a built model (``bertgen`` encoder-decoder or decoder-only GPT-2), written as :func:`model_size`
    writes it: what a cell's recorded size is checked against when it trains."""
    config = model.config
    if hasattr(config, "encoder"):
        stacks = [_size_of(vars(config.encoder)), _size_of(vars(config.decoder))]
    else:
        stacks = [_size_of(vars(config))]
    names = [size_name(*s) for s in stacks]
    return names[0] if len(set(names)) == 1 else "+".join(names)
