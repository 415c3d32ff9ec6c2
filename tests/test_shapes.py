"""Shape breadth: the ci profile draws each op's shapes from a few complete geometries, so that JAX
compiles ~2 shapes per (op, dtype) and its jit cache hit rate stays >= 0.9 (docs/performance.md);
dev and thorough draw from the full bounded sets.

A JAX compile key is the oracle's (oracles/jax_oracle.py `vjp`): the arrays' shapes, every param
that is not an np.ndarray (static for jit) and the array params' shapes, per dtype.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from properties import catalogue
from properties.config import BREADTH, PROFILES

CATALOGUE = catalogue.load()

ROOT = Path(__file__).resolve().parent.parent
CI_MAX_KEYS = 3  # an edge geometry, a rich one, and at most one more


def compile_key(case) -> tuple:
    static = tuple(sorted((k, v) for k, v in case.params.items() if not isinstance(v, np.ndarray)))
    array_params = tuple((k, v.shape) for k, v in sorted(case.params.items()) if isinstance(v, np.ndarray))
    return tuple(a.shape for a in case.arrays.values()), static, array_params


def drawn_keys(op: str, profile: str, regimes, examples: int) -> set:
    spec, seen = CATALOGUE[op], set()
    for regime in regimes:
        @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(spec.inputs(regime, BREADTH[profile]))
        def draw(case):
            seen.add(compile_key(case))

        draw()
    return seen


def _ci_keys() -> dict[str, set]:
    return {op: drawn_keys(op, "ci", CATALOGUE[op].regimes, 30) for op in sorted(CATALOGUE)}


@pytest.fixture(scope="module")
def ci_keys():
    return _ci_keys()


def test_ci_draws_an_edge_and_a_rich_geometry_and_few_more(ci_keys):
    few = {op: len(k) for op, k in ci_keys.items() if not 2 <= len(k) <= CI_MAX_KEYS}
    assert not few, f"ops whose ci profile draws fewer than 2 or more than {CI_MAX_KEYS} compile keys: {few}"


def test_ci_hit_rate_bound(ci_keys):
    # every (op, dtype) compiles each of its keys once and hits the cache on every other example
    n = PROFILES["ci"]["max_examples"]
    calls = sum(len(CATALOGUE[op].regimes) * n for op in ci_keys)
    misses = sum(len(k) for k in ci_keys.values())
    assert 1 - misses / calls >= 0.9, f"{misses} compile keys for {calls} examples per dtype"


def test_dev_draws_more_shapes_than_ci(ci_keys):
    narrow = {op: len(ci_keys[op]) for op in ci_keys}
    full = {op: len(drawn_keys(op, "dev", CATALOGUE[op].regimes[:1], 30)) for op in ci_keys}
    assert not [op for op in full if full[op] <= narrow[op]], (narrow, full)
    assert all(BREADTH[p] == "full" for p in ("dev", "thorough"))


def test_ci_run_jit_cache_hit_rate(tmp_path):
    """A fresh `gradaudit run --profile ci` of a few ops (the JAX oracle only): the hit rate that
    run.json records, and no more compiles than the keys drawn above."""
    ops = ("affine", "l2_regularization", "relu", "softmax_cross_entropy")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "gradaudit", "run", "--profile", "ci", "--oracles", "jax",
                        "--ops", ",".join(ops), "--report", str(tmp_path), "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    stats = json.loads((tmp_path / "run.json").read_text())["jax_cache"]
    if not stats.get("hits", 0) + stats.get("misses", 0):
        pytest.skip(f"the JAX oracle did not run: {r.stdout[-500:]}")
    keys = sum(len(drawn_keys(op, "ci", CATALOGUE[op].regimes, 30)) for op in ops)
    assert stats["misses"] <= 2 * keys, stats  # both dtypes
    assert stats["hit_rate"] >= 0.9, stats
