"""User code computes, the harness judges: what a hostile submission tries under `gradaudit audit`.

Each module below attacks the judge the way a student's submission in a course's CI could; each must
end as an `error` or `fail` of the audited function (never a pass, never a traceback of gradaudit),
with nothing left running and the records the judge's own. The functions are ReLU's, with a
sign-flipped backward where the attack's point is to pass anyway. Kept fast: ci profile, float64,
torch as the requested oracle.
"""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--convention", "cs231n", "--profile", "ci", "--oracles", "torch", "--dtypes", "float64"]
ROOTLESS = pytest.mark.skipif(os.geteuid() != 0, reason="the child drops to an unprivileged uid only when "
                                                        "gradaudit runs as root")

RELU_FORWARD = """
import numpy as np

def relu_forward(x):
    return np.maximum(x, 0), x
"""
FLIPPED = """
def relu_backward(dout, cache):
    {attack}
    return -dout * (cache > 0)  # wrong: the sign
"""
RIGHT = """
def relu_backward(dout, cache):
    {attack}
    return dout * (cache > 0)
"""


def module(tmp_path, attack: str, *, backward=FLIPPED, top: str = "") -> Path:
    p = tmp_path / "layers.py"
    p.write_text(RELU_FORWARD + textwrap.dedent(top) + backward.format(attack=textwrap.indent(
        textwrap.dedent(attack), "    ").strip()))
    return p


def audit(path, report, *extra, env=None, timeout=300):
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(path), "--report", str(report), *FAST,
                        *extra], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                       env={**os.environ, "CI": "1", **(env or {})})
    results = Path(report) / "results.jsonl"
    r.lines = results.read_text().splitlines() if results.exists() else []
    r.records = [json.loads(x) for x in r.lines]  # every line the judge's: parses, or the test fails
    r.out = r.stdout + r.stderr
    return r


def judged(r, target="relu_backward", allowed=("fail", "error")):
    recs = [x for x in r.records if x["target"] == target]
    assert recs, (r.returncode, r.out[-3000:])
    assert all(x["status"] in allowed for x in recs), [(x["status"], x["message"]) for x in recs]
    assert "Traceback" not in r.out, r.out[-3000:]
    assert r.returncode == 1, (r.returncode, r.out[-3000:])
    return recs


def running(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


# ---- the judge cannot be changed, forged or fed malformed frames ------------------------------------

def test_patching_the_judge_in_the_audited_module_changes_nothing(tmp_path):
    f = module(tmp_path, "", top="""
        # the attack: every side of every case passes, whatever the gradient
        import properties.evaluate as E, properties.runner as R
        try:
            V = E.SideVerdict
        except AttributeError:
            from properties.verdict import Verdict as V
        def judge_side(*args, **kwargs):
            return V("pass")
        E.judge_side = R.judge_side = judge_side
        """)
    recs = judged(audit(f, tmp_path / "rep"), allowed=("fail",))
    assert any(x["pattern"] == "sign_flip" or "sign" in x["message"] for x in recs), [x["message"] for x in recs]


def test_a_derivation_that_forges_the_frameworks_in_its_child_still_fails(tmp_path):
    """A derivation's torch and JAX columns are computed in the child, where the forward lives
    (docs/security.md): a module can forge them, but the judge's own finite differences still fail it."""
    f = tmp_path / "notes.py"
    f.write_text(textwrap.dedent("""
        import gradaudit

        @gradaudit.derivation
        def square(xp, x: ("N",)):
            return x * x

        @square.backward
        def square_backward(dout, x):
            return -2 * x * dout  # wrong: the sign

        # the attack: every framework agrees with the backward, and the judge passes everything
        import oracles.jax_oracle as J, oracles.torch_oracle as T
        import properties.evaluate as E
        from oracles.base import OracleResult
        try:
            V = E.SideVerdict
        except AttributeError:
            from properties.verdict import Verdict as V

        def forged(forward, arrays, params, douts, **kwargs):
            x = arrays["x"]
            return OracleResult(out=x * x, grads={"x": -2 * x * douts[0]})

        def judge_side(*args, **kwargs):
            return V("pass")
        T.vjp = J.vjp = forged
        E.judge_side = judge_side
        """))
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(f), "--report", str(tmp_path / "rep"),
                        "--profile", "ci", "--oracles", "torch,numeric", "--dtypes", "float64"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "CI": "1"})
    recs = [json.loads(x) for x in (tmp_path / "rep" / "results.jsonl").read_text().splitlines()]
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    numeric = [x for x in recs if x["oracle"] == "numeric"]
    assert numeric and all(x["status"] == "fail" for x in numeric), [(x["oracle"], x["status"]) for x in recs]


