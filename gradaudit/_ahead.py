"""The audit child runs ahead of the judge (#14; docs/performance.md, "The audit child: what isolation costs").

For the judge, one example of a derivation is a row of requests to the child, each waiting for the
one before: the forward, its backward, both again under another random stream (nondeterminism),
torch's VJP, JAX's. With the forward, the judge now sends what it will ask next
(properties.execute.RunPlan); the child answers the forward, then builds each next request itself —
from the forward's arguments and output, with the upstream gradient drawn from the case's seed as
the judge draws it — serves it as it would serve the judge's, and sends each reply as a frame of its
own at once, carrying the digest of the request it answers (gradaudit._protocol.digest).

The judge reads those frames as it goes: a frame is the reply to its next request only if that
request, encoded by the judge, has the frame's digest; otherwise the judge reads and drops the rest
and asks afresh. So it uses nothing it would not have asked for, validates every reply as ever (a
frame the child made up is at worst a wrong output of the function it answers for), and its own
upstream gradient is what every comparison uses. Timeouts and blame stay per call: the judge waits
for each frame as for a reply, under the name of the call it is making.

Arrays the judge sent carry its refs, so that in-place writes come back (gradaudit/_remote.py);
arrays of a request built ahead that the judge has not sent are numbered -1, -2, ... in the order
both sides meet them while encoding, and a write into one goes to the array the judge numbered so.
"""
from __future__ import annotations

import numpy as np

from . import _protocol as wire

__all__ = ["Ahead", "ChildAhead", "Numbering", "call_parts", "copy_or_none", "plain_copy", "plan_meta", "start",
           "vjp_parts"]


class Numbering:
    """Arrays by number: the judge's refs for those it sent, -1, -2, ... for the others."""

    def __init__(self):
        self.known: dict[int, tuple[int, object]] = {}  # id(array) -> (number, the array: kept alive)
        self.by_number: dict[int, object] = {}
        self.last = 0

    def note(self, a, n: int) -> None:
        self.known[id(a)] = (n, a)
        self.by_number[n] = a

    def number(self, a) -> int:
        """An Encoder's `ref`: the array's number, a new one the first time it is met."""
        got = self.known.get(id(a))
        if got is not None and got[1] is a:
            return got[0]
        self.last -= 1
        self.note(a, self.last)
        return self.last


def call_parts(fn, label, stream, keep: bool, args_node, kwargs_node) -> list:
    """What identifies a `call` request (with its data): the digest both sides take of it."""
    return ["call", list(fn), label, list(stream) if stream is not None else None, bool(keep), args_node, kwargs_node]


def vjp_parts(fn, oracle, dtype, device, arrays_node, params_node, douts_node) -> list:
    return ["vjp", list(fn), oracle, dtype, device, arrays_node, params_node, douts_node]


def plain_copy(v, depth: int = 0):
    """A copy of a value decoded from the judge (arrays, scalars, lists, tuples, dicts), arrays as new
    ones with the same flags; TypeError for anything else (an object kept here: no copy is run ahead)."""
    if depth > wire.MAX_DEPTH:
        raise TypeError("too deep")
    if isinstance(v, np.ndarray):
        c = v.copy()
        c.flags.writeable = v.flags.writeable
        return c
    if v is None or type(v) in (bool, int, float, str) or isinstance(v, np.generic):
        return v
    if type(v) in (list, tuple):
        return type(v)(plain_copy(x, depth + 1) for x in v)
    if type(v) is dict:
        return {k: plain_copy(x, depth + 1) for k, x in v.items()}
    raise TypeError(f"not a plain value: {type(v).__name__}")


def copy_or_none(v):
    try:
        return plain_copy(v)
    except TypeError:
        return None


# ---- the judge's end ----------------------------------------------------------------------------

class Ahead(Numbering):
    """What the child runs ahead after one forward: the frames still to come (at most `limit`), and
    the numbering of the arrays in the requests they answer."""

    def __init__(self, seq: int, limit: int):
        super().__init__()
        self.seq, self.limit, self.step = seq, limit, 0

    def recording(self, ref):
        """`ref` (the judge's refs, for the forward's own request), noting each array's number."""
        def record(a):
            n = ref(a)
            self.note(a, n)
            return n
        return record

    def next_frame(self, child, fname: str):
        """The next frame, waited for as the reply to a call to `fname`, checked for its place in the
        row. `child`: the judge's gradaudit._remote.Child, whose `ahead` this is."""
        reply, rdata = child.read_frame(fname)
        self.step += 1
        if reply.get("seq") != self.seq or reply.get("step") != self.step or self.step > self.limit \
                or type(reply.get("more")) is not bool or not isinstance(reply.get("digest"), str):
            child.lose(f"the audit child broke the protocol during a call to {fname}: a frame out of its place")
        if not reply["more"]:
            child.ahead = None
            if child.reader.pending():
                child.lose(f"the audit child broke the protocol during a call to {fname}: more than one reply")
        return reply, rdata

    def answer(self, child, parts: list, enc, fname: str):
        """(reply, data, fname) of the next frame if it answers this request (its parts, and its data
        in `enc`); else None, and the rest dropped."""
        reply, rdata = self.next_frame(child, fname)
        if reply["digest"] != wire.digest(parts, enc.data()):
            self.drop(child, self.step, fname)
            return None
        return reply, rdata, fname

    def drop(self, child, unused: int, fname: str) -> None:
        """Read the frames still to come and drop them; with the next request the child rewinds its
        random generators to before frame `unused`, the first the judge did not use."""
        child.rewind = unused
        while child.ahead is self:
            self.next_frame(child, fname)


