"""The judge's side of the audit child: start it, call the audited functions in it, end it.

`Child` owns one confined child process (gradaudit/_sandbox.py) that imported the audited sources
once. `RemoteFunction(child, ...)` is a plain callable for the cs231n adapter and the derivation
target, which run here unchanged: arrays go over as raw bytes and come back as fresh arrays,
whatever else the function returns stays in the child behind a `Handle` that can be passed back,
and the arrays and dicts the call wrote into are written back here (in-place writes are judged).

Whatever the child does, what comes back is treated as the output of the function being called: a
reply that is late, malformed, unexpected or absent ends that call with `ChildLost`, the child is
killed with everything it started, and the next call starts a fresh one.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import itertools
import os
import signal
import sys
import time
import weakref

import numpy as np

from oracles.base import Elsewhere, OracleResult
from properties.target import Target

from . import _protocol as wire
from ._guard import UserCodeError, clean
from ._sandbox import Confinement, spawn


class ChildStartError(RuntimeError):
    """The child could not start (before any audited code ran): gradaudit's failure, not the user's."""


class ChildLost(BaseException):
    """The child hung, died or broke the protocol during a call. A BaseException: it is no failure of
    an example for Hypothesis to shrink, it ends the target (its cells become errors)."""


def signal_name(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return {"SIGSEGV": "SIGSEGV (segmentation fault)", "SIGKILL": "SIGKILL (killed; out of memory?)",
            "SIGABRT": "SIGABRT (abort)", "SIGBUS": "SIGBUS (bus error)",
            "SIGXCPU": "SIGXCPU (CPU time limit)"}.get(name, name)


class Handle:
    """An object that stayed in the child (a cs231n cache); pass it back to a function of the same child."""

    __slots__ = ("_id", "_child", "_generation", "__weakref__")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kept in the audit child>"

    def __del__(self):
        child = self._child()
        if child is not None and child.generation == self._generation:
            child.free.append(self._id)


@functools.lru_cache(maxsize=256)
def _handle_type(name: str) -> type:
    # named as the child's type, so that messages say "grad[b] is Tensor", not "is Handle"
    safe = "".join(c for c in name if c.isalnum() or c == "_")[:60] or "object"
    return type(safe, (Handle,), {"__slots__": ()})


class Source:
    """An audited file: its path, the text the judge read (the child is sent the text: it may not be
    allowed to read the file), and the key and module name it has in the child."""

    def __init__(self, key: str, path: str, text: bytes, module_name: str):
        self.key, self.path, self.text, self.module_name = key, path, text, module_name


class Child:
    """One audit child at a time for a list of sources; restarted after a loss."""

    def __init__(self, conf: Confinement, sources: list[Source], *, verbose: bool = False):
        self.conf, self.sources, self.verbose = conf, list(sources), verbose
        self.proc = None
        self.generation = 0
        self.seq = 0
        self.free: list[int] = []
        self.forget: list[int] = []
        self._refs: dict[int, tuple] = {}  # id(array) -> (weakref, ref)
        self._arrays: dict[int, weakref.ref] = {}  # ref -> weakref of the array
        self._ref_ids = itertools.count(1)
        self.load_errors: dict[str, str] = {}  # source key -> why it could not be imported
        self._descriptions: dict = {}
        self._shown: set[str] = set()
        self.info: dict = {}
        self.last_call: str | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- lifetime -------------------------------------------------------------------------------

    def ensure(self) -> None:
        """A live child that imported every source (each once); starts one if needed."""
        if self.proc is not None:
            return
        self.proc = spawn(self.conf)
        self.reader = wire.FrameReader(self.proc.rep_r, self.proc.token, nonblocking=True)
        self.generation += 1
        self.seq, self.free, self.forget = 0, [], []
        self._refs.clear()
        self._arrays.clear()
        self._descriptions.clear()
        try:
            self.info = self._value(*self._request(
                {"kind": "hello", "memory_limit": self.conf.memory_limit, "cpu": max(2 * self.conf.timeout, 10.0),
                 "frameworks": list(self.conf.frameworks), "allow_tf32": self.conf.allow_tf32},
                fname="the audit child's start", timeout=max(self.conf.timeout, 180.0)))
        except (ChildLost, UserCodeError) as e:  # no audited code has run yet: this one is ours
            self.close()
            raise ChildStartError(f"gradaudit could not start its audit child: {e}") from None
        for src in self.sources:
            if src.key in self.load_errors:
                continue  # it failed once: importing it again would fail (or hang) again
            enc = wire.Encoder()
            meta = {"kind": "load", "key": src.key, "path": src.path, "name": src.module_name,
                    "source": enc.value(np.frombuffer(src.text, np.uint8))}
            try:
                self._value(*self._request(meta, enc.data(), fname=f"import {os.path.basename(src.path)}"))
            except UserCodeError as e:
                self.load_errors[src.key] = str(e)
            except ChildLost as e:
                self.load_errors[src.key] = str(e)
                self.ensure()  # the others still get their chance, in a fresh child
                return

    def close(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.kill_tree()

    def lose(self, message: str):
        """End the child (and all it started) and the call with `message`."""
        self.close()
        raise ChildLost(message)

    def _death(self, fname: str) -> str:
        proc = self.proc
        try:
            code = proc.proc.wait(timeout=2)
        except Exception:
            code = None
        if code is not None and code > 128 and self.conf.sandbox == "bwrap":
            code = 128 - code  # bubblewrap exits with 128 + the signal that ended its command
        if code is None:
            how = "it stopped answering"
        elif code < 0:
            how = f"it was killed by {signal_name(code)}"
        else:
            how = f"it exited with status {code} (os._exit?)"
        tail = clean(proc.stderr_tail()) if code not in (None, 0) and fname.startswith("the audit child") else ""
        return f"the process died during a call to {fname}: {how}" + (f": {tail}" if tail else "")

    # -- one request, one reply -----------------------------------------------------------------

    def _request(self, meta: dict, data: bytes = b"", *, fname: str, timeout: float | None = None):
        proc = self.proc
        self.seq += 1
        meta["seq"] = self.seq
        if self.free:
            meta["free"], self.free = self.free, []
        if self.forget:
            meta["forget"], self.forget = self.forget, []
        self.last_call = fname
        timeout = self.conf.timeout if timeout is None else timeout
        try:
            wire.write_frame(proc.req_w, proc.token, meta, data)
            reply, rdata = self.reader.read(time.monotonic() + timeout)
        except (BrokenPipeError, ConnectionError, wire.PeerGone):
            self.lose(self._death(fname))
        except wire.FrameTimeout:
            self.lose(f"{fname} did not return within {timeout:g} s (--timeout {timeout:g}); the check was stopped")
        except wire.ProtocolError as e:
            self.lose(f"the audit child broke the protocol during a call to {fname}: {clean(e)}")
        if reply.get("seq") != self.seq:
            self.lose(f"the audit child broke the protocol during a call to {fname}: a reply to another request")
        if self.reader.pending():  # more than one reply: someone else writes on the child's pipe
            self.lose(f"the audit child broke the protocol during a call to {fname}: more than one reply")
        return reply, rdata, fname

    def _value(self, reply: dict, data, fname: str, writes_to=None):
        kind = reply.get("kind")
        if kind == "raised":
            message = clean(reply.get("message"), 2000)
            tb = reply.get("traceback")
            if self.verbose and isinstance(tb, str) and fname not in self._shown:
                self._shown.add(fname)
                print(f"--- traceback from {clean(fname)} ---\n{clean(tb, 20000, keep_newlines=True)}", file=sys.stderr)
            raise UserCodeError(message)
        if kind == "unavailable":
            from oracles import OracleUnavailable

            raise OracleUnavailable(clean(reply.get("message"), 500))
        if kind != "ok":
            self.lose(f"the audit child broke the protocol during a call to {fname}: an unexpected {clean(kind, 40)!s} reply")
        try:
            dec = wire.Decoder(data, self._handle)
            value = dec.value(reply.get("value"))
            if writes_to is not None:
                self._apply(reply.get("writes"), dec, *writes_to)
        except wire.ProtocolError as e:
            self.lose(f"the audit child broke the protocol during a call to {fname}: {clean(e)}")
        return value

    # -- values ---------------------------------------------------------------------------------

    def _handle(self, h: int, type_name: str):
        obj = object.__new__(_handle_type(type_name))
        obj._id, obj._child, obj._generation = h, weakref.ref(self), self.generation
        return obj

    def _handle_id(self, v) -> int | None:
        if not isinstance(v, Handle):
            return None
        if v._child() is not self or v._generation != self.generation:
            raise UserCodeError("a value kept by an audit child that has since been restarted was passed back")
        return v._id

    def _ref(self, a: np.ndarray) -> int:
        entry = self._refs.get(id(a))
        if entry is not None and entry[0]() is a:
            return entry[1]
        ref = next(self._ref_ids)
        key = id(a)

        def gone(_, ref=ref, key=key, generation=self.generation):
            self._arrays.pop(ref, None)
            if self._refs.get(key, (None, None))[1] == ref:
                del self._refs[key]
            if generation == self.generation:
                self.forget.append(ref)

        wr = weakref.ref(a, gone)
        self._refs[key] = (wr, ref)
        self._arrays[ref] = wr
        return ref

    def _apply(self, writes, dec, args, kwargs) -> None:
        """The child wrote into arrays we sent (even in an earlier call: a cache keeps them) or into
        dicts (cs231n's bn_param running averages): do the same here, so that the judge sees it."""
        if writes is None:
            return
        if type(writes) is not dict or type(writes.get("arrays")) is not list or type(writes.get("dicts")) is not list:
            raise wire.ProtocolError("bad writes")
        for item in writes["arrays"]:
            if type(item) is not list or len(item) != 2:
                raise wire.ProtocolError("bad array write")
            wr = self._arrays.get(item[0]) if type(item[0]) is int else None
            target, new = (wr() if wr is not None else None), dec.value(item[1])
            if isinstance(target, np.ndarray) and isinstance(new, np.ndarray) and new.shape == target.shape \
                    and target.flags.writeable:
                np.copyto(target, new, casting="unsafe")
        for item in writes["dicts"]:
            if type(item) is not list or len(item) != 2 or type(item[0]) is not list or len(item[0]) != 2:
                raise wire.ProtocolError("bad dict write")
            (where, at), new = item[0], dec.value(item[1])
            sent = args[at] if where == "a" and type(at) is int and 0 <= at < len(args) else \
                kwargs.get(at) if where == "k" and isinstance(at, str) else None
            if type(sent) is dict and type(new) is dict:
                sent.clear()
                sent.update(new)

    def _encoder(self) -> wire.Encoder:
        return wire.Encoder(ref=self._ref, handle_id=self._handle_id)

    # -- what the judge calls -------------------------------------------------------------------

    def call(self, fn: tuple, args: tuple, kwargs: dict, *, fname: str, keep_last: bool = False):
        self.ensure()
        enc = self._encoder()
        meta = {"kind": "call", "fn": list(fn), "args": enc.value(tuple(args)), "kwargs": enc.value(dict(kwargs))}
        if keep_last:
            meta["keep"] = "last"
        return self._value(*self._request(meta, enc.data(), fname=fname), writes_to=(args, kwargs))

    def call_many(self, fn: tuple, calls: list, *, fname: str) -> list:
        """fn(*args, **kwargs) for each (args, kwargs) of `calls`, in one request."""
        self.ensure()
        enc = self._encoder()
        meta = {"kind": "call_many", "fn": list(fn), "calls": enc.value([[tuple(a), dict(k)] for a, k in calls])}
        values = self._value(*self._request(meta, enc.data(), fname=fname))
        if type(values) is not list or len(values) != len(calls):
            self.lose(f"the audit child broke the protocol during a call to {fname}: {len(calls)} calls, "
                      f"not as many results")
        return values

    def vjp(self, key: str, name: str, oracle: str, arrays: dict, params: dict, douts: tuple, *, dtype: str,
            device: str):
        """The derivation's forward under `oracle` (torch, jax) and its VJP, computed in the child."""
        self.ensure()
        enc = self._encoder()
        meta = {"kind": "vjp", "fn": [key, name], "oracle": oracle, "dtype": dtype, "device": device,
                "arrays": enc.value(dict(arrays)), "params": enc.value(dict(params)), "douts": enc.value(tuple(douts))}
        value = self._value(*self._request(meta, enc.data(), fname=f"{name} (forward under {oracle})"))
        if type(value) is not dict or type(value.get("grads")) is not dict:
            raise UserCodeError(f"{name} (forward under {oracle}): the child returned no gradients")
        return OracleResult(out=value.get("out"), grads=value["grads"])

    def describe(self, key: str) -> dict:
        """The functions and derivations of one imported source (asked once per child)."""
        self.ensure()
        if key in self.load_errors:
            raise UserCodeError(self.load_errors[key])
        if key not in self._descriptions:
            value = self._value(*self._request({"kind": "describe", "key": key}, fname=f"listing {key}"))
            if type(value) is not dict:
                raise UserCodeError("the audit child described the module as something else than a dict")
            self._descriptions[key] = value
        return self._descriptions[key]

    def ping(self, fname: str) -> None:
        """Is the child still there and in step? (after a target's last call)"""
        if self.proc is not None:
            self._value(*self._request({"kind": "ping"}, fname=fname))


class RemoteFunction:
    """A function of the audited module, called in the child. `namespace_first`: the caller passes an
    array namespace first (a derivation's forward, `fn(xp, *arrays)`): the child uses its own NumPy one.
    `keeps_cache`: the last item of what it returns (a cs231n forward's cache) stays in the child."""

    def __init__(self, child: Child, key: str, name: str, role: str | None = None, *, label: str,
                 namespace_first: bool = False, keeps_cache: bool = False):
        self.child, self.ref, self.label, self.namespace_first = child, (key, name, role), label, namespace_first
        self.keeps_cache = keeps_cache
        self.__name__ = label

    def __call__(self, *args, **kwargs):
        if self.namespace_first:
            args = args[1:]
        return self.child.call(self.ref, args, kwargs, fname=self.label, keep_last=self.keeps_cache)

    def many(self, calls: list) -> list:
        """Call it at every (args, kwargs) of `calls`, in one round trip."""
        return self.child.call_many(self.ref, calls, fname=self.label)

    def __repr__(self) -> str:
        return f"<{self.label} in the audit child>"


class InChild:
    """Where gradaudit.audit.build finds the user's functions: proxies to the audit child."""

    def __init__(self, child: Child):
        self.child = child

    def describe(self, key: str) -> dict:
        return self.child.describe(key)

    def functions(self, key: str, pair) -> dict:
        """cs231n: the pair's functions; a forward's cache stays in the child. inspect.getsource on
        one reads its source from the text the judge read (the adapter looks at it)."""
        lines = self.describe(key).get("lines") or {}
        src = next(s for s in self.child.sources if s.key == key)
        out = {}
        for n in pair.functions:
            out[n] = RemoteFunction(self.child, key, n, label=n, keeps_cache=n.endswith("_forward"))
            if type(lines.get(n)) is int and 0 < lines[n] <= src.text.count(b"\n") + 1:
                out[n].__wrapped__ = _located(src, n, lines[n])
        return out

    def derivation_target(self, key: str, job):
        """(the Derivation rebuilt here, its Target: every oracle's forward is the child's)."""
        d = remote_derivation(self.child, key, self.describe_derivation(key, job.name))
        t = d.target(job.target)
        forward = ChildForward(self.child, key, d.name, d.fn, t.forward_fn)
        return d, ChildTarget(t.name, job.op, t.forward, t.backward, forward_name=job.target, child_forward=forward)

    def describe_derivation(self, key: str, name: str) -> dict:
        found = [d for d in self.describe(key).get("derivations") or () if d.get("name") == name]
        if not found:
            raise UserCodeError(f"no derivation {name!r} in the audited module any more")
        return found[0]

    def settle(self, job) -> None:
        self.child.ping(f"{job.target} (after its last call)")



class ChildForward(Elsewhere):
    """A derivation's forward as the oracles see it when it lives in the audit child: torch and JAX
    differentiate it there (`vjp`), finite differences evaluate it from here (`__call__`, `batch`)."""

    def __init__(self, child: Child, key: str, name: str, fn: RemoteFunction, numpy_forward):
        self.child, self.key, self.name, self.fn, self.numpy_forward = child, key, name, fn, numpy_forward

    def __call__(self, *arrays, **params):
        return self.numpy_forward(*arrays, **params)

    def batch(self, points: list, params: dict) -> list:
        # as the derivation's target does: float parameters in the arrays' dtype, a list output a tuple
        if not points:
            return []
        dtype = points[0][0].dtype
        params = {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                  for k, v in params.items()}
        return [tuple(o) if isinstance(o, list) else o for o in self.fn.many([(p, params) for p in points])]

    def vjp(self, oracle: str, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str):
        return self.child.vjp(self.key, self.name, oracle, arrays, params, douts, dtype=dtype, device=device)


@dataclasses.dataclass(frozen=True)
class ChildTarget(Target):
    """A derivation audited in a child: every oracle is handed the child's forward."""

    child_forward: ChildForward | None = None

    def oracle_forward(self, oracle: str):
        return self.child_forward


# ---- a derivation, rebuilt here from the child's description ----------------------------------

_SPEC_FIELDS = {"kind": str, "shape": (list, tuple), "regime": (str, type(None)), "scale": (int, float),
                "low": (int, float, type(None)), "high": (int, float, type(None)),
                "classes": (str, int, type(None)), "p": (int, float), "values": (list, tuple)}
MAX_SIZE = 1 << 16  # a literal dimension; the judge draws arrays of these sizes


def _located(src: Source, name: str, line: int):
    """A stub function that inspect finds at `line` of the source text the judge read: the user's
    function's source, without running it here."""
    import linecache

    text = importlib.util.decode_source(src.text)
    linecache.cache[src.path] = (len(text), None, text.splitlines(True), src.path)
    ns: dict = {}
    exec(compile("\n" * (line - 1) + f"def {name}(): pass\n", src.path, "exec"), ns)  # noqa: S102  (our text)
    return ns[name]


def _argspec(name, raw):
    from .arguments import ArgSpec

    if type(raw) is not dict or set(raw) != set(_SPEC_FIELDS) or not isinstance(name, str):
        raise UserCodeError(f"argument {clean(name)!s}: the child described it in an unknown form")
    for k, types in _SPEC_FIELDS.items():
        if not isinstance(raw[k], types) or isinstance(raw[k], bool) and k != "values":
            raise UserCodeError(f"argument {clean(name)}: {k} = {clean(repr(raw[k]), 80)} is not allowed")
    for d in raw["shape"]:
        if not (isinstance(d, str) or (type(d) is int and 0 <= d <= MAX_SIZE)):
            raise UserCodeError(f"argument {clean(name)}: dimension {clean(repr(d), 40)} (at most {MAX_SIZE})")
    if type(raw["classes"]) is int and not 0 < raw["classes"] <= MAX_SIZE:
        raise UserCodeError(f"argument {clean(name)}: classes = {raw['classes']} (at most {MAX_SIZE})")
    return ArgSpec(**{**raw, "shape": tuple(raw["shape"]), "values": tuple(raw["values"])})


def remote_derivation(child: Child, key: str, desc: dict):
    """A Derivation whose functions run in the child (its signature as the child described it)."""
    from .derivation import Derivation

    name = desc.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise UserCodeError(f"a derivation named {clean(repr(name), 80)}")
    P = inspect.Parameter
    arrays = [P(n, P.POSITIONAL_OR_KEYWORD, annotation=_argspec(n, s)) for n, s in desc.get("arrays") or ()]
    params = [P(n, P.KEYWORD_ONLY, annotation=_argspec(n, s)) for n, s in desc.get("params") or ()]
    forward = RemoteFunction(child, key, name, "forward", label=name, namespace_first=True)
    forward.__signature__ = inspect.Signature([P("xp", P.POSITIONAL_ONLY), *arrays, *params])
    sizes = desc.get("sizes") or {}
    if type(sizes) is not dict or any(not isinstance(k, str) or type(v) not in (list, tuple) or
                                      any(type(x) is not int or not 0 <= x <= MAX_SIZE for x in v)
                                      for k, v in sizes.items()):
        raise UserCodeError(f"{name}: sizes must map symbols to lists of sizes up to {MAX_SIZE}")
    text = {k: clean(desc.get(k) or "", 2000) for k in ("source", "formula")}
    regimes = desc.get("regimes") or ("typical",)
    if type(regimes) not in (list, tuple) or not all(isinstance(r, str) for r in regimes):
        raise UserCodeError(f"{name}: regimes must be names")
    like = desc.get("like")
    d = Derivation(forward, name, regimes=tuple(regimes), sizes=dict(sizes), like=like if isinstance(like, str) else None,
                   kinks=RemoteFunction(child, key, name, "kinks", label=f"{name} kinks") if desc.get("kinks") else None,
                   subgradient=RemoteFunction(child, key, name, "subgradient", label=f"{name} subgradient")
                   if desc.get("subgradient") else None, **text)
    bwd_name = desc.get("backward")
    if isinstance(bwd_name, str) and bwd_name.isidentifier():
        bwd = RemoteFunction(child, key, name, "backward", label=bwd_name)
        bwd.__signature__ = inspect.Signature(
            [P("args", P.VAR_POSITIONAL), *([P("out", P.KEYWORD_ONLY, default=None)] if desc.get("wants_out") else [])])
        d.backward(bwd)
    return d
