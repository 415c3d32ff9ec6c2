"""What a run is asked to do: the sides, dtypes and Hypothesis profile (`RunConfig`), and what each
profile means (the examples per cell, the shape breadth, the Hypothesis settings)."""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import oracles

__all__ = ["BREADTH", "DTYPES", "PROFILES", "RunConfig", "default_profile", "hypothesis_settings",
           "module_independent_draws"]

DTYPES = ("float64", "float32")

PROFILES = {
    # derandomized: the same examples on every CI run; no database, so no state leaks between runs.
    # 12 examples per (op, regime, dtype) over each op's 2-3 ci geometries (BREADTH below): JAX
    # compiles ~140 shapes for the whole catalogue, and 91% of its calls hit its jit cache.
    "ci": dict(max_examples=12, derandomize=True, database=None),
    "dev": dict(max_examples=25),
    "thorough": dict(max_examples=200),
}
# Shape breadth per profile (properties.strategies): ci draws each op's edge and rich geometries
# only, so a derandomized run compiles ~2 JAX shapes per (op, dtype); dev and thorough draw from
# every bounded set.
BREADTH = {"ci": "narrow", "dev": "full", "thorough": "full"}


def default_profile() -> str:
    """ci under CI (the CI environment variable set), else dev."""
    return "ci" if os.environ.get("CI") else "dev"


@dataclass(frozen=True)
class RunConfig:
    oracles: tuple[str, ...] = oracles.ORACLES
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = DTYPES
    profile: str = "dev"
    examples: int | None = None  # per cell; None: the profile's
    seed: int | None = None
    seed_drawn: bool = False  # the run drew `seed` itself (no --seed): the example database stays in use
    report_dir: Path = Path("gradaudit-report")
    database: str | None = None  # example database: a directory, or redis://host:port/db (None: none)
    allow_tf32: bool = False

    def sides(self) -> list[tuple[str, str]]:
        """(oracle, device) pairs; finite differences run on the CPU only."""
        return [(o, d) for o in self.oracles for d in self.devices if not (o == "numeric" and d != "cpu")]

    @property
    def breadth(self) -> str:
        return BREADTH.get(self.profile, "full")

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(oracles=list(self.oracles), devices=list(self.devices), dtypes=list(self.dtypes),
                 report_dir=str(self.report_dir))
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunConfig":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for k in ("oracles", "devices", "dtypes"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if "report_dir" in kw:
            kw["report_dir"] = Path(kw["report_dir"])
        return cls(**kw)


@contextlib.contextmanager
def module_independent_draws():
    """Hypothesis (6.13x+) mixes constants read from the source of every *local* module imported so far
    into the values it draws. Which modules those are depends on the process: the CLI's, a worker's,
    a resumed run's or a test harness's import different sets, so one `--seed` drew different cases
    in each (a resumed run's cells differed from a clean run's; `--workers 1` from `--workers 2`).
    A seeded run must draw the same cases wherever it runs: no local constants while searching.
    Hypothesis has no public switch for this; if its internals move, this does nothing and
    tests/test_scale.py's cross-process reproducibility test fails. Searches in several threads at once
    (an audit's lanes) share one switch: on while any of them searches."""
    try:
        from hypothesis.internal.conjecture import providers
        empty, cache = providers.Constants(), providers.CONSTANTS_CACHE.cache
        providers._get_local_constants  # noqa: B018  (the switch itself: AttributeError if it moved)
    except (ImportError, AttributeError):
        yield
        return
    with _DRAWS["lock"]:
        if _DRAWS["searching"] == 0:
            _DRAWS["get"] = providers._get_local_constants
            providers._get_local_constants = lambda: empty
            cache.clear()  # the permitted constants per choice kind, cached with the local ones of earlier searches
        _DRAWS["searching"] += 1
    try:
        yield
    finally:
        with _DRAWS["lock"]:
            _DRAWS["searching"] -= 1
            if _DRAWS["searching"] == 0:
                providers._get_local_constants = _DRAWS.pop("get")
                cache.clear()


_DRAWS: dict = {"lock": threading.Lock(), "searching": 0}


def hypothesis_settings(cfg: RunConfig, database=None):
    """The Hypothesis settings of a group's search under `cfg` (`database`: an example database)."""
    from hypothesis import HealthCheck, Phase, settings

    kw = dict(PROFILES[cfg.profile])
    if cfg.examples is not None:
        kw["max_examples"] = cfg.examples
    if database is not None:
        kw["database"] = database
    # Every phase but `explain`: explain re-runs the shrunk failing example under sys.settrace, and
    # re-runs it with parts varied, to annotate Hypothesis's own "Falsifying example" printout, which
    # the runner never shows (it catches the failure and records, triangulates and saves the case
    # itself). Measured on five of tests/planted.py's wrong derivations (dev profile): 15 s of CPU
    # with it, 3 s without.
    phases = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
    # an LSTM example takes ~10 ms and medium arrays are large: neither is a problem here; the search
    # for a smaller failing case (runner.GroupSearch._smaller) filters out most cases on purpose
    return settings(deadline=None, print_blob=False, report_multiple_bugs=False, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much], **kw)
