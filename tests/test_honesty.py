"""The harness's own honesty check: every planted wrong derivation is flagged, with blame on the
derivation and a minimal counterexample on disk, in the (derandomized) ci profile."""
import json

import numpy as np
import pytest

from planted import PLANTED
from properties import catalogue
from properties.config import RunConfig
from properties.runner import run_target_cells
from properties.target import Target
from reports.records import RecordSink

CATALOGUE = catalogue.load()


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_is_flagged_with_blame_reference(name, tmp_path):
    op, forward, backward, what = PLANTED[name]
    spec = CATALOGUE[op]
    target = Target(name=backward.__name__, op=op, forward=forward, backward=backward)
    cfg = RunConfig(profile="ci", dtypes=("float64",), report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    records = run_target_cells(spec, target, spec.inputs, spec.regimes, cfg, sink)
    sink.close()
    flagged = [r for r in records if r["status"] in ("fail", "error")]
    assert flagged, f"planted bug {name!r} ({what}) was not flagged: {[r['status'] for r in records]}"
    for r in flagged:
        assert r["blame"] == "reference", f"{name}: {r['id']} blamed {r['blame']!r}: {r['message']}"
        assert r["counterexample"] and (tmp_path / r["counterexample"]).is_file()
        with np.load(tmp_path / r["counterexample"]) as z:
            assert json.loads(str(z["meta"]))["op"] == op
    # records on disk equal the ones returned: nothing lost
    on_disk = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in on_disk] == [r["id"] for r in records]
    # every oracle that could run caught it (the bug is in the derivation, not in one oracle)
    assert {r["oracle"] for r in flagged} == {r["oracle"] for r in records if r["status"] != "skip"}


def test_planted_missing_one_over_n_is_named_a_constant_factor(tmp_path):
    op, forward, backward, _ = PLANTED["softmax-ce-missing-1/N"]
    spec = CATALOGUE[op]
    cfg = RunConfig(profile="ci", dtypes=("float64",), oracles=("torch",), report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    records = run_target_cells(spec, Target("planted", op, forward, backward), spec.inputs, ("typical",), cfg, sink)
    sink.close()
    (rec,) = records
    if rec["status"] == "skip":
        pytest.skip(rec["message"])
    assert rec["status"] == "fail" and rec["pattern"] == "constant_factor", rec["message"]
    # shrunk: the minimal counterexample needs N >= 2 for a missing 1/N to show
    assert rec["shapes"]["x"][0] == 2