FORGE = """
import gc, json, os
from gradaudit._guard import Guard
forged = {"target": "relu_backward", "op": "relu", "status": "pass", "message": "FORGED"}
for o in gc.get_objects():
    try:
        if isinstance(o, Guard) and callable(getattr(o, "emit", None)):  # the judge's pipe, line protocol
            for c in ("typical", "kinks"):
                o.emit("J " + json.dumps(dict(forged, id=f"relu-forged-{c}", regime=c,
                                              oracle="torch", device="cpu", dtype="float64")))
            o.emit("E relu_backward")
            DONE
        if type(o).__name__ == "Server" and hasattr(o, "rep"):  # the child's pipe, frames with the token
            from gradaudit import _protocol as w
            w.write_frame(o.rep, o.token, {"kind": "record", "record": forged})
            w.write_frame(o.rep, o.token, {"kind": "done", "seq": 1})
    except Exception:
        pass
"""


def _no_forgery(r, report):
    assert sorted(x["id"] for x in r.records) == ["relu-torch-cpu-float64-kinks", "relu-torch-cpu-float64-typical"]
    assert all("FORGED" not in line for line in r.lines)
    counts = re.search(r"gradaudit: (\d+) pass, (\d+) fail, (\d+) error", r.stdout)
    assert counts and [int(c) for c in counts.groups()] == [
        sum(x["status"] == s for x in r.records) for s in ("pass", "fail", "error")], r.stdout
    html = Path(report) / "index.html"
    assert html.is_file() and "FORGED" not in html.read_text()
    assert "PASS" not in r.stdout.splitlines()[-2:]


def test_fake_control_frames_from_the_audited_code_are_an_error(tmp_path):
    f = module(tmp_path, FORGE.replace("DONE", "pass"))
    r = audit(f, tmp_path / "rep")
    judged(r)
    _no_forgery(r, tmp_path / "rep")


def test_fake_frames_then_os_exit_are_an_error(tmp_path):
    f = module(tmp_path, FORGE.replace("DONE", 'o.emit("D")') + "\nos._exit(0)")
    r = audit(f, tmp_path / "rep")
    recs = judged(r, allowed=("error",))
    assert any("relu_backward" in x["message"] for x in recs)
    _no_forgery(r, tmp_path / "rep")


def test_a_malformed_frame_is_an_error_not_a_crash(tmp_path):
    f = module(tmp_path, """
        import gc, os
        from gradaudit._guard import Guard
        for o in gc.get_objects():
            if isinstance(o, Guard) and callable(getattr(o, "emit", None)):
                o.emit("J {not json")
        for fd in range(3, 256):  # whatever pipe leads to the judge
            try:
                os.write(fd, b"J {not json\\nGAF1 garbage that is no frame" * 4)
            except OSError:
                pass
        """)
    recs = judged(audit(f, tmp_path / "rep"), allowed=("error",))
    assert all("protocol" in x["message"] or "died" in x["message"] for x in recs), [x["message"] for x in recs]


# ---- what the child can reach ------------------------------------------------------------------------

def test_the_environment_does_not_reach_the_audited_code(tmp_path):
    secret = f"ci-token-{uuid.uuid4().hex}"
    f = module(tmp_path, """raise RuntimeError("leaked: " + str(LEAK))""", backward=RIGHT,
               top="import os\nLEAK = os.environ.get('GRADAUDIT_TEST_CANARY')\n")
    r = audit(f, tmp_path / "rep", env={"GRADAUDIT_TEST_CANARY": secret})
    recs = judged(r, allowed=("error",))
    assert all("leaked: None" in x["message"] for x in recs), [x["message"] for x in recs]
    assert secret not in r.out and all(secret not in line for line in r.lines)
    # --pass-env hands it over on request (and so the canary above would have been seen)
    r = audit(f, tmp_path / "rep2", "--pass-env", "GRADAUDIT_TEST_CANARY", env={"GRADAUDIT_TEST_CANARY": secret})
    assert all(secret in x["message"] for x in judged(r, allowed=("error",)))


