"""A real run of the real catalogue with bugs planted on purpose (tests/planted.py), for the report's
tests and scripts/report_screenshot.py: the classic derivation bugs, an oracle that is out, and a
cell of every status, judged by the real oracles and written by the real session.

    planted_run(report_dir)       run it; the records (results.jsonl, run.json, cases/ are on disk)
    judge_again(report_dir, rec)  the judge's verdict on a failing cell's saved case, re-run
    bulk(report_dir, records, n, failures)   a thorough-sized run, cloned from the real records
"""
from __future__ import annotations

import contextlib
import functools
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

from planted import PLANTED

from properties import catalogue
from properties.config import RunConfig
from properties.evaluate import evaluate
from properties.runner import run_target_cells
from properties.session import run_session
from properties.stability import settle_severity
from properties.target import Target
from reports.records import RecordSink


@dataclass(frozen=True)
class Cells:
    """A target (a PLANTED name, or `reference:<op>`) over some sides, regimes and dtypes."""
    what: str
    oracles: tuple[str, ...]
    regimes: tuple[str, ...]
    dtypes: tuple[str, ...] = ("float64",)
    devices: tuple[str, ...] = ("cpu",)
    oracle_bug: str | None = None  # a framework forward with a mistake, in force while these run


def _sigmoid_off_by_a_permille(x):
    from jax import nn

    return nn.sigmoid(x) * 1.001


ORACLE_BUGS = {"jax-sigmoid": ("jax", "sigmoid", _sigmoid_off_by_a_permille)}

CELLS = (
    Cells("softmax-ce-missing-1/N", ("torch", "numeric"), ("typical",)),  # constant factor N, small arrays
    Cells("conv: db averaged over the batch", ("torch", "numeric"), ("typical",)),  # numeric: projections
    Cells("conv-overlaps-overwrite", ("torch",), ("typical",)),  # a large wrong array: heatmaps
    Cells("softmax-ce-no-max-shift", ("torch",), ("overflow",)),  # NaN on the reference's side only
    Cells("relu-mutates-dout", ("torch",), ("typical",)),  # a backward that writes into dout
    Cells("affine-transposed-weight", ("torch",), ("typical",)),  # a gradient of the wrong shape: error
    Cells("reference:max_pool2d", ("numeric",), ("kinks",)),  # ties, straddled: kink
    Cells("reference:relu", ("torch",), ("typical",), devices=("cpu", "cuda")),  # pass; skip without a GPU
    Cells("reference:sigmoid", ("torch", "jax", "numeric"), ("typical",), oracle_bug="jax-sigmoid"),  # oracle:jax
)


@contextlib.contextmanager
def oracle_bug(name: str | None):
    """Plant a mistake in a framework's forward (oracles/<framework>_ops.py) while the block runs."""
    if name is None:
        yield
        return
    import importlib

    framework, op, wrong = ORACLE_BUGS[name]
    ops = importlib.import_module(f"oracles.{framework}_ops")
    right = getattr(ops, op)
    setattr(ops, op, wrong)
    try:
        yield
    finally:
        setattr(ops, op, right)


def target(what: str) -> Target:
    if what.startswith("reference:"):
        return Target.reference(catalogue.load()[what.split(":", 1)[1]])
    op, forward, backward, _ = PLANTED[what]
    return Target(name=backward.__name__, op=op, forward=forward, backward=backward)


def _run(cells: Cells, sink, cfg: RunConfig, done=()) -> list[dict]:
    t = target(cells.what)
    spec = catalogue.load()[t.op]
    cfg = replace(cfg, oracles=cells.oracles, devices=cells.devices, dtypes=cells.dtypes)
    with oracle_bug(cells.oracle_bug):
        return run_target_cells(spec, t, spec.inputs, cells.regimes, cfg, sink, done=done)


def planted_run(report_dir: Path, cells=CELLS) -> list[dict]:
    """Run `cells` (ci profile) into report_dir as `gradaudit run` would; return the records."""
    cfg = RunConfig(oracles=("torch", "jax", "numeric"), devices=("cpu", "cuda"), profile="ci", report_dir=report_dir)
    jobs = [(c.what, functools.partial(_run, c)) for c in cells]
    records, _ = run_session(cfg, jobs, what=[c.what for c in cells],
                             command=["python", "-m", "pytest", "tests (planted_run)"])
    return records


def judge_again(report_dir: Path, rec: dict):
    """The judge's Verdict on the saved case of a failing cell of a planted run, evaluated afresh."""
    from gradaudit.replay import load_case

    meta, case, douts = load_case(Path(report_dir) / rec["counterexample"])
    cells = next(c for c in CELLS if target(c.what).name == rec["target"])
    t = target(cells.what)
    side = (meta["oracle"], meta["device"])
    spec = catalogue.load()[t.op]
    with oracle_bug(cells.oracle_bug):
        ev = evaluate(spec, t, case, meta["dtype"], [side], douts=douts)
        # as the runner does: a right formula that breaks only at extreme magnitudes is unstable (no pattern)
        settle_severity(spec, t, ev, rec["regime"])
    return ev.sides[side]


def bulk(report_dir: Path, records: list[dict], n: int, failures: int, seed: int = 0) -> list[dict]:
    """`n` more records cloned from a planted run's (each with its own cell id, the failing ones
    pointing at the real saved cases), about `failures` of them failing: a thorough-sized run."""
    rng = random.Random(seed)
    bad = [r for r in records if r["status"] in ("fail", "error")]
    good = [r for r in records if r["status"] not in ("fail", "error")]
    out = []
    for i in range(n):
        base = rng.choice(bad) if rng.random() < failures / n else rng.choice(good)
        out.append(dict(base, regime=f"{base['regime']}{i}", id=f"{base['id']}-{i}"))
    with RecordSink(Path(report_dir) / "results.jsonl") as sink:
        for r in out:
            sink.write(r)
    return records + out


def rewrite(report_dir: Path, records: list[dict]) -> None:
    """Replace results.jsonl with `records` (a test that alters what a run wrote)."""
    (Path(report_dir) / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
