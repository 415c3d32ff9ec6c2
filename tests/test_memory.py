"""The runner keeps a bounded number of examples' arrays alive, however many examples a cell runs
(the thorough profile runs hundreds): per cell only the worst passing and the failing examples."""
import gc
import weakref

from properties import catalogue
from properties import evaluate as evaluate_module
from properties import runner
from properties.config import RunConfig
from properties.runner import run_target_cells
from properties.target import Target
from reports.records import RecordSink


def _peak_live_evaluations(monkeypatch, tmp_path, examples):
    peak, made = [0], []
    real = evaluate_module.evaluate

    def counting(*args, **kwargs):
        ev = real(*args, **kwargs)
        made.append(weakref.ref(ev))
        gc.collect()  # cheap: everything from before the run is frozen out of the collector's scan
        peak[0] = max(peak[0], sum(r() is not None for r in made))
        return ev

    monkeypatch.setattr(runner, "evaluate", counting)
    spec = catalogue.load()["affine"]
    cfg = RunConfig(profile="dev", examples=examples, oracles=("numeric",), dtypes=("float64",), report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    # In a test worker that has run a few hundred tests, a full collection scans millions of objects
    # (seconds each, once per example); frozen, they are left out and only the run's own are scanned.
    gc.collect()
    gc.freeze()
    try:
        run_target_cells(spec, Target.reference(spec), spec.inputs, ("typical",), cfg, sink)
    finally:
        gc.unfreeze()
    sink.close()
    return peak[0]


def test_live_examples_do_not_grow_with_the_example_count(monkeypatch, tmp_path):
    few = _peak_live_evaluations(monkeypatch, tmp_path / "few", 5)
    many = _peak_live_evaluations(monkeypatch, tmp_path / "many", 60)
    assert few >= 1  # the counting hook saw the runner's evaluations
    assert many <= max(few, 3), f"{many} examples alive after 60 examples vs {few} after 5"