@ROOTLESS
def test_a_backward_cannot_write_the_report_or_the_callers_files(tmp_path):
    report = tmp_path / "rep"
    f = module(tmp_path, f"""
        import json, os
        forged = json.dumps({{"target": "relu_backward", "status": "pass", "message": "FORGED"}}) + "\\n"
        for path in ({str(report / "results.jsonl")!r}, {str(report / "index.html")!r},
                     {str(tmp_path / "planted.txt")!r}, {str(ROOT / "planted-by-audited-code.txt")!r}):
            try:
                with open(path, "a") as fh:
                    fh.write(forged)
            except OSError:
                pass
        """)
    r = audit(f, report)
    judged(r, allowed=("fail",))
    _no_forgery(r, report)
    assert not (tmp_path / "planted.txt").exists() and not (ROOT / "planted-by-audited-code.txt").exists()


@pytest.mark.parametrize("tracking", ["cgroup", "sweep"])
def test_a_detached_process_does_not_outlive_the_audit(tmp_path, tracking):
    marker = f"gradaudit-test-detached-{uuid.uuid4().hex}"
    f = module(tmp_path, f"""
        import subprocess, sys
        # a grandchild in a session of its own, whose parent exits at once (a daemon's double fork)
        subprocess.Popen([sys.executable, "-c", "import subprocess, sys, os; subprocess.Popen([sys.executable, "
                          "'-c', 'import time; time.sleep(600)', {marker!r}], start_new_session=True); os._exit(0)"])
        """, backward=RIGHT)
    env = {"GRADAUDIT_NO_CGROUP": "1"} if tracking == "sweep" else {}
    try:
        r = audit(f, tmp_path / "rep", env=env)
        time.sleep(0.5)
        left = running(marker)
        assert not left, f"{len(left)} process(es) outlived the audit"
        assert r.returncode == 0 and "Traceback" not in r.out, r.out[-3000:]  # a correct ReLU: it passes
        assert {x["status"] for x in r.records} <= {"pass", "kink"}
    finally:
        for pid in running(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=ROOTLESS)],
                         ids=["SIGTERM", "SIGKILL"])
def test_the_child_and_all_it_started_die_with_the_judge(tmp_path, how):
    marker = f"gradaudit-test-judge-death-{uuid.uuid4().hex}"
    # A daemon (forked twice, in a session of its own, orphaned) and the child itself turned into a hang;
    # both carry the marker, nothing else does. Forked rather than started through another interpreter:
    # a process the unprivileged child starts may not be able to execute an interpreter installed
    # under /root, while the child's own exec can.
    f = module(tmp_path, f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
            os._exit(0)
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])  # hangs, marked
        """, backward=RIGHT)
    p = subprocess.Popen([sys.executable, "-m", "gradaudit", "audit", str(f), "--report", str(tmp_path / "rep"), *FAST,
                          "--timeout", "300"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "CI": "1"})
    try:
        deadline = time.monotonic() + 240
        while len(running(marker)) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert len(running(marker)) == 2, (f"the audited code did not start: {len(running(marker))} marked "
                                           f"process(es), judge exit status {p.poll()}")
        p.send_signal(how)
        _, err = p.communicate(timeout=60)
        time.sleep(1)
        assert not running(marker), f"{len(running(marker))} process(es) outlived the judge"
        assert "Traceback" not in err, err[-3000:]
    finally:
        p.kill()
        for pid in running(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_judge_stopped_by_sigterm_records_nothing_against_a_correct_function(tmp_path, workers):
    """CI cancelling a job: the judge's own end (a pipe to a child that is gone, a worker stopped) is
    never an `error` of the user's function; whatever is on disk is a finished cell, judged."""
    started = Path(tempfile.mkdtemp(prefix="gradaudit-test-started-"))  # somewhere the child may write
    started.chmod(0o777)
    f = module(tmp_path, f"""
        import os, time
        open(os.path.join({str(started)!r}, str(os.getpid())), "w").close()
        time.sleep(0.05)
        """, backward=RIGHT)
    p = subprocess.Popen([sys.executable, "-m", "gradaudit", "audit", str(f), "--report", str(tmp_path / "rep"), *FAST,
                          "--workers", workers], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "CI": "1"})
    try:
        deadline = time.monotonic() + 240
        while not any(started.iterdir()) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        assert any(started.iterdir()), "the audited backward never ran"
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        results = tmp_path / "rep" / "results.jsonl"
        recs = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
        assert p.returncode in (130, 143) and "Traceback" not in err, (p.returncode, err[-3000:])
        assert all(x["status"] in ("pass", "kink") for x in recs), [(x["status"], x["message"]) for x in recs]
    finally:
        p.kill()
        shutil.rmtree(started, ignore_errors=True)


