"""The notes of ../shared/seeds, transcribed in examples/notes/: every formula's verdict is pinned
here, as tabled (with the reasons) in examples/notes/README.md.

One audit of the folder, as a user runs it (`gradaudit audit examples/notes/`), with torch as the
requested oracle in float64; a wrong formula is triangulated against jax and finite differences
before it is blamed on the note.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "examples" / "notes"

RIGHT, WRONG, ERROR, KINK = "right", "wrong", "error", "right, kink"
# derivation (file stem . name) -> verdict; sigmoid is right except where its evaluation overflows
VERDICTS = {
    "seed_000_cs231n.matrix_rule": RIGHT,
    "seed_000_cs231n.row_affine": RIGHT,
    "seed_000_cs231n.row_sigmoid_affine": RIGHT,
    "seed_000_cs231n.dnn_output_layer": RIGHT,
    "seed_000_cs231n.dnn_output_layer_hadamard": RIGHT,
    "seed_000_cs231n.dnn_output_layer_step": WRONG,
    "seed_000_cs231n.dnn_delta_recursion": RIGHT,
    "seed_000_cs231n.affine": RIGHT,
    "seed_000_cs231n.softmax_ce": RIGHT,
    "seed_000_cs231n.rnn_output_layer": RIGHT,
    "seed_000_cs231n.rnn_hidden_jacobian": WRONG,
    "seed_000_cs231n.rnn_delta_recursion": WRONG,
    "seed_000_cs231n.rnn_weight_grads": WRONG,
    "seed_000_cs231n.rnn_step": ERROR,
    "seed_000_cs231n.rnn_step_weights": RIGHT,
    "seed_000_cs231n.lstm_dh_last": RIGHT,
    "seed_000_cs231n.lstm_dC_last": RIGHT,
    "seed_000_cs231n.lstm_dh_through_gates": WRONG,
    "seed_000_cs231n.lstm_dh_dC_factor": WRONG,
    "seed_000_cs231n.lstm_dh_forget_term": WRONG,
    "seed_000_cs231n.lstm_dh_candidate_term": WRONG,
    "seed_000_cs231n.lstm_dh_input_term": WRONG,
    "seed_000_cs231n.lstm_dh_output_term": WRONG,
    "seed_000_cs231n.lstm_dC_recursion": RIGHT,
    "seed_000_cs231n.lstm_dWf": RIGHT,
    "seed_000_cs231n.lstm_delta_h_structure": WRONG,
    "seed_000_cs231n.softmax_jacobian": RIGHT,
    "seed_000_cs231n.log_softmax_differential": RIGHT,
    "seed_000_cs231n.softmax_dW": RIGHT,
    "seed_001_backprop_cnn_rnn.back_prop": RIGHT,
    "seed_001_backprop_cnn_rnn.mlp_chain": RIGHT,
    "seed_001_backprop_cnn_rnn.max_pool_upsample": RIGHT,
    "seed_001_backprop_cnn_rnn.mean_pool_upsample": RIGHT,
    "seed_001_backprop_cnn_rnn.conv_delta_prev": RIGHT,
    "seed_001_backprop_cnn_rnn.conv_dW": WRONG,
    "seed_001_backprop_cnn_rnn.conv_db": RIGHT,
    "seed_001_backprop_cnn_rnn.rnn_dc": WRONG,
    "seed_001_backprop_cnn_rnn.rnn_dV": WRONG,
    "seed_001_backprop_cnn_rnn.rnn_dV_do": RIGHT,
    "seed_001_backprop_cnn_rnn.rnn_bptt": RIGHT,
    "seed_002_chain_rule.chain_rule_example": RIGHT,
    "seed_002_chain_rule.sigmoid_neuron": RIGHT,
    "seed_002_chain_rule.layer_rows": RIGHT,
    "seed_002_chain_rule.layer_column": RIGHT,
    "seed_002_chain_rule.layer_activation": WRONG,
    "seed_003_ops.softmax_ce": RIGHT,
    "seed_003_ops.linear": RIGHT,
    "seed_003_ops.linear_row_bias": RIGHT,
    "seed_003_ops.linear_layer_bias": ERROR,
    "seed_003_ops.dropout": RIGHT,
    "seed_003_ops.sigmoid": {"typical": "pass", "large": "pass", "overflow": "fail"},  # float64
    "seed_003_ops.sigmoid_symmetric": RIGHT,
    "seed_004_backprop_intuitions.add_gate": RIGHT,
    "seed_004_backprop_intuitions.max_gate": KINK,
    "seed_004_backprop_intuitions.multiply_gate": RIGHT,
    "seed_004_backprop_intuitions.sigmoid_gate": RIGHT,
    "seed_004_backprop_intuitions.scores": RIGHT,
    "seed_004_backprop_intuitions.two_layer_net": KINK,
    "seed_004_backprop_intuitions.relu": KINK,
}
STATUSES = {RIGHT: {"pass"}, WRONG: {"fail"}, ERROR: {"error"}, KINK: {"pass", "kink"}}


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    report = tmp_path_factory.mktemp("notes")
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(NOTES), "--report", str(report),
                        "--profile", "ci", "--oracles", "torch", "--dtypes", "float64"],
                       capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, "CI": "1"})
    r.records = [json.loads(x) for x in (report / "results.jsonl").read_text().splitlines()]
    r.report = report
    return r


def _cells(notes, derivation):
    return [r for r in notes.records if r["op"] == derivation]


pytestmark = pytest.mark.xdist_group("notes")


def test_every_derivation_of_the_notes_is_audited_and_pinned(notes):
    assert {r["op"] for r in notes.records} == set(VERDICTS)
    assert notes.returncode == 1  # the notes contain wrong formulas
    assert "Traceback" not in notes.stdout + notes.stderr


@pytest.mark.parametrize("derivation", sorted(VERDICTS))
def test_verdict(notes, derivation):
    cells = _cells(notes, derivation)
    want = VERDICTS[derivation]
    assert cells, derivation
    if isinstance(want, dict):
        assert {r["regime"]: r["status"] for r in cells} == want
        bad = [r for r in cells if r["status"] == "fail"]
        assert all(r["kind"] == "nonfinite" and r["blame"] == "reference" for r in bad), bad
        return
    statuses = {r["status"] for r in cells}
    assert statuses <= STATUSES[want], [(r["regime"], r["status"], r["message"]) for r in cells]
    for r in cells:
        if r["status"] in ("fail", "error"):
            assert r["blame"] == "reference", (r["id"], r["blame"], r["message"])
            assert r["counterexample"] and (notes.report / r["counterexample"]).is_file()
            assert r["source"].startswith("seed 0"), r["source"]


def test_the_readme_tables_every_derivation_with_the_pinned_verdict():
    text = (NOTES / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| [^|]+ \| `(\w+)`[^|]* \|[^|]*\| ([^|]+) \|", line)
        if m:
            rows.setdefault(m.group(1), []).append(m.group(2).strip())
    for derivation, want in VERDICTS.items():
        name = derivation.split(".", 1)[1]
        assert name in rows, f"{name} is not in examples/notes/README.md"
        shown = " / ".join(rows[name])
        if isinstance(want, dict):
            assert "✓" in shown and "✗" in shown, (name, shown)
        elif want == WRONG:
            assert "✗" in shown, (name, shown)
        elif want == ERROR:
            assert "error" in shown, (name, shown)
        else:
            assert "✓" in shown and "✗" not in shown, (name, shown)


def test_a_notes_counterexample_replays(notes):
    rec = next(r for r in notes.records if r["op"] == "seed_000_cs231n.rnn_hidden_jacobian")
    r = subprocess.run([sys.executable, "-m", "gradaudit", "replay", rec["id"], "--report", str(notes.report)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "grad[h_prev]" in r.stdout, r.stdout + r.stderr
