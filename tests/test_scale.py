"""Scale beyond one process: `--shard i/n` partitions the cells exactly, `gradaudit report` merges the
shards' results, and `--example-db redis://...` shares Hypothesis's example database between shards, so
that a failure found by one shard's run replays first on another's.

The Redis test runs a real `redis-server` (Debian package `redis-server`) that it starts itself on a free
loopback port and stops; it is skipped, with the reason, where the server or the `redis` package is missing.
No timing assertions here: performance is measured by benchmarks/bench.py.
"""
import json
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import reference_impl as ref
from gradaudit.cli import build_parser, config_from_args, main

# a few ops with small bounded shape sets (few JAX compiles), both dtypes: 8 (op, dtype) jobs,
# which 3 shards split unevenly (3, 3, 2)
ROOT = Path(__file__).resolve().parents[1]
OPS = "sigmoid_neuron,softmax,rnn_step,mlp_sigmoid_mse"


def _ids(report_dir: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (report_dir / "results.jsonl").read_text().splitlines()]


def test_shards_partition_the_cells_and_report_merges_them(tmp_path, capsys):
    common = ["run", "--ops", OPS, "--profile", "ci", "--examples", "2", "--json"]
    assert main([*common, "--report", str(tmp_path / "all")]) == 0
    everything = _ids(tmp_path / "all")
    assert len(everything) == len(set(everything)) > 0

    shards = []
    for i in (1, 2, 3):
        d = tmp_path / f"shard{i}"
        assert main([*common, "--shard", f"{i}/3", "--report", str(d)]) == 0
        shards.append(_ids(d))
        assert json.loads((d / "run.json").read_text())["shard"] == f"{i}/3"
    assert all(shards), f"an empty shard: {[len(s) for s in shards]}"
    union = [cid for s in shards for cid in s]
    assert len(union) == len(set(union)), "a cell ran on two shards"
    assert set(union) == set(everything), (set(union) ^ set(everything))
    # deterministic: the same shard gets the same cells again
    assert main([*common, "--shard", "2/3", "--report", str(tmp_path / "again")]) == 0
    assert _ids(tmp_path / "again") == shards[1]

    # `gradaudit report` merges the shards' results into one report with every cell once
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["report", *(str(tmp_path / f"shard{i}" / "results.jsonl") for i in (1, 2, 3)),
                 "--report", str(merged), "--junit", str(merged / "junit.xml")]) == 0
    cases = ET.parse(merged / "junit.xml").getroot().iter("testcase")
    merged_ids = [f"{c.get('classname')}-{c.get('name')}" for c in cases]
    assert sorted(merged_ids) == sorted(everything)
    assert (merged / "index.html").is_file()


# --- a shared Redis example database ------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    redis = pytest.importorskip("redis", reason="the redis Python package is not installed (pip install 'redis>=5')")
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.skip(f"redis-server exited at start (code {proc.returncode})")
                time.sleep(0.05)
        else:
            pytest.skip("redis-server did not answer within 5 s")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def affine_backward_wrong_for_three(dout, cache):
    """A derivation that is right except for batches of exactly 3 (db averaged there): Hypothesis
    needs a few examples to meet it (its first example has batch 1), so where it is met first tells
    whether it came from the database."""
    dx, dw, db = ref.affine_backward(dout, cache)
    return dx, dw, (dout.mean(axis=0) if dout.shape[0] == 3 else db)


def _planted_job(sink, cfg, done=()):
    from properties import catalogue
    from properties.runner import run_target_cells
    from properties.target import Target

    spec = catalogue.load()["affine"]
    target = Target("affine_backward_wrong_for_three", "affine", ref.affine_forward, affine_backward_wrong_for_three)
    return run_target_cells(spec, target, spec.inputs, ("typical",), cfg, sink, done=done)


def _other_job(sink, cfg, done=()):
    from properties.session import catalogue_jobs

    (_, job), = catalogue_jobs(["sigmoid_neuron"], ["float64"])
    return job(sink, cfg, done)