def test_memory_limit_stops_a_large_allocation(tmp_path):
    f = module(tmp_path, "np.ones(2**28)  # 2 GiB", backward=RIGHT)
    recs = judged(audit(f, tmp_path / "rep", "--memory-limit", "1G"), allowed=("error",))
    assert all("MemoryError" in x["message"] for x in recs), [x["message"] for x in recs]


def test_the_audited_file_is_imported_once(tmp_path):
    count = Path(tempfile.mkdtemp(prefix="gradaudit-test-imports-"))  # somewhere the child may write
    count.chmod(0o777)
    try:
        f = module(tmp_path, "", backward=RIGHT, top=f"""
            import os, uuid
            open(os.path.join({str(count)!r}, uuid.uuid4().hex), "w").close()
            """)
        r = audit(f, tmp_path / "rep")
        assert r.returncode == 0, r.out[-3000:]
        assert len(list(count.iterdir())) == 1
    finally:
        shutil.rmtree(count, ignore_errors=True)


def test_workers_each_audit_with_a_child_of_their_own(tmp_path):
    f = tmp_path / "layers.py"
    f.write_text(RELU_FORWARD + FLIPPED.format(attack="") + textwrap.dedent("""
        def affine_forward(x, w, b):
            return x.reshape(x.shape[0], -1) @ w + b, (x, w)

        def affine_backward(dout, cache):
            x, w = cache
            return (dout @ w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T @ dout, dout.sum(axis=0)
        """))
    r = audit(f, tmp_path / "rep", "--workers", "2")
    judged(r, allowed=("fail",))
    assert {x["status"] for x in r.records if x["target"] == "affine_backward"} == {"pass"}, r.out[-3000:]


# ---- replay runs what the user names, in the child ---------------------------------------------------

def _crafted_case(tmp_path, evil: Path) -> Path:
    meta = {"oracle": "torch", "device": "cpu", "dtype": "float64", "params": {}, "arrays": ["x"], "array_params": [],
            "audit_path": str(evil), "convention": "cs231n", "audit_name": "relu_backward", "audit_op": "relu",
            "op": "relu", "target": "relu_backward", "regime": "typical", "id": "crafted"}
    case = tmp_path / "crafted.npz"
    np.savez(case, meta=np.array(json.dumps(meta)), **{"input/x": np.array([1.0, -2.0, 3.0]),
                                                      "dout/0": np.array([0.5, 0.25, 2.0])})
    return case


