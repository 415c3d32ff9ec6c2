"""The audit child runs ahead of the judge (gradaudit/_ahead.py): with a derivation's forward, the
judge sends what it will ask next, and the child answers the backward, the second call under another
random stream, its backward and the frameworks' VJPs as frames of their own, each used only as the
reply to the very request the judge would have sent.

What must hold: the same answers bit for bit as separate requests (the notes' functions, and code
that raises, writes in place or draws from np.random), the same blame (which function raised, its
traceback), and frames that break the row are an `error` on the function, never a pass, never a
traceback of the judge.
"""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "examples" / "notes"
SIDES = [("torch", "cpu"), ("jax", "cpu"), ("numeric", "cpu")]

ODD = """
import numpy as np
import gradaudit

@gradaudit.derivation
def writes(xp, x: ("N",), w: ("N",)):
    return x * w

@writes.backward
def writes_backward(dout, x, w):
    gx, gw = dout * w, dout * x
    dout *= 2  # into its upstream gradient
    x += 1  # into an input
    return gx, gw

@gradaudit.derivation
def raises(xp, x: ("N",)):
    return x * 2

@raises.backward
def raises_backward(dout, x):
    return helper_that_does_not_exist(dout)

@gradaudit.derivation
def forward_raises(xp, x: ("N",)):
    raise ValueError("no forward today")

@forward_raises.backward
def forward_raises_backward(dout, x):
    return dout

@gradaudit.derivation
def draws(xp, x: ("N",)):
    return x * (1.0 + 0.0 * np.random.rand())

@draws.backward
def draws_backward(dout, x):
    return dout * np.random.rand()  # another gradient under another random stream

@gradaudit.derivation
def listed(xp, x: ("N",)):
    return [x * 2, x * x]  # a list: the judge hands a tuple on

@listed.backward
def listed_backward(d0, d1, x, out):
    return 2 * d0 + 2 * x * d1
"""


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    from gradaudit._proxy import InChild
    from gradaudit._remote import Child, Source
    from gradaudit._sandbox import Confinement

    odd = tmp_path_factory.mktemp("odd") / "odd.py"
    odd.write_text(ODD)
    files = [NOTES / "seed_003_ops.py", NOTES / "seed_002_chain_rule.py", odd]
    sources = [Source(f"m{i}", str(f), f.read_bytes(), f"_ahead_{f.stem}") for i, f in enumerate(files)]
    with Child(Confinement(timeout=60, frameworks=("torch", "jax")), sources, verbose=True) as child:
        child.ensure()
        yield InChild(child)


def _jobs(code, key):
    from gradaudit.audit import plan

    src = next(s for s in code.child.sources if s.key == key)
    return [j for j in plan(code.describe(key), src.path, key, None, in_process=False)[0] if not j.skip]


