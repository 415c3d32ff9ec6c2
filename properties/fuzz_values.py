"""A fuzzing batch's value sets: Hypothesis's, and more of the same shapes drawn with NumPy; the
per-example check they are judged by (properties/fuzz_batch.py)."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from oracles import numeric

from .spec import Case
from .strategies import REGIMES, upstream
from .target import Target

__all__ = ["DOUT_SEEDS", "ProjectedTarget", "ValueSet", "draw_value_sets", "projected", "stream_of", "upstream_of"]


@dataclass(frozen=True)
class ProjectedTarget(Target):
    """A target whose finite differences project on random directions at every size (the fuzz check)."""

    def oracle_vjp(self, oracle: str):
        return numeric.vjp_projected if oracle == "numeric" else super().oracle_vjp(oracle)


def projected(target: Target) -> ProjectedTarget:
    return ProjectedTarget(**{f.name: getattr(target, f.name) for f in dataclasses.fields(Target)})


def stream_of(dout_seed: int) -> int:
    """The global random stream a value set's code under test runs under (runner.GroupSearch.check's)."""
    return dout_seed * 2654435761 % 2**32


@dataclass
class ValueSet:
    case: Case
    dout_seed: int


# The drawn value sets' upstream gradients come from this many seeds (strategies.upstream, cached):
# seeding a NumPy generator costs more than checking a small case. The inputs vary freely.
DOUT_SEEDS = 256


@functools.lru_cache(maxsize=8192)
def upstream_of(shapes: tuple, dout_seed: int, dtype: str) -> tuple[np.ndarray, ...]:
    """strategies.upstream in `dtype`, read-only (shared by the value sets of that seed)."""
    douts = tuple(np.asarray(d, dtype=dtype) for d in upstream(shapes, dout_seed))
    for d in douts:
        d.flags.writeable = False
    return douts


def draw_value_sets(case: Case, origins: dict, dout_seed: int, seed: int, k: int) -> list[ValueSet]:
    """`case` (Hypothesis's value set) and k-1 more of its shapes: each array in `origins` (name ->
    (regime, scale)) redrawn from its regime, the others kept; upstream seeds drawn alongside."""
    rng = np.random.default_rng(seed)
    drawn = {n: np.asarray(REGIMES[origins[n][0]].sample(rng, (k - 1, *a.shape)) * origins[n][1], dtype=np.float64)
             for n, a in case.arrays.items() if n in origins}
    seeds = rng.integers(0, DOUT_SEEDS, size=k - 1).tolist()
    return [ValueSet(case, dout_seed)] + [
        ValueSet(Case({n: drawn[n][i] if n in drawn else a for n, a in case.arrays.items()}, case.params), seeds[i])
        for i in range(k - 1)]