@ROOTLESS
def test_replay_never_runs_a_path_from_a_case_file_in_its_own_process(tmp_path):
    planted = tmp_path / "planted-by-replay.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(RELU_FORWARD + FLIPPED.format(attack="") + textwrap.dedent(f"""
        import os
        try:
            open({str(planted)!r}, "w").write(str(os.getuid()))
        except OSError:
            pass
        """))
    case = _crafted_case(tmp_path, evil)
    r = subprocess.run([sys.executable, "-m", "gradaudit", "replay", str(case)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert not planted.exists(), f"the case's module ran as uid {planted.read_text()} in the replay process"
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert f"replaying with the recorded file {evil}" in r.stderr
    assert "fail: relu_backward vs torch" in r.stdout
    # --file: the user's own file instead, which is right
    good = tmp_path / "good.py"
    good.write_text(RELU_FORWARD + RIGHT.format(attack=""))
    r = subprocess.run([sys.executable, "-m", "gradaudit", "replay", str(case), "--file", str(good)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "pass" in r.stdout and "recorded file" not in r.stderr, r.stdout + r.stderr
    assert not planted.exists()


# ---- the wire, strictly -------------------------------------------------------------------------------

def test_frames_are_read_strictly():
    from gradaudit import _protocol as w

    token = os.urandom(16)

    def read(raw: bytes):
        r, wfd = os.pipe()
        os.write(wfd, raw)
        os.close(wfd)
        try:
            return w.FrameReader(r, token).read(time.monotonic() + 5)
        finally:
            os.close(r)

    enc = w.Encoder()
    value = {"x": np.arange(6.0).reshape(2, 3), "t": (1, np.float32(2.5), None, "s"), "n": np.zeros(())}
    meta, data = read(w.pack(token, {"kind": "ok", "value": enc.value(value)}, enc.data()))
    got = w.Decoder(data, None).value(meta["value"])
    assert np.array_equal(got["x"], value["x"]) and got["t"][1] == np.float32(2.5) and got["n"].shape == ()
    for raw, why in [(b"J {not json}\n" + b"x" * 40, "not a frame"),
                     (w.pack(os.urandom(16), {"kind": "ok"}), "token"),
                     (w.HEADER.pack(w.MAGIC, token, 5, 0) + b"{nope", "does not parse"),
                     (w.HEADER.pack(w.MAGIC, token, w.MAX_META + 1, 0), "too large"),
                     (w.pack(token, ["kind"]), "object with a `kind`")]:
        with pytest.raises(w.ProtocolError, match=why):
            read(raw)
    with pytest.raises(w.PeerGone):
        read(w.pack(token, {"kind": "ok"})[:10])
    bad_nodes = [({"A": [0, 8, "|O", [1], True, None]}, "dtype"), ({"A": [0, 16, "<f8", [3], True, None]}, "bytes"),
                 ({"A": [8, 16, "<f8", [2], True, None]}, "beyond"), ({"Z": 1}, "unknown tag"),
                 ({"L": [1], "T": [2]}, "not a value node"), ({"H": [1, "x"]}, "handle"),
                 ({"A": [0, 8, "<f8", [True], True, None]}, "dimension"),
                 ({"A": [0, 8, "<f8", [-1], True, None]}, "dimension"),
                 ({"A": [0, 8, "<f8", [1.0], True, None]}, "dimension"),
                 ({"D": [[{"L": [1]}, 1]]}, "unhashable"), ({"D": [["k"]]}, "bad D node")]
    for node, why in bad_nodes:
        def handle(h, name):
            raise w.ProtocolError("unknown handle")
        with pytest.raises(w.ProtocolError, match=why):
            w.Decoder(bytearray(16), handle).value(node)
    keys = w.Decoder(bytearray(), None).value({"D": [[3, 1], [{"T": [1, "a"]}, 2], ["k", {"L": [None, True, 1.5]}]]})
    assert keys == {3: 1, (1, "a"): 2, "k": [None, True, 1.5]}
    deep = 1
    for _ in range(w.MAX_DEPTH + 2):
        deep = {"L": [deep]}
    with pytest.raises(w.ProtocolError, match="deeper"):
        w.Decoder(bytearray(), None).value(deep)


def test_in_place_writes_come_back_from_the_child(tmp_path):
    """bn_param's running averages, and a backward that writes into an input it kept in its cache:
    seen by the judge as they would be in-process."""
    from gradaudit._remote import Child, RemoteFunction, Source
    from gradaudit._sandbox import Confinement

    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent("""
        def forward(x, param):
            param["running_mean"] = x.mean(axis=0)
            return x * 2, x
        def backward(dout, cache):
            cache[...] = 0  # writes into the forward's input, through the cache
            dout *= 2  # and into dout
            return dout
        """))
    with Child(Confinement(timeout=30), [Source("m0", str(f), f.read_bytes(), "_m")]) as child:
        fwd = RemoteFunction(child, "m0", "forward", label="forward", keeps_cache=True)
        bwd = RemoteFunction(child, "m0", "backward", label="backward")
        x, param, dout = np.ones((2, 3)), {"mode": "train"}, np.ones((2, 3))
        out, cache = fwd(x, param)
        assert np.array_equal(out, 2 * x) and type(cache).__name__ == "cache"
        assert np.array_equal(param["running_mean"], np.ones(3))
        g = bwd(dout, cache)
        assert np.array_equal(g, 2 * np.ones((2, 3)))
        assert np.array_equal(dout, g) and np.array_equal(x, np.zeros((2, 3)))


# ---- gradaudit.function subjects: their frameworks run in the child, the judge validates --------------

SUBJECT = """
import numpy as np
import torch
import gradaudit

class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return {sign}2 * x * g