def plan_meta(plan, pair, enc) -> tuple[dict, int]:
    """The `ahead` field of a derivation forward's request, and how many frames may answer it.
    `pair`: (the backward's RemoteFunction, whether it takes `out=`, the derivation's [key, name])."""
    bwd, wants_out, derivation = pair
    given = None
    if plan.douts is not None:  # given upstream gradients (blame, stability): numbered by no one
        ref, enc.ref = enc.ref, None
        given = enc.value(tuple(plan.douts))
        enc.ref = ref
    again = list(plan.again) if plan.again is not None and plan.backward else None
    vjps = [[o, d] for o, d in plan.sides if o != "numeric"]
    numeric = plan.dtype != "float64" and any(o == "numeric" for o, _ in plan.sides)
    meta = {"backward": list(bwd.ref) if plan.backward else None, "label": bwd.label, "out": bool(wants_out),
            "seed": int(plan.dout_seed), "douts": given, "dtype": plan.dtype, "names": list(plan.names),
            "again": again, "vjps": vjps, "numeric": numeric, "derivation": list(derivation)}
    return meta, (1 + 2 * (again is not None) if plan.backward else 0) + len(vjps) + numeric


# ---- the child's end ----------------------------------------------------------------------------

def rewind(server, step) -> None:
    """The judge used the frames before `step` only: the random generators back as they were before
    that request ran here, as if it had not run (its other effects on the audited code stay)."""
    saved, server.before_steps = server.before_steps, []
    if type(step) is int and 1 <= step <= len(saved):
        import random

        np.random.set_state(saved[step - 1][0])
        random.setstate(saved[step - 1][1])
        server.stream = saved[step - 1][2]


def start(server, meta: dict, data, before, reply: dict, enc):
    """The ChildAhead of a forward just answered, or None (then its reply promises nothing more)."""
    try:
        return ChildAhead(server, meta, data, before, reply, enc)
    except Exception:  # noqa: BLE001  a plan this child cannot follow: the judge asks for each call itself
        reply.pop("more", None)
        return None