def _run_shard(jobs, shard, db, report_dir):
    """`gradaudit run`'s session (sharding, example database, records) over our own jobs. No --seed:
    Hypothesis runs a seeded test without its database (`@seed` sets database=None), and neither
    does the ci profile use one (derandomized, database=None): the campaign uses dev or thorough."""
    from gradaudit.cli import parse_shard
    from properties.session import run_session

    args = build_parser().parse_args(
        ["run", "--profile", "dev", "--examples", "60", "--dtypes", "float64",
         "--oracles", "torch,numeric", "--example-db", db, "--shard", shard, "--report", str(report_dir), "--json"])
    run_session(config_from_args(args), jobs, shard=parse_shard(args.shard), what=["affine"])
    recs = [json.loads(line) for line in (report_dir / "results.jsonl").read_text().splitlines()]
    return [r for r in recs if r["target"] == "affine_backward_wrong_for_three"]


def test_a_failure_found_on_one_shard_replays_first_on_another(redis_url, tmp_path, capsys):
    import redis

    shared = f"{redis_url}/0"
    # shard 1 of 2 runs the planted target (first job of two) and finds the failure after some examples
    first = _run_shard([("planted", _planted_job), ("other", _other_job)], "1/2", shared, tmp_path / "a")
    assert first and all(r["status"] == "fail" for r in first), [r["status"] for r in first]
    found_after = first[0]["examples"]
    assert found_after > 1, "the generator met the bug on its first example: replay could not be told apart"
    assert first[0]["shapes"]["x"][0] == 3
    keys = redis.Redis.from_url(shared).keys(b"*gradaudit/affine_backward_wrong_for_three/typical/float64*")
    assert keys, "nothing saved in Redis under the group's database key"

    # on another shard (the job lists reshuffled, as when the catalogue grows; another process, as on
    # another CI runner) the saved failure is replayed before anything is generated: it fails first
    second = _run_shard([("other", _other_job), ("planted", _planted_job)], "2/2", shared, tmp_path / "b")
    assert second and all(r["status"] == "fail" for r in second)
    assert second[0]["examples"] == 1, second[0]["examples"]
    assert second[0]["shapes"] == first[0]["shapes"]
    a = np.load(tmp_path / "a" / first[0]["counterexample"])
    b = np.load(tmp_path / "b" / second[0]["counterexample"])
    assert all(np.array_equal(a[k], b[k]) for k in a.files if k.startswith("input/"))

    # control: the same run against an empty database has to search for it again
    control = _run_shard([("other", _other_job), ("planted", _planted_job)], "2/2", f"{redis_url}/1", tmp_path / "c")
    assert control and control[0]["status"] == "fail" and control[0]["examples"] > 1


def test_a_seeded_run_draws_the_same_cases_whatever_modules_the_process_imported(tmp_path):
    """Hypothesis mixes float constants read from the source of local modules into its draws, so a
    process that imported other modules (a worker, a resumed run, a wrapper script, a user's file)
    drew other cases under the same --seed: properties.config.module_independent_draws."""
    (tmp_path / "odd_constants.py").write_text(
        "VALUES = [" + ", ".join(repr(v) for v in (0.1234567, -7.5e-3, 3.0e2, 1e-300, 2.5, -0.75, 17.0, 6.02e23))
        + "]\n")
    args = ["run", "--ops", "affine,sigmoid", "--oracles", "numeric", "--dtypes", "float64", "--profile", "ci",
            "--seed", "5", "--quiet", "--workers", "1", "--report"]
    plain = subprocess.run([sys.executable, "-m", "gradaudit", *args, str(tmp_path / "plain")],
                           capture_output=True, text=True, cwd=ROOT)
    wrapped = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import odd_constants; "
                              "from gradaudit.cli import main; sys.exit(main(sys.argv[2:]))", str(tmp_path), *args,
                              str(tmp_path / "wrapped")], capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == wrapped.returncode == 0, plain.stderr + wrapped.stderr

    def cells(d):
        recs = [json.loads(x) for x in (tmp_path / d / "results.jsonl").read_text().splitlines()]
        return {r["id"]: {k: v for k, v in r.items() if k != "seconds"} for r in recs}

    assert cells("plain") == cells("wrapped")