square = gradaudit.function(Square, checks=("vjp",), x=("N",))
"""
SUBJECT_ATTACKS = {
    # the frameworks' oracles (computed in the child) forged to agree with a sign-flipped rule, the judge
    # and the contract check patched there: the judge's own finite differences still fail it
    "forged frameworks, patched judge": ("-", """
        import oracles.torch_subject as T, properties.evaluate as E, gradaudit._subject as S
        from oracles.base import OracleResult
        from properties.verdict import Verdict
        def forged(forward, arrays, params, douts, **kwargs):
            x = arrays["x"]
            return OracleResult(out=x * x, grads={"x": -2 * x * douts[0]})
        T.vjp = forged
        E.judge_side = lambda *a, **k: Verdict("pass")
        S._contract = lambda name, framework, names, arrays, grads, *a: grads
        """),
    # a right rule, a forged torch oracle: blamed on torch, which ran beside the audited code: a fail
    "forged oracle blamed": ("", """
        import oracles.torch_subject as T
        from oracles.base import OracleResult
        def forged(forward, arrays, params, douts, **kwargs):
            x = arrays["x"]
            return OracleResult(out=x * x, grads={"x": 3 * x * douts[0] + 1})
        T.vjp = forged
        """),
    # replies in no form the judge accepts: it takes none of them
    "finite differences declared unavailable": ("-", """
        import gradaudit._subject_child as C
        C.OPS["oracles"] = lambda s, ad, second: {"numeric": "no finite differences today"}
        """),
    "malformed values": ("-", """
        import gradaudit._subject_child as C
        C.OPS["oracle_vjp"] = lambda s, ad, *a: {"out": None, "grads": {"x": "pass", "y": 1}, "reference_error": None}
        C.OPS["forward"] = lambda s, ad, points, *a: [[np.zeros(i % 3 + 1)] for i, _ in enumerate(points)]
        C.OPS["rule"] = lambda s, ad, run, douts, device: [["pass"], "yes"]
        """),
    "a description that sizes the judge's arrays": ("-", """
        import sys
        F = sys.modules["gradaudit.function"]  # (gradaudit.function is also the function that declares one)
        describe = F.describe_subjects
        def huge(values):
            out = describe(values)
            for d in out:
                d["arrays"][0][1]["shape"] = [2**40]
                d["sizes"] = {"N": [2**40]}
            return out
        F.describe_subjects = huge
        """),
}


@pytest.mark.parametrize("attack", sorted(SUBJECT_ATTACKS))
def test_a_subject_cannot_forge_a_pass_or_crash_the_judge(tmp_path, attack):
    """A `gradaudit.function` subject under `gradaudit audit`: its torch/JAX oracles run in the child
    (where its module can forge them), its finite differences in the judge, and every reply is checked
    against a fixed form: never a pass for a wrong rule, never a traceback, a forged oracle a fail."""
    sign, code = SUBJECT_ATTACKS[attack]
    f = tmp_path / "fused.py"
    f.write_text(SUBJECT.format(sign=sign) + textwrap.dedent(code))
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(f), "--report", str(tmp_path / "rep"),
                        "--profile", "ci", "--oracles", "torch,numeric", "--dtypes", "float64"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "CI": "1"})
    out = r.stdout + r.stderr
    recs = [json.loads(x) for x in (tmp_path / "rep" / "results.jsonl").read_text().splitlines()]
    assert r.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert recs and all(x["target"] == "Square.vjp" for x in recs), [(x["target"], x["status"]) for x in recs]
    numeric = [x for x in recs if x["oracle"] == "numeric"]
    if attack == "forged oracle blamed":  # the rule is right: the judge's finite differences agree
        assert {x["status"] for x in numeric} == {"pass"}
        torch_ = [x for x in recs if x["oracle"] == "torch"]
        assert torch_ and all(x["status"] == "fail" and x["blame"] == "oracle:torch" for x in torch_), torch_
    elif attack == "forged frameworks, patched judge":
        assert numeric and all(x["status"] == "fail" and x["pattern"] == "sign_flip" for x in numeric), numeric
    else:
        assert all(x["status"] == "error" for x in recs), [(x["oracle"], x["status"], x["message"]) for x in recs]
        assert all("Square" in x["message"] for x in recs)
    assert not running(str(f))


SPIN = """
import sys, time
from gradaudit._confine import limit_cpu

def spin(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass

for _ in range(10):  # ten short calls, 2 s of CPU in all: more than one call may use, so the limit moves
    limit_cpu(0.5)
    spin(0.2)
print("spinning", flush=True)
limit_cpu(0.5)
spin(60)  # a call that never ends: SIGXCPU after 0.5 to 2 s more of CPU
"""


def test_the_cpu_limit_ends_a_call_that_spins_not_the_calls_before_it():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-c", SPIN], capture_output=True, text=True, cwd=ROOT, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert r.returncode == -signal.SIGXCPU and r.stdout.strip() == "spinning", (r.returncode, r.stdout, r.stderr[-500:])
    assert 2.0 < cpu < 6.0, cpu
