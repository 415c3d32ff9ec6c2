"""The differential suite: every catalogue op x oracle x dtype, under the chosen Hypothesis profile.

One Hypothesis search per (op, dtype) checks every oracle at once (the triangulation needs them
together), so the search runs once per group and each (op, oracle, dtype) test reads its records.
`--dist loadgroup` keeps a group on one xdist worker.
"""
import functools
import tempfile
from pathlib import Path

import pytest

import oracles
from properties import catalogue
from properties.config import RunConfig
from properties.runner import run_target_cells
from properties.session import prepare_process
from properties.target import Target
from reports.records import RecordSink

CATALOGUE = catalogue.load()

DTYPES = ("float64", "float32")


@functools.cache
def _group(op: str, dtype: str, profile: str, report_dir: Path | None) -> tuple:
    spec = CATALOGUE[op]
    report_dir = report_dir or Path(tempfile.mkdtemp(prefix="gradaudit-suite-"))
    cfg = RunConfig(profile=profile, dtypes=(dtype,), report_dir=report_dir)
    prepare_process(cfg)  # as `gradaudit run` sets up its process: one BLAS and torch thread, JAX cache
    sink = RecordSink(report_dir / "results.jsonl")
    try:
        return tuple(run_target_cells(spec, Target.reference(spec), spec.inputs, spec.regimes, cfg, sink))
    finally:
        sink.close()


CELLS = [pytest.param(op, oracle, dtype, id=f"{op}-{oracle}-{dtype}", marks=pytest.mark.xdist_group(f"{op}-{dtype}"))
         for op in sorted(CATALOGUE) for dtype in DTYPES for oracle in oracles.ORACLES]


@pytest.mark.parametrize("op, oracle, dtype", CELLS)
def test_reference_agrees(op, oracle, dtype, gradaudit_profile, gradaudit_report_dir):
    records = [r for r in _group(op, dtype, gradaudit_profile, gradaudit_report_dir) if r["oracle"] == oracle]
    assert records, f"no cells ran for {op} x {oracle} x {dtype}"
    bad = [r for r in records if r["status"] in ("fail", "error")]
    assert not bad, "\n".join(f"{r['id']}: {r['status']} blame={r['blame']} {r['message']} [{r['replay']}]"
                              for r in bad)
    if all(r["status"] == "skip" for r in records):
        pytest.skip(records[0]["message"])
    assert sum(r["examples"] for r in records) > 0
