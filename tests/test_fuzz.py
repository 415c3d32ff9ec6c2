"""`gradaudit fuzz` (#19): a batch of value sets gets, on every value set, the verdict `evaluate` gives it
alone; the planted wrong derivations are found within a second of fuzzing; the command writes ordinary
records (replayable findings) and the rates."""
import json
import time

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from gradaudit.cli import main
from oracles.base import as_tuple
from planted import PLANTED
from properties import catalogue, strategies, tolerances
from properties.config import RunConfig
from properties.fuzz import DISTINCT_FIRST, REPEATS_IN_A_ROW, FuzzGroup, fuzz_target_cells
from properties.fuzz_batch import BATCH_SAFE, MARGIN, BatchCheck, draw_value_sets, floors
from properties.session import prepare_process
from properties.target import Target
from reports.records import RecordSink

CATALOGUE = catalogue.load()
SIDES = [("torch", "cpu"), ("jax", "cpu"), ("numeric", "cpu")]


@pytest.fixture(scope="module", autouse=True)
def _process():
    prepare_process()  # one torch thread, the JAX compile cache: as `gradaudit fuzz` runs


def _structures(spec, regime, n):
    """n derandomized cases of the op (and the regime and scale each array was drawn from)."""
    got = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate])
    @given(st.data())
    def collect(data):
        with strategies.origins() as seen:
            case = data.draw(spec.inputs(regime, "full"))
        got.append((case, {k: (r, s) for k, a in case.arrays.items() for arr, r, s in seen if arr is a}))

    collect()
    return got


def _nudged(op, factor):
    """The reference with every gradient scaled by `factor`: a derivation off by ~the tolerance, so that
    some value sets pass and others fail by a hair."""
    spec = CATALOGUE[op]

    def backward(*args):
        grads = spec.backward(*args)
        return tuple(g * factor for g in grads) if isinstance(grads, tuple) else grads * factor

    return Target("nudged", op, spec.forward, backward)


CASES = [  # (target, regime, dtype)
    ("affine", "typical", "float64"), ("affine", "typical", "float32"), ("relu", "kinks", "float64"),
    ("softmax", "large", "float32"), ("softmax_cross_entropy", "overflow", "float64"), ("lstm", "typical", "float64"),
    ("max_pool2d", "kinks", "float64"), ("conv2d", "typical", "float64"), ("rnn", "typical", "float32"),
    ("nudged affine", "typical", "float64"),
    ("affine-wrong-sign", "typical", "float64"), ("softmax-ce-no-max-shift", "overflow", "float64"),
    ("relu-mutates-dout", "typical", "float64"), ("affine-transposed-weight", "typical", "float64"),
    ("softmax-ce-missing-1/N", "typical", "float32"),
]


@pytest.mark.parametrize("name,regime,dtype", CASES)
def test_batched_verdict_is_the_per_example_verdict(name, regime, dtype):
    """Every value set the batch passes, `evaluate` passes alone, and the batch's error ratios are
    compare's (to well within MARGIN); every other value set is `evaluate`'s by construction."""
    if name in PLANTED:
        op, forward, backward, _ = PLANTED[name]
        target = Target(backward.__name__, op, forward, backward)
    elif name.startswith("nudged"):
        op = name.split()[1]
        target = _nudged(op, 1 + 1e-13)  # ratios ~1.7 on one case, 0.7-0.9 on the other: around MARGIN and 1
    else:
        op, target = name, Target.reference(CATALOGUE[name])
    spec = CATALOGUE[op]
    check = BatchCheck(spec, target, dtype, SIDES)
    judged = exact_fails = hazards = 0
    for i, (case, origins) in enumerate(_structures(spec, regime, 2)):
        sets = draw_value_sets(case, origins, 7, i, 8)
        ratios = check.screened(sets)
        for vs, row in zip(sets, ratios):
            ev = check.exact(vs)
            alone = {s: ev.sides[s].status for s in SIDES}
            exact_fails += "fail" in alone.values()
            hazards += bool(ev.hazards)
            if not (row <= MARGIN).all():
                continue  # the batch hands it to evaluate: its verdict is that one
            judged += 1
            assert set(alone.values()) == {"pass"} and not ev.hazards, (vs.case.summary(), alone, row, ev.hazards)
            for j, s in enumerate(SIDES):
                exact = max(c.ratio for c in ev.sides[s].judged.values())
                assert abs(row[j] - exact) < 0.05, (s, row[j], exact)
    if name in CATALOGUE:
        assert judged > 0  # the batch itself judged value sets (not all handed to evaluate)
    elif name == "relu-mutates-dout":  # a write into dout (where x <= 0): evaluate's to name
        assert hazards > 0
    else:
        assert judged < len(sets) * 2 and exact_fails, (judged, exact_fails)