def _case(inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inputs("typical", "narrow").example()


def _evaluate(code, built, case, dtype, monkeypatch, *, ahead: bool, **kw):
    """evaluate(...) of a built job (gradaudit.audit.build) with the child running ahead or not; the
    requests it took, by kind."""
    import properties.execute
    from properties.evaluate import evaluate

    spec, target, _, _ = built
    sent = []
    plain = type(code.child)._send

    def send(child, meta, data=b"", **k):
        sent.append(meta["kind"])
        return plain(child, meta, data, **k)

    with monkeypatch.context() as m:
        m.setattr(type(code.child), "_send", send)
        if not ahead:
            m.setattr(properties.execute, "take_plan", lambda: None)
        ev = evaluate(spec, target, case, dtype, SIDES, stream=12345, **kw)
    return ev, sent


def _same(a, b):
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    return a == b


def _assert_same(ahead, alone):
    assert ahead.error == alone.error and ahead.backward_error == alone.backward_error
    assert _same(ahead.out, alone.out) and _same(ahead.grads, alone.grads) and _same(ahead.douts, alone.douts)
    assert ahead.mutated == alone.mutated
    assert [(h.kind, h.message) for h in ahead.hazards] == [(h.kind, h.message) for h in alone.hazards]
    assert ahead.sides.keys() == alone.sides.keys()
    for s, v in ahead.sides.items():
        w = alone.sides[s]
        assert (v.status, v.kind, v.phase, v.fault, v.pattern) == (w.status, w.kind, w.phase, w.fault, w.pattern), s
        if v.result is not None and s[0] != "numeric":  # the frameworks' answers, computed in the child
            assert _same(v.result.out, w.result.out) and _same(v.result.grads, w.result.grads), s


@pytest.mark.parametrize("key", ["m0", "m1"])
def test_run_ahead_answers_the_notes_as_separate_requests_do(code, key, monkeypatch):
    jobs = _jobs(code, key)
    assert len(jobs) >= 4
    for job in jobs:
        from gradaudit.audit import build

        built = build(job, code, {})
        for dtype in ("float64", "float32"):
            case = _case(built[2])
            _evaluate(code, built, case, dtype, monkeypatch, ahead=False, dout_seed=7)  # (a tolerance's probes)
            ahead, sent = _evaluate(code, built, case, dtype, monkeypatch, ahead=True, dout_seed=7)
            alone, sent_alone = _evaluate(code, built, case, dtype, monkeypatch, ahead=False, dout_seed=7)
            _assert_same(ahead, alone)
            # forward, backward, both again, torch, JAX (and in float32 the finite differences' forward
            # at the float64 point): one request instead of six (seven)
            assert sent_alone.count("call") >= 4 and sent_alone.count("vjp") == 2, (job.name, sent_alone)
            if ahead.error is None and ahead.backward_error is None:
                ahead_calls = 3 + (dtype == "float32")
                assert sent.count("vjp") == 0 and sent.count("call") == sent_alone.count("call") - ahead_calls, \
                    (job.name, sent, sent_alone)


def test_given_upstream_gradients_are_run_ahead_too(code, monkeypatch):
    """blame and stability evaluate again with the upstream gradient of the first evaluation."""
    from gradaudit.audit import build

    built = build(_jobs(code, "m0")[0], code, {})
    case = _case(built[2])
    douts = _evaluate(code, built, case, "float64", monkeypatch, ahead=False, dout_seed=3)[0].douts
    ahead, sent = _evaluate(code, built, case, "float64", monkeypatch, ahead=True, douts=douts)
    alone, _ = _evaluate(code, built, case, "float64", monkeypatch, ahead=False, douts=douts)
    _assert_same(ahead, alone)
    assert _same(ahead.douts, douts) and sent.count("vjp") == 0


@pytest.mark.parametrize("name", ["writes", "raises", "forward_raises", "draws", "listed"])
def test_odd_code_run_ahead_is_judged_as_in_separate_requests(code, name, monkeypatch, capfd):
    from gradaudit.audit import build

    built = build(next(j for j in _jobs(code, "m2") if j.name == name), code, {})
    case = _case(built[2])
    _evaluate(code, built, case, "float32", monkeypatch, ahead=False, dout_seed=5)  # (a tolerance's probes)
    capfd.readouterr()
    code.child._shown.clear()  # --verbose shows a function's traceback once: again here
    ahead, sent = _evaluate(code, built, case, "float64", monkeypatch, ahead=True, dout_seed=5)
    alone, _ = _evaluate(code, built, case, "float64", monkeypatch, ahead=False, dout_seed=5)
    _assert_same(ahead, alone)
    if name == "writes":  # the in-place writes of a backward that ran ahead reach the judge's arrays
        assert any(h.kind == "mutation" and "dout" in h.message and "x" in h.message for h in ahead.hazards), ahead.hazards
        assert sent.count("call") == 1, (sent, case)
    elif name == "raises":  # blamed on the backward, with its own traceback
        assert ahead.error is None and ahead.backward_error.startswith("raises_backward raised NameError")
        assert sent.count("call") == 1
    elif name == "forward_raises":
        assert "forward_raises" in ahead.error and "no forward today" in ahead.error and ahead.backward_error is None
    elif name == "draws":  # nondeterminism: the second call's other stream, run ahead
        assert any(h.kind == "nondeterminism" for h in ahead.hazards), ahead.hazards
    elif name == "listed":  # the backward's out= is the tuple the judge hands on: still answered ahead
        assert sent.count("call") == 1 and ahead.backward_error is None
    if name in ("raises", "forward_raises"):
        err = capfd.readouterr().err
        fn = "raises_backward" if name == "raises" else "forward_raises"
        assert f"--- traceback from {fn} ---" in err and ("helper_that_does_not_exist" if name == "raises"
                                                          else "no forward today") in err


def test_frames_the_judge_does_not_use_are_dropped_and_the_random_state_rewound(code):
    """A request other than the one the child foresaw (here a backward with another upstream
    gradient) is asked afresh: the frames still to come are read and dropped, and the child's random
    generators are rewound to before the first unused one, so that the call sees the stream it would
    have seen without them."""
    import properties.execute as E
    from gradaudit.audit import build

    job = next(j for j in _jobs(code, "m2") if j.name == "draws")
    _, target, _, _ = build(job, code, {})
    x = np.linspace(0.5, 1.5, 3)

    def forward_then_backward(ahead: bool):
        with E._global_stream(77):
            if ahead:
                E._RUN.plan = E.RunPlan("float64", ("x",), 0, None, True, None, (("torch", "cpu"),))
            _, cache = target.forward(x.copy())
            assert (code.child.ahead is not None) == ahead
            return target.backward(np.full(3, 3.0), cache)  # not the upstream gradient of dout_seed 0

    ahead, alone = forward_then_backward(True), forward_then_backward(False)
    assert code.child.ahead is None and _same(ahead, alone)


def test_many_points_cross_as_one_array_per_argument(code, monkeypatch):
    """call_many (the finite differences' points): the same results as the points one by one."""
    from gradaudit import _protocol as wire
    from gradaudit._remote import RemoteFunction

    fn = RemoteFunction(code.child, "m2", "writes", "forward", label="writes", namespace_first=True)
    params, x, w = {}, np.arange(3.0), np.linspace(0, 1, 3)
    points = [((x + i, w * i), params) for i in range(5)]
    sent, plain = [], type(code.child)._send
    monkeypatch.setattr(type(code.child), "_send", lambda c, meta, *a, **k: (sent.append(meta), plain(c, meta, *a, **k))[1])
    stacked = fn.many(points)
    monkeypatch.setattr(wire, "stacked", lambda calls: None)
    alone = fn.many(points)
    assert "stacked" in sent[0] and "calls" in sent[1] and _same(stacked, alone)
    assert _same(stacked, [(a * b) for (a, b), _ in points])
    assert wire.stacked([((x,), params), ((x[:2],), params)]) is None  # shapes differ: one by one
    assert wire.stacked([((x,), params), ((x,), {})]) is None  # kwargs differ


# ---- frames that break the row: an error on the function, never a pass ----------------------------

NOTE = """
import gradaudit

@gradaudit.derivation
def square(xp, x: ("N",)):
    return x * x

@square.backward
def square_backward(dout, x):
    return -2 * x * dout  # wrong: the sign
"""
ATTACKS = {
    # a frame whose place in the row is wrong: the judge's protocol error
    "a frame out of its place": ("protocol", """
        import gradaudit._ahead as A
        plain = A.ChildAhead._send
        def send(self, reply, enc):
            plain(self, reply, enc)
            self.sent += 5
        A.ChildAhead._send = send
        """),
    # more frames than the judge asked for
    "frames without end": ("protocol", """
        import gradaudit._ahead as A
        plain = A.ChildAhead._send
        def send(self, reply, enc):
            reply = dict(reply)
            plain(self, reply, enc)
            self.steps = self.steps or ["again"]
        A.ChildAhead._send = send
        """),
    "a frame without a digest": ("protocol", """
        import gradaudit._ahead as A
        plain = A.ChildAhead._send
        def send(self, reply, enc):
            reply.pop("digest", None)
            plain(self, reply, enc)
        A.ChildAhead._send = send
        """),
    # frames promised and never sent: the judge waits for the backward's, as for its reply
    "frames promised, never sent": ("square_backward did not return within 4 s", """
        import gradaudit._ahead as A
        import time
        def run(self):
            time.sleep(60)
        A.ChildAhead.run = run
        """),
    # the frameworks' answers forged ahead, with the right digests, to agree with the wrong backward:
    # the judge's finite differences still fail it
    "forged frameworks ahead": ("", """
        import gradaudit._ahead as A
        import numpy as np
        plain = A.ChildAhead._serve
        def serve(self, meta, enc, parts, send=True):
            reply, out = plain(self, meta, enc, parts, send=False)
            if meta["kind"] == "vjp":
                import gradaudit._protocol as w
                x = self.server.decode(meta["arrays"], bytearray(enc.data()))["x"]
                d = self.server.decode(meta["douts"], bytearray(enc.data()))[0]
                out = w.Encoder()
                reply = {"kind": "ok", "value": out.value({"out": x * x, "grads": {"x": -2 * x * d}}),
                         "digest": reply["digest"]}
            if send:
                self._send(reply, out)
            return reply, out
        A.ChildAhead._serve = serve
        """),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_frames_ahead_cannot_forge_a_pass_or_crash_the_judge(tmp_path, attack):
    needle, code = ATTACKS[attack]
    f = tmp_path / "notes.py"
    f.write_text(NOTE + textwrap.dedent(code))
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(f), "--report", str(tmp_path / "rep"),
                        "--profile", "ci", "--oracles", "torch,jax,numeric", "--dtypes", "float64", "--timeout", "4"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "CI": "1"})
    recs = [json.loads(x) for x in (tmp_path / "rep" / "results.jsonl").read_text().splitlines()]
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out[-3000:]
    if needle:
        assert recs and all(x["status"] in ("fail", "error") for x in recs), [(x["status"], x["message"]) for x in recs]
        assert all(needle in x["message"] for x in recs if x["status"] == "error"), [x["message"] for x in recs]
        assert any(x["status"] == "error" for x in recs)
    else:  # forged frameworks: the finite differences are the judge's own
        numeric = [x for x in recs if x["oracle"] == "numeric"]
        assert numeric and all(x["status"] == "fail" for x in numeric), [(x["oracle"], x["status"]) for x in recs]
