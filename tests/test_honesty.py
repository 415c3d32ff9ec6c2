"""The harness's own honesty check: every planted wrong derivation is flagged, with blame on the
derivation and a minimal counterexample on disk, in the (derandomized) ci profile."""
import json

import numpy as np
import pytest

from planted import HW_SWAPS, NAIVE, PLANTED
from properties import catalogue
from properties.catalogue.conv import hidden_swaps
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
    if "in place" in what:
        # right values written into the caller's dout (#12): a hazard, flagged as a warning on every cell
        # that ran, never a pass without it
        ran = [r for r in records if r["status"] in ("pass", "fail")]
        assert ran and all(r["severity"] == "warning" and any(h["kind"] == "mutation" for h in r["hazards"])
                           for r in ran), f"planted bug {name!r} ({what}) was not flagged: {ran}"
        return
    flagged = [r for r in records if r["status"] in ("fail", "error")]
    assert flagged, f"planted bug {name!r} ({what}) was not flagged: {[r['status'] for r in records]}"
    for r in flagged:
        # A forward whose output has the wrong shape hands each framework an upstream gradient of that
        # shape, and the framework raises ("Mismatch in shape"): flagged, but as the oracle's error
        # until a wrong output shape is named the target's own (issue 12, "forward before backward").
        shape_error = r["status"] == "error" and " forward: " in name and "shape" in r["message"]
        assert r["blame"] == "reference" or shape_error, f"{name}: {r['id']} blamed {r['blame']!r}: {r['message']}"
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


# ---- height/width swaps in naive conv and pooling code (issue 12) ---------------------------------

def test_naive_loop_implementations_pass(tmp_path):
    """The unswapped student-style implementations the swaps below start from pass: a flagged swap
    is the swap's doing."""
    for op, make in NAIVE.items():
        forward, backward = make()
        spec = CATALOGUE[op]
        cfg = RunConfig(profile="ci", dtypes=("float64",), report_dir=tmp_path / op)
        sink = RecordSink(tmp_path / f"{op}.jsonl")
        records = run_target_cells(spec, Target(backward.__name__, op, forward, backward), spec.inputs,
                                   spec.regimes, cfg, sink)
        sink.close()
        assert all(r["status"] in ("pass", "kink") for r in records), [(r["id"], r["message"]) for r in records]


@pytest.mark.parametrize("name", sorted(HW_SWAPS))
def test_height_width_swap_is_flagged(name, tmp_path):
    """Every swap of height and width in a size formula, a loop bound, a window or a crop is flagged
    in the ci profile: its geometries give a different size for each swap (conv.hidden_swaps).
    A swap in the forward is the frameworks' finding (they compare forwards; finite differences
    differentiate the swapped forward itself), so those run against torch and JAX."""
    op, forward, backward, what = HW_SWAPS[name]
    spec = CATALOGUE[op]
    sides = ("torch", "jax") if " forward: " in name else ("torch", "jax", "numeric")
    cfg = RunConfig(profile="ci", dtypes=("float64",), oracles=sides, report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    records = run_target_cells(spec, Target(backward.__name__, op, forward, backward), spec.inputs, spec.regimes,
                               cfg, sink)
    sink.close()
    ran = {r["oracle"] for r in records if r["status"] != "skip"}
    if not ran:
        pytest.skip("no oracle could run here")
    flagged = [r for r in records if r["status"] in ("fail", "error")]
    assert flagged, f"{name} ({what}) was not flagged: {[(r['id'], r['status']) for r in records]}"
    assert {r["oracle"] for r in flagged} == ran, [(r["id"], r["status"]) for r in records]
    for r in flagged:
        # A forward whose output has the wrong shape hands each framework an upstream gradient of that
        # shape, and the framework raises ("Mismatch in shape"): flagged, but as the oracle's error
        # until a wrong output shape is named the target's own (issue 12, "forward before backward").
        shape_error = r["status"] == "error" and " forward: " in name and "shape" in r["message"]
        assert r["blame"] == "reference" or shape_error, f"{name}: {r['id']} blamed {r['blame']!r}: {r['message']}"


def test_hidden_swaps_names_what_the_floor_division_absorbs():
    # the rich conv geometry before issue 12: W' = 2 from either kernel size, so a swap passed
    assert hidden_swaps(6, 3, 3, 2, stride=2, pad=1) == ["W' from the kernel height"]
    assert hidden_swaps(6, 2, 3, 2, stride=2, pad=1) == []
    assert hidden_swaps(4, 4, 2, 2, stride=1, pad=0) == [
        "H' from W", "H' from the kernel width", "H' from W and the kernel width (= W')", "W' from H",
        "W' from the kernel height", "W' from H and the kernel height (= H')", "H = W", "HH = WW"]