def test_stacked_references_are_the_per_point_references():
    """BATCH_SAFE: a reference called on many points at once (a new leading axis, or rows concatenated)
    gives each point's output, and its backward each point's gradients, bit for bit."""
    rng = np.random.default_rng(0)
    assert {"affine", "softmax_cross_entropy", "conv2d", "rnn", "lstm"} <= set(BATCH_SAFE)
    for op, how in BATCH_SAFE.items():
        spec = CATALOGUE[op]
        (case, _), = _structures(spec, "typical", 1)
        shapes = {n: a.shape for n, a in case.arrays.items()}
        if how == "rows" and any(len(s) == 0 for s in shapes.values()):
            continue
        points = [{n: rng.standard_normal(s) for n, s in shapes.items()} for _ in range(5)]
        each = [spec.forward(*p.values(), **case.params) for p in points]
        douts = [rng.standard_normal(np.shape(out)) for out, _ in each]
        each_grads = [as_tuple(spec.backward(d, cache)) for d, (_, cache) in zip(douts, each)]
        join = np.stack if how == "stack" else np.concatenate
        together, cache = spec.forward(*(join([p[n] for p in points]) for n in shapes), **case.params)
        grads = as_tuple(spec.backward(join(douts), cache))
        np.testing.assert_array_equal(np.reshape(together, (5, *np.shape(each[0][0]))),
                                      np.stack([out for out, _ in each]), err_msg=op)
        for q, name in enumerate(shapes):
            np.testing.assert_array_equal(grads[q].reshape((5, *shapes[name])), np.stack([g[q] for g in each_grads]),
                                          err_msg=f"{op} d{name}")


def test_batched_tolerances_are_the_policy():
    rng = np.random.default_rng(1)
    for dtype in ("float64", "float32"):
        for oracle in ("torch", "numeric"):
            for forward in (False, True):
                rtol = tolerances.policy(dtype, size=17, oracle=oracle, forward=forward).rtol
                for _ in range(20):
                    input_max, dout_max, noise = 10 ** rng.uniform(-3, 3, size=3)
                    noise *= 1e-12
                    natural = max(input_max, 1.0) * (1.0 if forward else max(dout_max, 1e-30))
                    pol = tolerances.policy(dtype, size=17, oracle=oracle, forward=forward, input_max=input_max,
                                            dout_max=dout_max, noise=0.0 if forward else noise)
                    assert pol.rtol == rtol
                    assert float(floors(rtol, np.array([natural]), 0.0 if forward else noise)[0]) == pol.floor


# a group's fuzzing budget here: one second of this process's CPU time, doubled (a test is no stopwatch:
# the wall times to find, 0.05-0.7 s here, are measured by `bench.py --fuzz --planted`); counted in wall
# time, the other tests of a loaded 2-core run ate into it and a planted bug went unfound once
def test_a_group_tries_other_structures_before_repeating_one():
    """Hypothesis proposes the simplest structure again and again; a group's first batches are of
    distinct structures, until REPEATS_IN_A_ROW proposals in a row were repeats (its structures all
    seen) or DISTINCT_FIRST were batched; then it batches repeats again."""
    spec = CATALOGUE["conv2d"]
    group = FuzzGroup(spec, Target.reference(spec), "float64", "typical", RunConfig(profile="dev", dtypes=("float64",)))
    (a, _), (b, _) = _structures(spec, "typical", 2)
    assert a.shapes() != b.shapes()
    other_values = type(a)({n: x + 1 for n, x in a.arrays.items()}, dict(a.params))
    assert [group._repeated(c) for c in (a, other_values, b, a)] == [False, True, False, True]
    stride = type(b)(b.arrays, {**b.params, "stride": b.params["stride"] + 1})
    assert not group._repeated(stride)  # params are structure too
    assert [group._repeated(a) for _ in range(REPEATS_IN_A_ROW)] == [True] * (REPEATS_IN_A_ROW - 1) + [False]
    assert not group._repeated(b) and not group._repeated(a)  # all seen: repeats are batched again
    fresh = FuzzGroup(spec, Target.reference(spec), "float64", "typical", RunConfig(profile="dev", dtypes=("float64",)))
    shapes = [type(a)(a.arrays, {**a.params, "stride": k}) for k in range(1, DISTINCT_FIRST + 1)]
    assert not any(fresh._repeated(c) for c in shapes) and not fresh._repeated(a)  # DISTINCT_FIRST batched


