"""The audited code as the judge sees it: where gradaudit.audit.build finds the user's functions when
they live in the audit child (`InChild`), and a derivation rebuilt here from the child's description,
whose forward, backward and hooks are calls into the child (gradaudit/_remote.py) and whose forward
the oracles differentiate there (torch, JAX) or evaluate from here (finite differences).

The description is the audited code's word: every field is checked before it sizes an array or
names anything here.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect

import numpy as np

from oracles.base import Elsewhere, OracleUnavailable
from properties.target import Target

from ._guard import UserCodeError, clean
from ._remote import Child, RemoteFunction, Source


class InChild:
    """Where gradaudit.audit.build finds the user's functions: proxies to the audit child."""

    def __init__(self, child: Child):
        self.child = child
        self.kept: list = []  # the layer functions models traced, alive for the audit (layer verdicts go by id)

    def describe(self, key: str) -> dict:
        return self.child.describe(key)

    def functions(self, key: str, pair) -> dict:
        """cs231n: the pair's functions; a forward's cache stays in the child. inspect.getsource on
        one reads its source from the text the judge read (the adapter looks at it)."""
        desc = self.describe(key)
        lines, have = desc.get("lines") or {}, set(desc.get("functions") or ())
        src = next(s for s in self.child.sources if s.key == key)
        out = {}
        for n in (n for n in pair.functions if n in have):  # a pair's optional functions may be absent
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

    def model(self, job, notes: dict):
        """A cs231n model class: its objects stay in the child (gradaudit/_objects.py)."""
        from . import models
        from ._objects import RemoteClass, Unguarded

        found = [m for m in self.describe(job.key).get("models") or () if type(m) is dict and m.get("target") == job.name]
        if not found:
            raise UserCodeError(f"no model class configuration {job.name!r} in the audited module any more")
        cls = RemoteClass(self.child, job.key, job.name.split(".")[0], found[0], self.kept)
        return models.build(job.name, None, Unguarded(), notes, cls=cls)

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
    oracles_beside_user_code = True  # the frameworks' VJPs run in the child: forgeable (properties/stability.py)

    def oracle_forward(self, oracle: str):
        return self.child_forward

    def framework(self, oracle: str):
        if oracle in ("torch", "jax"):  # differentiated in the child: as it set them up
            return FrameworkInChild(self.child_forward.child, oracle)
        return super().framework(oracle)


class FrameworkInChild:
    """torch or JAX as the audit child runs them, from its start-up reply (`prepare_frameworks`): why a
    device cannot, the devices' names and the precision flags, for the judge's records, which so never
    import the framework here. The reply comes before any audited code runs in that child."""

    def __init__(self, child: Child, name: str):
        self.child, self.name = child, name

    def _facts(self) -> dict:
        if not self.child.info:  # (after a crash, the last start's reply: no new child for a record)
            self.child.ensure()
        facts = ((self.child.info or {}).get("frameworks") or {}).get(self.name)
        return facts if type(facts) is dict else {}

    def check_available(self, device: str) -> None:
        facts = self._facts()
        reason = (facts.get("unavailable") or {}).get(device)
        if reason is not None or device not in (facts.get("device_names") or {}):
            raise OracleUnavailable(clean(str(reason or f"{self.name}: the audit child did not set it up on {device}")))

    def device_name(self, device: str) -> str:
        name = (self._facts().get("device_names") or {}).get(device)
        return clean(name, 200) if type(name) is str else device

    def flags(self) -> dict:
        flags = self._facts().get("flags")
        return {str(k): v for k, v in flags.items() if type(v) in (bool, str, int, float)} if type(flags) is dict else {}


# ---- a derivation, rebuilt here from the child's description ----------------------------------

_SPEC_FIELDS = {"kind": str, "shape": (list, tuple), "regime": (str, type(None)), "scale": (int, float),
                "low": (int, float, type(None)), "high": (int, float, type(None)),
                "classes": (str, int, type(None)), "p": (int, float), "values": (list, tuple)}
MAX_SIZE = 1 << 16  # a literal dimension; the judge draws arrays of these sizes


def located_functions(src: Source, desc: dict, names) -> dict:
    """Stubs of the child's functions among `names` that inspect finds in the text the judge read,
    where the child's description puts them: the source of a cs231n backward given without its
    forward, for the judge to read how it unpacks its cache (gradaudit/cache_inference.py)."""
    lines = desc.get("lines") if type(desc.get("lines")) is dict else {}
    last = src.text.count(b"\n") + 1
    return {n: _located(src, n, lines[n]) for n in names if type(lines.get(n)) is int and 0 < lines[n] <= last}


def _located(src: Source, name: str, line: int):
    """A stub function that inspect finds at `line` of the source text the judge read: the user's
    function's source, without running it here."""
    import linecache

    text = importlib.util.decode_source(src.text)
    linecache.cache[src.path] = (len(text), None, text.splitlines(True), src.path)
    ns: dict = {}
    exec(compile("\n" * (line - 1) + f"def {name}(): pass\n", src.path, "exec"), ns)  # noqa: S102  (our text)
    return ns[name]


def described_argspec(name, raw):
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
    arrays = [P(n, P.POSITIONAL_OR_KEYWORD, annotation=described_argspec(n, s)) for n, s in desc.get("arrays") or ()]
    params = [P(n, P.KEYWORD_ONLY, annotation=described_argspec(n, s)) for n, s in desc.get("params") or ()]
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
    if isinstance(bwd_name, str) and 0 < len(bwd_name) <= 4096:  # any name a function can be given: it is only a label
        bwd = RemoteFunction(child, key, name, "backward", label=bwd_name)
        bwd.__signature__ = inspect.Signature(
            [P("args", P.VAR_POSITIONAL), *([P("out", P.KEYWORD_ONLY, default=None)] if desc.get("wants_out") else [])])
        d.backward(bwd)
        forward.pair = (bwd, bool(desc.get("wants_out")), [key, name])  # the child runs the backward ahead
    return d