class ChildAhead:
    """In the child, after a forward whose request asked to run ahead (`meta`, `data`): the requests
    the judge will send next, built and served here, each reply a frame. `server`: the child's
    gradaudit._child.Server; `before`: the forward's (args, kwargs) as they came, a plain copy."""

    def __init__(self, server, meta: dict, data, before, reply: dict, enc):
        self.server, self.meta, self.data, self.plan, self.before = server, meta, data, meta["ahead"], before
        self.numbers = Numbering()
        for ref, a in server.decoded.values():  # the forward's arrays, by the judge's refs
            self.numbers.note(a, ref)
        self.args, self.kwargs = server.last_call
        self.out = self._out(reply, enc, self.args)
        self.steps = [] if self.out is _STOP else \
            (["backward"] + (["again", "again backward"] if self.plan["again"] else []) if self.plan["backward"] else []) \
            + [("vjp", o, d) for o, d in self.plan["vjps"]] + (["numeric"] if self.plan["numeric"] else [])
        self.sent = 0
        reply["more"] = self.promised = bool(self.steps)

    def _out(self, reply: dict, enc, args):
        """The forward's output as the judge receives it and hands it on (the derivation's target,
        gradaudit/_xp_target.py); _STOP where the judge goes no further or an object stayed here."""
        from ._xp_target import judged_output

        if reply.get("kind") != "ok":
            return _STOP
        seen = wire.Decoder(bytearray(enc.data()), self.server.resolve).value(reply["value"])
        try:
            plain_copy(seen)
        except TypeError:
            return _STOP
        if seen is None or isinstance(seen, (tuple, list)) and any(o is None for o in seen):
            return _STOP  # "returned None": the judge stops there
        return judged_output(seen, args[0].dtype) if args and isinstance(args[0], np.ndarray) else seen

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # noqa: BLE001  a request this child cannot build: the judge asks for it itself
            if self.promised:  # a last frame that answers no request: the judge drops it and asks afresh
                self.steps = []
                self._send({"kind": "ok", "value": None, "digest": ""}, wire.Encoder())
        finally:
            for n in [n for n in self.server.tracked if type(n) is int and n < 0]:
                del self.server.tracked[n]
            self.server.decoded = None

    def _run(self) -> None:
        from properties.strategies import upstream

        p, args, kwargs, out = self.plan, self.args, self.kwargs, self.out
        given = wire.Decoder(self.data, self.server.resolve).value(p["douts"]) if p["douts"] is not None else None
        shapes = [np.shape(o) for o in (out if isinstance(out, tuple) else (out,))]
        douts = tuple(np.asarray(d, dtype=p["dtype"]) for d in (given if given is not None else upstream(shapes, p["seed"])))
        stream, fn, label = self.meta.get("stream"), self.meta["fn"], self.meta.get("label")
        vjp_values = None
        while self.steps:
            step = self.steps.pop(0)
            import random

            self.server.before_steps.append((np.random.get_state(), random.getstate(), self.server.stream))
            if step == "backward":
                reply, _ = self._call(p["backward"], p["label"], stream, (*[d.copy() for d in douts], *args),
                                      {**kwargs, "out": out} if p["out"] else dict(kwargs))
                if reply.get("kind") != "ok" and "numeric" in self.steps:  # the judge takes no finite differences
                    self.steps.remove("numeric")
            elif step == "again":  # the second call: the forward's arguments as they came, another stream
                again_args, again_kwargs = plain_copy(self.before)
                reply, enc = self._call(fn, label, p["again"], again_args, again_kwargs, send=False)
                args, kwargs = self.server.last_call
                out = self._out(reply, enc, args)
                if out is _STOP:
                    self.steps.remove("again backward")
                self._send(reply, enc)
            elif step == "again backward":
                self._call(p["backward"], p["label"], p["again"], (*[d.copy() for d in douts], *args),
                           {**kwargs, "out": out} if p["out"] else dict(kwargs))
            elif step == "numeric":  # finite differences' forward at the float64 point (properties/evaluate.py)
                if vjp_values is None:
                    vjp_values = (None, plain_copy(self.before)[1], None)
                points = tuple(np.array(a, dtype=np.float64) for a in plain_copy(self.before)[0])
                self._call(fn, label, None, points, {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                                                     else v for k, v in vjp_values[1].items()})
            else:  # the frameworks: the same objects for each, so that they get the same numbers
                if vjp_values is None:
                    first_args, first_kwargs = plain_copy(self.before)
                    vjp_values = (dict(zip(p["names"], first_args)), first_kwargs, tuple(d.copy() for d in douts))
                self._vjp(step[1], step[2], *vjp_values)

    def _call(self, fn, label, stream, args, kwargs, send: bool = True):
        enc = wire.Encoder(ref=self.numbers.number)
        a, k = enc.value(tuple(args)), enc.value(dict(kwargs))
        meta = {"kind": "call", "fn": fn, "label": label, "args": a, "kwargs": k}
        if stream is not None:
            meta["stream"] = stream
        return self._serve(meta, enc, call_parts(fn, label, stream, False, a, k), send)

    def _vjp(self, oracle, device, arrays, params, douts):
        enc = wire.Encoder(ref=self.numbers.number)
        a, p, d = enc.value(arrays), enc.value(params), enc.value(douts)
        fn, dtype = self.plan["derivation"], self.plan["dtype"]
        meta = {"kind": "vjp", "fn": fn, "oracle": oracle, "dtype": dtype, "device": device, "arrays": a, "params": p,
                "douts": d}
        self._serve(meta, enc, vjp_parts(fn, oracle, dtype, device, a, p, d))

    def _serve(self, meta, enc, parts, send: bool = True):
        """Serve a request built here as the judge's would be; its reply carries the request's digest."""
        data = bytearray(enc.data())
        digest = wire.digest(parts, data)  # (before the call: its arguments are views of `data`)
        self.server.decoded = {}
        reply, out = self.server.answer(meta, data)
        for ref, a in self.server.decoded.values():  # what the function got: carried on by number
            self.numbers.note(a, ref)
        reply["digest"] = digest
        if send:
            self._send(reply, out)
        return reply, out

    def _send(self, reply: dict, enc) -> None:
        self.sent += 1
        self.promised = bool(self.steps)
        reply.update(seq=self.meta.get("seq"), step=self.sent, more=self.promised)
        wire.write_frame(self.server.rep, self.server.token, reply, enc.data())


_STOP = object()
