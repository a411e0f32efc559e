"""The ceiling ``benchmarks/profile_step.py`` prints under its table: arithmetic on a profile's kinds of op."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def profile_step():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_ratio_bound_counts_only_the_kinds_both_libraries_share(profile_step):
    ours = {"matrix products": 300.0, "top-k": 100.0, "casts and copies": 150.0, "LayerNorm": 50.0}
    bound = profile_step.ratio_bound(1000.0, ours, target=2.0)
    assert bound["ceiling"] == pytest.approx(1000.0 / 400.0)
    assert bound["budget_ms"] == pytest.approx(1000.0 / 2.0 - 400.0)  # 100 ms left for the rest at 2x
    assert bound["rest_ms"] == pytest.approx(200.0)


def test_ratio_bound_says_when_the_target_is_out_of_reach(profile_step):
    bound = profile_step.ratio_bound(1000.0, {"matrix products": 600.0, "other": 10.0}, target=2.0)
    assert bound["ceiling"] < 2.0 and bound["budget_ms"] < 0


def test_ratio_bound_refuses_a_profile_without_shared_kinds(profile_step):
    with pytest.raises(ValueError, match="shared 0"):
        profile_step.ratio_bound(1000.0, {"casts and copies": 10.0}, target=2.0)


def test_every_shared_kind_is_a_profiled_kind(profile_step):
    named = {kind for kind, _ in profile_step.KINDS} | {kind for kind, _ in profile_step.BEAM_KINDS}
    assert set(profile_step.SHARED_KINDS) <= named