BUDGET = 2.0
RECORDED = ("affine-wrong-sign", "softmax-ce-no-max-shift", "conv-overlaps-overwrite")  # findings written out


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_is_found_within_a_second_of_fuzzing(name, tmp_path):
    """The honesty check in fuzz mode: each planted wrong derivation fails (or, written in place with the
    right values, is a mutation warning) within a fuzzing budget of about a second per group (the
    search starts no new round after it), and the finding is an ordinary record with a saved case. How long
    each takes is measured by `python benchmarks/bench.py --fuzz --planted` (docs/performance.md)."""
    op, forward, backward, what = PLANTED[name]
    spec = CATALOGUE[op]
    target = Target(backward.__name__, op, forward, backward)
    cfg = RunConfig(profile="dev", dtypes=("float64",), report_dir=tmp_path, seed=1, examples=5)
    for regime in spec.regimes:
        group = FuzzGroup(spec, target, "float64", regime, cfg)
        group.run(BUDGET, clock=time.process_time)
        if "in place" in what:
            assert group.verified and any("writes into dout" in h for h in group.hazards), name
            records = [r for r, _ in group.records()]
            assert all(r["severity"] == "warning" for r in records if r["status"] in ("pass", "kink")), records
            return
        if group.finding is not None:
            break
    assert group.finding is not None, f"{name} ({what}) not found within any regime's budget"
    if name not in RECORDED:
        return
    sink = RecordSink(tmp_path / "results.jsonl")
    records = fuzz_target_cells(spec, target, cfg, sink, seconds=1.0, regimes=(regime,))
    sink.close()
    flagged = [r for r in records if r["status"] in ("fail", "error")]
    assert flagged and all(r["blame"] == "reference" for r in flagged), [(r["id"], r["message"]) for r in records]
    assert all((tmp_path / r["counterexample"]).is_file() and r["replay"] for r in flagged)


def test_fuzz_command_writes_records_and_rates(tmp_path, capsys):
    report = tmp_path / "r"
    code = main(["fuzz", "--ops", "relu,softmax", "--seconds", "2", "--dtypes", "float64", "--seed", "3",
                 "--report", str(report), "-q"])
    assert code == 0, capsys.readouterr()
    records = [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines()]
    assert {(r["op"], r["regime"]) for r in records} == {("relu", "typical"), ("relu", "kinks"), ("softmax", "typical"),
                                                          ("softmax", "large"), ("softmax", "overflow")}
    assert all(r["status"] in ("pass", "kink") and r["examples"] > 1 for r in records), records
    rates = json.loads((report / "fuzz.json").read_text())["rates"]
    assert set(rates) == {"relu", "softmax"} and all(r["per_s"] > 0 for r in rates.values())
    assert "verified inputs per second" in capsys.readouterr().err
    assert main(["fuzz", "--seconds", "0", "--report", str(tmp_path / "x")]) == 2


def test_a_finding_replays_first_in_the_next_campaign(tmp_path):
    """The example database (a directory here; Redis for shards) keeps a campaign's failing example: the
    next campaign on that group replays it before generating anything."""
    op, forward, backward, _ = PLANTED["affine-db-mean"]
    spec = CATALOGUE[op]
    target = Target(backward.__name__, op, forward, backward)
    cfg = RunConfig(profile="dev", dtypes=("float64",), report_dir=tmp_path, database=str(tmp_path / "db"))
    first = FuzzGroup(spec, target, "float64", "typical", cfg)
    first.run(2.0)
    assert first.finding is not None
    again = FuzzGroup(spec, target, "float64", "typical", cfg)
    again.run(2.0)
    assert again.finding is not None and again.examples == 1, again.examples
    assert again.finding[0].case.summary() == first.finding[0].case.summary()
