"""The judge's side of the audit child: start it, call the audited functions in it, end it.

`Child` owns one confined child process (gradaudit/_sandbox.py) that imported the audited sources
once. `RemoteFunction(child, ...)` is a plain callable for the cs231n adapter and the derivation
target, which run here unchanged: arrays go over as raw bytes and come back as fresh arrays,
whatever else the function returns stays in the child behind a `Handle` that can be passed back,
and the arrays and dicts the call wrote into are written back here (in-place writes are judged).
gradaudit/_proxy.py hands them to the judge in the form it expects.

Whatever the child does, what comes back is treated as the output of the function being called: a
reply that is late, malformed, unexpected or absent ends that call with `ChildLost`, the child is
killed with everything it started, and the next call starts a fresh one.
"""
from __future__ import annotations

import functools
import itertools
import os
import sys
import time
import weakref

import numpy as np

from oracles.base import OracleResult

from . import _ahead
from . import _protocol as wire
from ._guard import UserCodeError, clean
from ._run_cells import cells_that_raised
from ._sandbox import Confinement, signal_name, spawn
from .console import raise_if_interrupted


class ChildStartError(RuntimeError):
    """The child could not start (before any audited code ran): gradaudit's failure, not the user's."""


class ChildLost(BaseException):
    """The child hung, died or broke the protocol during a call. A BaseException: it is no failure of
    an example for Hypothesis to shrink, it ends the target (its cells become errors)."""


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
        self.proc, self.generation, self.seq = None, 0, 0
        self.free, self.forget = [], []  # handles the child may drop, refs of arrays it may forget (ints)
        self._refs: dict[int, tuple] = {}  # id(array) -> (weakref, ref)
        self._arrays: dict[int, weakref.ref] = {}  # ref -> weakref of the array
        self._ref_ids = itertools.count(1)
        self.load_errors: dict[str, str] = {}  # source key -> why it could not be imported
        self.load_notes: dict[str, list[str]] = {}  # source key -> the notebook cells that raised, and what
        self.load_seconds = float("inf")  # what importing the sources took (another child would take it again)
        self._descriptions: dict = {}
        self._shown: set[str] = set()
        self.info: dict = {}
        self.last_call: str | None = None
        self._starting = False  # a start-up asked for (`begin`) and not yet answered
        # the frames the child sends ahead, still to come, and the first the judge did not use (gradaudit/_ahead.py)
        self.ahead, self.rewind = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- lifetime -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start a child and ask for its start-up (it imports NumPy and the frameworks) without waiting:
        the judge sets itself up meanwhile; `ensure` takes the answer."""
        if self.proc is not None:
            return
        self.proc = spawn(self.conf)
        self.reader = wire.FrameReader(self.proc.rep_r, self.proc.token, nonblocking=True)
        self.generation += 1
        self.seq, self.free, self.forget, self.ahead, self.rewind = 0, [], [], None, None
        self._refs.clear()
        self._arrays.clear()
        self._descriptions.clear()
        self._starting = True
        try:
            self._send({"kind": "hello", "memory_limit": self.conf.memory_limit, "cpu": max(2 * self.conf.timeout, 10.0),
                        "frameworks": list(self.conf.frameworks), "allow_tf32": self.conf.allow_tf32,
                        "devices": list(self.conf.devices)}, fname="the audit child's start")
        except ChildLost as e:  # no audited code has run yet: this one is ours
            raise ChildStartError(f"gradaudit could not start its audit child: {e}") from None

    def ensure(self) -> None:
        """A live child that imported every source (each once); starts one if needed."""
        if self.proc is None:
            self.begin()
        if not self._starting:
            return
        self._starting = False
        try:
            self.info = self._value(*self._receive("the audit child's start", timeout=max(self.conf.timeout, 180.0)))
        except (ChildLost, UserCodeError) as e:  # no audited code has run yet: this one is ours
            self.close()
            raise ChildStartError(f"gradaudit could not start its audit child: {e}") from None
        started = time.monotonic()
        for src in self.sources:
            if src.key in self.load_errors:
                continue  # it failed once: importing it again would fail (or hang) again
            enc = wire.Encoder()
            # a notebook's cells must be done before the wait for the import ends: a quarter of the
            # time to spare for the child's start-up and the cells' definitions after it is spent
            meta = {"kind": "load", "key": src.key, "path": src.path, "name": src.module_name,
                    "source": enc.value(np.frombuffer(src.text, np.uint8)), "seconds": 0.75 * self.conf.timeout}
            try:
                loaded = self._value(*self._request(meta, enc.data(), fname=f"import {os.path.basename(src.path)}"))
                self.load_notes[src.key] = cells_that_raised(loaded)
            except UserCodeError as e:
                self.load_errors[src.key] = str(e)
            except ChildLost as e:
                self.load_errors[src.key] = str(e)
                self.ensure()  # the others still get their chance, in a fresh child
                return
        self.load_seconds = time.monotonic() - started

    def close(self) -> None:
        self.ahead = None
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
        self._send(meta, data, fname=fname)
        return self._receive(fname, timeout)

    def _send(self, meta: dict, data: bytes = b"", *, fname: str) -> None:
        raise_if_interrupted()
        if self.ahead is not None:  # frames sent ahead that answer no request of ours: read, dropped
            self.ahead.drop(self, self.ahead.step + 1, fname)
        proc = self.proc
        self.seq += 1
        meta["seq"] = self.seq
        if self.free:
            meta["free"], self.free = self.free, []
        if self.forget:
            meta["forget"], self.forget = self.forget, []
        if self.rewind is not None:
            meta["rewind"], self.rewind = self.rewind, None
        self.last_call = fname
        try:
            wire.write_frame(proc.req_w, proc.token, meta, data)
        except (BrokenPipeError, ConnectionError):
            self.lose(self._death(fname))

    def _receive(self, fname: str, timeout: float | None = None, ahead: _ahead.Ahead | None = None):
        """The one reply to the request just sent (and, with `ahead`, the frames it promises next)."""
        reply, rdata = self.read_frame(fname, timeout)
        if reply.get("seq") != self.seq:
            self.lose(f"the audit child broke the protocol during a call to {fname}: a reply to another request")
        if ahead is not None and reply.get("more") is True and reply.get("kind") == "ok":
            self.ahead = ahead
        elif self.reader.pending():  # more than one reply: someone else writes on the child's pipe
            self.lose(f"the audit child broke the protocol during a call to {fname}: more than one reply")
        return reply, rdata, fname

    def read_frame(self, fname: str, timeout: float | None = None):
        """The next frame from the child, waited for as the reply to a call to `fname`."""
        timeout = self.conf.timeout if timeout is None else timeout
        try:
            return self.reader.read(time.monotonic() + timeout)
        except (BrokenPipeError, ConnectionError, wire.PeerGone):
            self.lose(self._death(fname))
        except wire.FrameTimeout:
            self.lose(f"{fname} did not return within {timeout:g} s (--timeout {timeout:g}); the check was stopped")
        except wire.ProtocolError as e:
            self.lose(f"the audit child broke the protocol during a call to {fname}: {clean(e)}")

    def _answered_ahead(self, parts: list, enc: wire.Encoder, fname: str):
        """The frame sent ahead that answers this request (`parts`, `enc`), or None (gradaudit/_ahead.py)."""
        raise_if_interrupted()
        self.last_call, ahead = fname, self.ahead
        got = ahead.answer(self, parts, enc, fname)
        return got and (*got, ahead)

    def _value(self, reply: dict, data, fname: str, writes_to=None, numbers: _ahead.Numbering | None = None):
        kind = reply.get("kind")
        if kind == "raised":
            message = clean(reply.get("message"), 2000)
            tb = reply.get("traceback")
            if self.verbose and isinstance(tb, str) and fname not in self._shown:
                self._shown.add(fname)
                print(f"--- traceback from {clean(fname)} ---\n{clean(tb, 20000, keep_newlines=True)}", file=sys.stderr)
            if isinstance(tb, str):  # raised in a notebook's or notes' text: name the cell or block, and the line
                from .sources import locate

                at = locate(tb)
                message += f" at {clean(at, 200)}" if at else ""
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
                self._apply(reply.get("writes"), dec, *writes_to, numbers)
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

    def _apply(self, writes, dec, args, kwargs, numbers=None) -> None:
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
            if numbers is not None and type(item[0]) is int and item[0] < 0:  # an array of a request run ahead
                target = numbers.by_number.get(item[0])
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

    def call(self, fn: tuple, args: tuple, kwargs: dict, *, fname: str, keep_last: bool = False, pair=None):
        """fn(*args, **kwargs) in the child. `pair`: fn is a derivation's forward, and this its
        (backward, whether that takes out=, [key, name]): the child runs ahead what run_target asks next."""
        from properties.execute import current_stream, take_plan

        self.ensure()
        stream = current_stream()  # the child's np.random and random follow the judge's stream
        if self.ahead is not None and type(fn) is tuple:
            enc = wire.Encoder(ref=self.ahead.number, handle_id=self._handle_id)
            parts = _ahead.call_parts(fn, fname, stream, keep_last, enc.value(tuple(args)), enc.value(dict(kwargs)))
            got = self._answered_ahead(parts, enc, fname)
            if got is not None:
                return self._value(*got[:3], writes_to=(args, kwargs), numbers=got[3])
        plan = take_plan() if pair is not None and type(fn) is tuple else None
        ahead = _ahead.Ahead(self.seq + 1, 0) if plan is not None else None
        enc = wire.Encoder(ref=ahead.recording(self._ref) if ahead else self._ref, handle_id=self._handle_id)
        meta = {"kind": "call", "fn": list(fn) if type(fn) is tuple else enc.value(fn), "label": fname,  # (or a Handle)
                "args": enc.value(tuple(args)), "kwargs": enc.value(dict(kwargs))}
        if stream is not None:
            meta["stream"] = list(stream)
        if keep_last:
            meta["keep"] = "last"
        if ahead is not None:
            meta["ahead"], ahead.limit = _ahead.plan_meta(plan, pair, enc)
        self._send(meta, enc.data(), fname=fname)
        return self._value(*self._receive(fname, ahead=ahead), writes_to=(args, kwargs))

    def call_many(self, fn: tuple, calls: list, *, fname: str) -> list:
        """fn(*args, **kwargs) for each (args, kwargs) of `calls`, in one request (nothing written comes back)."""
        self.ensure()
        enc = wire.Encoder(handle_id=self._handle_id)
        meta, stacks = {"kind": "call_many", "fn": list(fn)}, wire.stacked(calls)
        if stacks is not None:
            meta.update(stacked=[enc.value(s) for s in stacks], kwargs=enc.value(dict(calls[0][1])), n=len(calls))
        else:
            meta["calls"] = enc.value([[tuple(a), dict(k)] for a, k in calls])
        values = self._value(*self._request(meta, enc.data(), fname=fname))
        if type(values) is not list or len(values) != len(calls):
            self.lose(f"the audit child broke the protocol during a call to {fname}: {len(calls)} calls, "
                      f"not as many results")
        return values

    def model(self, obj, state, call: bool, args, kwargs, *, fname: str, trace: bool = False, new=None):
        """A model object kept in the child (gradaudit/_objects.py): set its `state`, call its loss if
        `call` (tracing the layer functions it calls), and get {value, state, called} back. `new`:
        (source key, class name) to build one first, with `kwargs` (its value: the object's handle)."""
        self.ensure()
        enc = self._encoder()
        meta = {"kind": "model", "label": fname, "call": call, "trace": trace, "obj": enc.value(obj), "new": new,
                "state": enc.value(state), "args": enc.value(tuple(args)), "kwargs": enc.value(dict(kwargs))}
        return self._value(*self._request(meta, enc.data(), fname=fname), writes_to=(args, kwargs))

    def vjp(self, key: str, name: str, oracle: str, arrays: dict, params: dict, douts: tuple, *, dtype: str,
            device: str):
        """The derivation's forward under `oracle` (torch, jax) and its VJP, computed in the child."""
        self.ensure()
        fname, got = f"{name} (forward under {oracle})", None
        if self.ahead is not None:
            enc = wire.Encoder(ref=self.ahead.number, handle_id=self._handle_id)
            parts = _ahead.vjp_parts([key, name], oracle, dtype, device, enc.value(dict(arrays)), enc.value(dict(params)),
                                     enc.value(tuple(douts)))
            got = self._answered_ahead(parts, enc, fname)
        if got is None:
            enc = self._encoder()
            meta = {"kind": "vjp", "fn": [key, name], "oracle": oracle, "dtype": dtype, "device": device,
                    "arrays": enc.value(dict(arrays)), "params": enc.value(dict(params)), "douts": enc.value(tuple(douts))}
            got = self._request(meta, enc.data(), fname=fname)
        value = self._value(*got[:3])
        if type(value) is not dict or type(value.get("grads")) is not dict:
            raise UserCodeError(f"{name} (forward under {oracle}): the child returned no gradients")
        return OracleResult(out=value.get("out"), grads=value["grads"])

    def subject(self, key: str, name: str, op: str, args, *, fname: str):
        """One computation of a gradaudit.function subject in the child (gradaudit/_subject_child.py)."""
        self.ensure()
        enc = wire.Encoder(handle_id=self._handle_id)  # (no in-place writes come back: the child copies)
        meta = {"kind": "subject", "fn": [key, name], "op": op, "label": fname, "args": enc.value(list(args))}
        return self._value(*self._request(meta, enc.data(), fname=fname))

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
        self.pair = None  # a derivation's forward: (its backward, whether that takes out=, [key, name])
        self.__name__ = label

    def __call__(self, *args, **kwargs):
        if self.namespace_first:
            args = args[1:]
        return self.child.call(self.ref, args, kwargs, fname=self.label, keep_last=self.keeps_cache, pair=self.pair)

    def many(self, calls: list) -> list:
        """Call it at every (args, kwargs) of `calls`, in one round trip."""
        return self.child.call_many(self.ref, calls, fname=self.label)

    def __repr__(self) -> str:
        return f"<{self.label} in the audit child>"
