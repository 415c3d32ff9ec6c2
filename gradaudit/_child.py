"""The audit child: imports the audited source once and runs its functions on what the parent sends.

    python -m gradaudit._child REQUEST_FD REPLY_FD PARENT_PID UID READ_ALL

Started by gradaudit._remote.Child (through gradaudit._sandbox.spawn), confined by gradaudit._confine
before any audited code runs. It judges nothing and writes nothing but replies: the parent draws the
cases, runs the oracles, compares, blames and writes the records. Each request gets exactly one reply
(gradaudit/_protocol.py): `ok` with the value (arrays as raw bytes; anything else stays here as a
handle), the arrays and dicts the call wrote into, or `raised` with a message naming the function.
File descriptors 1 and 2 go to a counting drain before any audited code runs; SIGINT is ignored
(the parent decides).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import linecache
import os
import signal
import sys
import types

from gradaudit import _ahead
from gradaudit import _protocol as wire
from gradaudit._guard import Guard, OutputDrain, UserCodeError, clean, describe_exception
from gradaudit._confine import confine_child, in_own_pid_namespace, limit_cpu, limit_memory, prepare_frameworks

MAX_HANDLES = 1 << 16


class Server:
    def __init__(self, req: int, rep: int, token: bytes, drain: OutputDrain):
        self.req, self.rep, self.token = req, rep, token
        self.guard = Guard(drain, convert_interrupt=True)
        self.modules: dict = {}
        self.handles: dict = {}
        self.next_handle = 1
        self.tracked: dict = {}  # the parent's ref -> (our copy of its array, the bytes it had)
        self.xp_targets: dict = {}
        self.derivations: dict = {}
        self.cpu_per_call = 60.0
        self.decoded: dict | None = None  # while running ahead: id(array) -> (its ref, the array) as decoded
        self.last_call: tuple | None = None  # the (args, kwargs) the last `call` passed to the user's function
        self.ahead = None  # the requests to run ahead once this reply is sent (gradaudit/_ahead.py)
        self.stream = None  # the judge's random stream the last call ran under
        self.before_steps: list = []  # the random state before each request run ahead

    # -- values ---------------------------------------------------------------------------------

    def keep(self, obj) -> int:
        if len(self.handles) >= MAX_HANDLES:
            raise MemoryError(f"more than {MAX_HANDLES} objects kept for the parent")
        h, self.next_handle = self.next_handle, self.next_handle + 1
        self.handles[h] = obj
        return h

    def resolve(self, h: int, _name: str):
        if h not in self.handles:
            raise wire.ProtocolError(f"unknown handle {h}")
        return self.handles[h]

    def track(self, a, ref) -> None:
        if ref is not None:
            self.tracked[ref] = (a, a.tobytes())
            if self.decoded is not None:
                self.decoded[id(a)] = (ref, a)

    def decode(self, node, data):
        from properties.spec import Case

        return wire.Decoder(data, self.resolve, self.track, Case).value(node)

    # -- the loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        reader = wire.FrameReader(self.req, self.token)
        while True:
            try:
                meta, data = reader.read()
            except wire.PeerGone:
                return
            for h in meta.get("free") or ():
                self.handles.pop(h, None)
            for ref in meta.get("forget") or ():
                self.tracked.pop(ref, None)
            _ahead.rewind(self, meta.get("rewind"))
            self.decoded, self.ahead = None, None
            reply, enc = self.answer(meta, data)
            reply["seq"] = meta.get("seq")
            wire.write_frame(self.rep, self.token, reply, enc.data())
            if self.ahead is not None:  # the judge's next requests, built and answered here (gradaudit/_ahead.py)
                self.ahead.run()

    def answer(self, meta: dict, data) -> tuple[dict, wire.Encoder]:
        """The reply to one request, and the encoder holding its arrays."""
        handler = HANDLERS.get(meta["kind"])
        enc = wire.Encoder(opaque=self.keep)
        try:
            if handler is None:
                raise wire.ProtocolError(f"unknown request {meta['kind']!r}")
            reply = handler(self, meta, data, enc)
        except UserCodeError as e:
            reply = {"kind": "raised", "message": str(e), "traceback": self.guard.last_traceback}
            enc = wire.Encoder()
        except Exception as e:  # noqa: BLE001  a request this process could not serve (its state is the audited code's)
            reply = {"kind": "raised", "message": f"the audit child could not serve a {clean(meta['kind'], 40)} request: "
                                                  f"{clean(describe_exception(e))}", "traceback": None}
            enc = wire.Encoder()
        self.guard.last_traceback = None
        return reply, enc

    def call_user(self, fn, fname: str, args=(), kwargs=None, enc=None, keep_last: bool = False):
        """Run audited code and encode what it returns; anything that goes wrong is a UserCodeError.
        `keep_last`: the last item of a returned tuple (a cs231n forward's cache) stays here."""
        limit_cpu(self.cpu_per_call)
        value = self.guard.call(fn, fname, args, kwargs or {})
        try:
            if keep_last and isinstance(value, (tuple, list)) and value:
                items = [enc.value(v) for v in value[:-1]] + [{"H": [self.keep(value[-1]), "cache"]}]
                return {"T" if isinstance(value, tuple) else "L": items}
            return enc.value(value)
        except (ValueError, TypeError, RecursionError, MemoryError) as e:
            raise UserCodeError(f"{fname} returned a value that cannot be sent back: {clean(describe_exception(e))}") \
                from None

    def writes(self, args, kwargs, enc) -> dict:
        """What the call wrote into: the parent's arrays (by ref) and the dicts it passed."""
        arrays = []
        for ref, (a, before) in list(self.tracked.items()):
            if a.tobytes() != before:
                arrays.append([ref, enc.value(a)])
                self.tracked[ref] = (a, a.tobytes())
        dicts = [[["a", i], enc.value(v)] for i, v in enumerate(args) if type(v) is dict]
        dicts += [[["k", k], enc.value(v)] for k, v in kwargs.items() if type(v) is dict]
        return {"arrays": arrays, "dicts": dicts}

    # -- requests -------------------------------------------------------------------------------

    def hello(self, meta, data, enc):
        self.cpu_per_call = float(meta["cpu"])
        import array_api_compat.numpy  # noqa: F401  (the derivations' NumPy namespace)
        import numpy  # noqa: F401

        import gradaudit.derivation  # noqa: F401
        import properties.spec  # noqa: F401  (cases crossing the wire: loaded before the memory limit)

        facts = prepare_frameworks(meta["frameworks"], meta.get("allow_tf32", False), meta.get("devices") or ("cpu",)) \
            if meta.get("frameworks") else {}
        limit = limit_memory(int(meta["memory_limit"]))
        return {"kind": "ok", "value": enc.value({"uid": os.getuid(), "address_space_limit": limit, "frameworks": facts})}

    def load(self, meta, data, enc):
        key, path, name = meta["key"], meta["path"], meta["name"]
        source, raised = bytes(self.decode(meta["source"], data)), []
        self.modules[key] = self.guard.call(exec_source, f"import {os.path.basename(path)}",
                                            (name, path, source, self.guard, raised, meta.get("seconds")))
        return {"kind": "ok", "value": enc.value({"raised": [list(r) for r in raised]})}

    def describe(self, meta, data, enc):
        from gradaudit import cs231n

        module = self.modules[meta["key"]]
        value = self.guard.call(describe_module, "listing the module's functions", (module, self.guard))
        return {"kind": "ok", "value": enc.value(value)}

    def call(self, meta, data, enc):
        if type(meta["fn"]) is dict:  # an object kept here: a layer function a model's loss called
            fn, fname = self.decode(meta["fn"], data), clean(meta.get("label"), 80)
        else:
            fn, fname = self.function(*meta["fn"])
        stream = meta.get("stream")
        if type(stream) is list and len(stream) == 2 and all(type(v) is int for v in stream) and \
                stream != self.stream:  # a new stream: seeded once, then drawn from as in-process
            import random

            import numpy as np

            np.random.seed(stream[0] % 2**32)
            random.seed(stream[0])
            self.stream = stream
        if meta.get("ahead") is not None:  # a derivation's forward, with what the judge asks next
            self.decoded = {}
        args = self.decode(meta["args"], data)
        kwargs = self.decode(meta["kwargs"], data)
        before = _ahead.copy_or_none((args, kwargs)) if meta.get("ahead") is not None else None
        self.last_call = (args, kwargs)
        value = self.call_user(fn, fname, args, kwargs, enc, keep_last=meta.get("keep") == "last")
        reply = {"kind": "ok", "value": value, "writes": self.writes(args, kwargs, enc)}
        if before is not None:
            self.ahead = _ahead.start(self, meta, data, before, reply, enc)
        return reply

    def model(self, meta, data, enc):
        """A model object kept here (gradaudit/_objects.py): the judge's mirror of its state set on it,
        its loss called (traced: the layer functions it calls stay here, as handles), its state read."""
        from gradaudit._objects import model_state, set_model_state
        from gradaudit.diagnosis import traced_calls

        obj, state, args, kwargs = (self.decode(meta[k], data) for k in ("obj", "state", "args", "kwargs"))
        label, out = clean(meta.get("label"), 80), []
        if meta.get("new"):  # build it: the dtype crosses as its name
            cls, _ = self.function(*meta["new"], None)
            import numpy as np

            if kwargs.get("dtype") in ("float32", "float64"):
                kwargs = {**kwargs, "dtype": getattr(np, kwargs["dtype"])}
            obj = self.guard.call(cls, label, (), kwargs)
            out.append({"H": [self.keep(obj), "model"]})
        if state is not None:
            self.guard.call(set_model_state, label, (obj, state))
        run = lambda: out.append(self.call_user(lambda *a, **k: obj.loss(*a, **k), label, args, kwargs, enc))  # noqa: E731
        called = {} if not meta.get("call") else traced_calls(run) if meta.get("trace") else run() or {}
        value = [["value", out[0] if out else None], ["state", self.call_user(model_state, label, (obj,), {}, enc)],
                 ["called", enc.value(called)]]
        return {"kind": "ok", "value": {"D": value}, "writes": self.writes(args, kwargs, enc)}

    def call_many(self, meta, data, enc):
        """The same function at many points (finite differences of a derivation's forward, which the
        judge computes): one round trip instead of two per element."""
        fn, fname = self.function(*meta["fn"])
        if "stacked" in meta:  # each call its point's views of the stacks, and kwargs of its own
            stacks = [self.decode(s, data) for s in meta["stacked"]]
            calls = [(tuple(s[i] for s in stacks), self.decode(meta["kwargs"], data)) for i in range(meta["n"])]
        else:
            calls = self.decode(meta["calls"], data)
        return {"kind": "ok", "value": {"L": [self.call_user(fn, fname, a, k, enc) for a, k in calls]}}

    def function(self, key, name, role):
        module = self.modules[key]
        if role is None:
            fn = vars(module).get(name)
            if not callable(fn):
                raise UserCodeError(f"{name} is not a function of {module.__name__}")
            return fn, name
        d = self.derivation(key, name)
        if role == "forward":
            import array_api_compat.numpy as xp_np

            return (lambda *a, **k: d.fn(xp_np, *a, **k)), d.name
        fn = {"backward": d.backward_fn, "kinks": d.kinks, "subgradient": d.subgradient}[role]
        return fn, getattr(fn, "__name__", role) if role == "backward" else f"{d.name} {role}"

    def derivation(self, key, name):
        if (key, name) not in self.derivations:  # (found once: every call of its functions asks)
            d = next((d for h, d in named_derivations(self.modules[key]) if h == name), None)
            if d is None:
                raise UserCodeError(f"no derivation {name!r}")
            self.derivations[key, name] = d
        return self.derivations[key, name]

    def vjp(self, meta, data, enc):
        """A derivation's own forward under torch or JAX, and its VJP: the frameworks' side of the
        check runs here, where the forward lives (docs/security.md says what that implies)."""
        import oracles

        key, name = meta["fn"]
        if (key, name) not in self.xp_targets:
            d = self.derivation(key, name)
            self.xp_targets[(key, name)] = d.target(wrap=self.guard.wrap)
        target = self.xp_targets[(key, name)]
        arrays, params, douts = (self.decode(meta[k], data) for k in ("arrays", "params", "douts"))
        oracle = oracles.get(meta["oracle"])
        label = f"{name} (forward under {meta['oracle']})"
        try:
            limit_cpu(self.cpu_per_call)
            res = oracle.vjp(target.oracle_forward(meta["oracle"]), arrays, params, tuple(douts), dtype=meta["dtype"],
                             device=meta["device"])
        except oracles.OracleUnavailable as e:
            return {"kind": "unavailable", "message": str(e)}
        except UserCodeError:
            raise
        except BaseException as e:  # noqa: BLE001  the forward returned something the framework rejects
            self.guard.trace(label, e)
            raise UserCodeError(f"{label} raised {clean(describe_exception(e))}") from None
        return {"kind": "ok", "value": enc.value({"out": res.out, "grads": res.grads})}

    def ping(self, meta, data, enc):
        return {"kind": "ok", "value": None}

    def subject(self, meta, data, enc):
        from gradaudit._subject_child import serve  # a gradaudit.function subject's computations

        return serve(self, meta, data, enc)


HANDLERS = {"subject": Server.subject, "hello": Server.hello, "load": Server.load, "describe": Server.describe, "call": Server.call,
            "call_many": Server.call_many, "model": Server.model, "vjp": Server.vjp, "ping": Server.ping}


def exec_source(name: str, path: str, source: bytes, guard=None, raised: list | None = None, seconds=None):
    """Import source text the parent read (the child may not be allowed to read the file) as the
    module `name`, with `path` as its __file__; its folder goes at the END of sys.path so that its
    sibling imports work without shadowing anything gradaudit needs. A notebook's or notes' text,
    with a `guard`, runs cell by cell (gradaudit/_run_cells.py, in `seconds` at most): what each cell
    that raised raised goes to `raised`, and the next cell runs."""
    folder = os.path.dirname(path)
    if "." in name:  # a.b.c: a file inside packages (gradaudit.audit.module_name), imported as one
        root = os.path.dirname(path)
        for _ in name.split(".")[1:]:
            root = os.path.dirname(root)
        if root not in sys.path:
            sys.path.append(root)
        parent = importlib.import_module(name.rpartition(".")[0])
        if folder not in [os.path.realpath(p) for p in getattr(parent, "__path__", ())]:  # another package came first
            name = f"_gradaudit_user_{os.path.basename(path).removesuffix('.py')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:  # a notebook's or notes' text (gradaudit.audit.source_text): no loader for the suffix
        spec = importlib.machinery.ModuleSpec(name, None, origin=path)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    text = importlib.util.decode_source(source)
    linecache.cache[path] = (len(text), None, text.splitlines(True), path)  # tracebacks, inspect
    if folder not in sys.path:
        sys.path.append(folder)
    sys.modules[name] = module
    from gradaudit import _run_cells, sources

    if guard is not None and path.lower().endswith(sources.SUFFIXES):
        seconds = float(seconds) if type(seconds) in (int, float) and seconds > 0 else None
        raised += _run_cells.run_text(text, path, module.__dict__, guard.call, lambda: guard.last_traceback, seconds)
    else:
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    return module


def describe_module(module, guard=None) -> dict:
    """Its functions (with the line each starts at in the module's own file, for inspect.getsource on
    the judge's side), its derivations, and its cs231n model classes (gradaudit/models.py: one job per
    configuration, with why it cannot be built, which builds the class)."""
    from gradaudit import cs231n, models
    from gradaudit.function import describe_subjects

    functions = {n: f for n, f in cs231n.functions_in(module).items() if isinstance(n, str)}
    code = {n: getattr(f, "__code__", None) for n, f in functions.items()}
    lines = {n: c.co_firstlineno for n, c in code.items()
             if isinstance(c, types.CodeType) and c.co_filename == getattr(module, "__file__", None)}
    return {"functions": sorted(functions), "lines": lines,
            "derivations": [dict(describe_derivation(d), name=h) for h, d in named_derivations(module)],
            "subjects": describe_subjects(vars(module).values()),  # gradaudit.function's (gradaudit/function.py)
            "models": models.plan(module, guard or Guard()) if models.models_in(module) else []}


def named_derivations(module) -> list[tuple[str, object]]:
    """(handle, derivation) for each derivation of the module, identified by the object: its function
    name, or the attribute it is first bound to when two share one (a factory's derivations)."""
    from gradaudit.derivation import Derivation

    seen, found = set(), []
    for attr, v in list(vars(module).items()):
        if isinstance(v, Derivation) and id(v) not in seen:
            seen.add(id(v))
            found.append((attr, v))
    names = [d.name for _, d in found]
    return [(d.name if names.count(d.name) == 1 else attr, d) for attr, d in found]


def derivations_in(module) -> list:
    return [d for _, d in named_derivations(module)]


def describe_derivation(d) -> dict:
    """What the parent needs to draw a derivation's cases and call its functions."""
    import dataclasses
    import inspect

    bwd = d.backward_fn
    try:
        params = inspect.signature(bwd).parameters if bwd is not None else {}
    except (TypeError, ValueError):
        params = {}
    wants_out = "out" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    spec = lambda s: dataclasses.asdict(s)  # noqa: E731
    return {"name": d.name, "backward": getattr(bwd, "__name__", None) if bwd is not None else None,
            "source": d.source, "formula": d.formula, "regimes": list(d.regimes), "sizes": dict(d.sizes),
            "like": d.like, "kinks": d.kinks is not None, "subgradient": d.subgradient is not None,
            "arrays": [[n, spec(s)] for n, s in d.arrays.items()],
            "params": [[n, spec(s)] for n, s in d.params.items()], "wants_out": wants_out}


def main() -> None:
    req, rep, parent, uid, read_all = (int(a) for a in sys.argv[1:6])
    confine_child(parent)
    token = b""
    while len(token) < wire.TOKEN_BYTES:  # after the judge put this process in its cgroup
        chunk = os.read(req, wire.TOKEN_BYTES - len(token))
        if not chunk:
            os._exit(0)
        token += chunk
    if uid >= 0:
        in_own_pid_namespace(req, rep)
    confine_child(0, uid, bool(read_all))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    drain = OutputDrain()
    try:
        Server(req, rep, token, drain).serve()
    finally:
        os._exit(0)  # skip interpreter shutdown: the audited code's atexit hooks, framework teardown


if __name__ == "__main__":
    main()
