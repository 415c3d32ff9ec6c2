"""A `gradaudit.function` subject under `gradaudit audit`, as the judge sees it: the subject rebuilt here
from the child's description, and its framework side (`RemoteAdapter`) as calls into the child
(gradaudit/_subject_child.py).

The judge's own code of gradaudit/_subject.py runs unchanged around the adapter: it draws the cases,
checks the rule's contract (a gradient of its input's shape and dtype, a batch of VJPs that are
multiples of one another), compares, blames, names the cause and writes every record; the finite
differences are its own, from values of the subject's forward (or of its first-order rule, for the
second order) that the child computes at the points the judge chooses, all in one round trip. The
framework oracles (the primal with the rule bypassed, the reference in the other framework) run in the
child beside the audited code: forgeable, so a disagreement blamed on one of them is a `fail`
(properties/stability.py, `oracles_beside_user_code`), as for a derivation's framework VJPs.

Everything the child sends is the audited code's word: the description is checked field by field
before it sizes an array or names a target, every reply has a fixed form (arrays of the shapes the
judge expects, gradients named as the judge's arrays, errors that are finite non-negative numbers),
and anything else is an `error` on the subject's check (a UserCodeError naming it), never an
exception of the judge.
"""
from __future__ import annotations

import math

import numpy as np

from oracles.base import Elsewhere, OracleResult, OracleUnavailable
from oracles.subject_oracle import RuleError

from ._guard import UserCodeError, clean
from ._remote import Child, Handle

__all__ = ["RemoteAdapter", "remote_subject", "subject_in_child"]

MAX_OUTPUTS = 64
ORACLES = ("torch", "jax")  # the oracles the child may compute (finite differences are the judge's)


def _floating(a) -> bool:
    return isinstance(a, np.ndarray) and (a.dtype.kind == "f" or a.dtype.name == "bfloat16")


class RemoteRun:
    """One call of the subject in the child: its outputs here, its autograd graph there (a handle)."""

    __slots__ = ("handle", "outs")

    def __init__(self, handle: Handle, outs: tuple):
        self.handle, self.outs = handle, outs


class RemoteAdapter:
    """The interface of oracles/torch_subject.TorchSubject and oracles/jax_subject.JaxSubject that
    gradaudit/_subject.py uses, each method a request to the child."""

    remote = True  # gradaudit/_subject.py: the framework oracles come from the child (`sides`)
    last_run = None  # after `first`: the names of the tensors the Function kept (ctx_intermediates)

    def __init__(self, child: Child, key: str, name: str, n_arrays: int):
        self.child, self.key, self.name, self.n = child, key, name, n_arrays

    def _ask(self, op: str, *args):
        fname = f"{self.name} ({op.replace('_', ' ')})"
        value = self.child.subject(self.key, self.name, op, args, fname=fname)
        if type(value) is not list or len(value) != 2 or value[0] not in ("ok", "rule"):
            raise UserCodeError(f"{fname}: the audit child answered in an unknown form")
        if value[0] == "rule":
            raise RuleError(clean(value[1] if isinstance(value[1], str) else "", 2000))
        return value[1]

    def _arrays(self, value, what: str, n: int | None = None, *, loose: bool = False) -> list:
        """A list of arrays (`n` of them); `loose`: anything may stand in it (a rule's raw gradients,
        which gradaudit/_subject.py's contract check names: "grad[x] is a Tensor")."""
        ok = type(value) is list and (len(value) == n if n is not None else 0 < len(value) <= MAX_OUTPUTS)
        if ok and not loose:
            ok = all(isinstance(a, np.ndarray) for a in value)
        if not ok:
            raise UserCodeError(f"{self.name}: the audit child returned {what} in an unknown form")
        return value

    # ---- the subject itself -------------------------------------------------------------------

    def run(self, arrays, params: dict, device: str = "cpu", layout: str | None = None) -> RemoteRun:
        got = self._ask("run", list(arrays), dict(params), device, layout)
        if type(got) is not list or len(got) != 2 or not isinstance(got[1], Handle):
            raise UserCodeError(f"{self.name}: the audit child returned its call in an unknown form")
        return RemoteRun(got[1], tuple(self._arrays(got[0], "the outputs")))

    @staticmethod
    def outputs(run: RemoteRun):
        return run.outs if len(run.outs) > 1 else run.outs[0]

    def rule(self, run: RemoteRun, douts, device: str = "cpu"):
        got = self._ask("rule", run.handle, list(douts), device)
        if type(got) is not list or len(got) != 2 or type(got[1]) is not bool:
            raise UserCodeError(f"{self.name}: the audit child returned the rule's gradients in an unknown form")
        return self._arrays(got[0], "the rule's gradients", self.n, loose=True), got[1]

    def rule_batched(self, run: RemoteRun, batched_douts, device: str = "cpu") -> list:
        return self._arrays(self._ask("rule_batched", run.handle, list(batched_douts), device), "batched gradients",
                            self.n)

    def jvp_transposed(self, arrays, params: dict, douts, device: str = "cpu") -> list:
        return self._arrays(self._ask("jvp_transposed", list(arrays), dict(params), list(douts), device),
                            "the forward-mode gradients", self.n)

    # ---- second order ---------------------------------------------------------------------------

    def first(self, xs, ds, params: dict, device: str = "cpu"):
        got = self._ask("first", list(xs), list(ds), dict(params), device)
        if type(got) is not list or len(got) != 3 or not isinstance(got[1], Handle) or type(got[2]) is not list:
            raise UserCodeError(f"{self.name}: the audit child returned the first-order rule in an unknown form")
        # the names of what the Function kept on ctx: only ever words in a message
        self.last_run = [clean(k, 80) for k in got[2][:32] if isinstance(k, str)]
        return self._arrays(got[0], "the rule's gradients", self.n, loose=True), got[1]

    @staticmethod
    def ctx_intermediates(kept) -> list:
        return list(kept)

    def second(self, handle, ddx, device: str = "cpu") -> list:
        return self._arrays(self._ask("second", handle, list(ddx), device), "the second-order gradients")

    def second_jvp_transposed(self, xs, ds, params: dict, ddx, device: str = "cpu") -> list:
        return self._arrays(self._ask("second_jvp_transposed", list(xs), list(ds), dict(params), list(ddx), device),
                            "the forward-over-reverse gradients")

    # ---- what the oracles differentiate -----------------------------------------------------------

    def numpy_forward(self, device: str = "cpu"):
        return RemoteForward(self, second=False)

    def numpy_first_grads(self, n_inputs: int, device: str = "cpu"):
        return RemoteForward(self, second=True)

    def sides(self, subject, check: str, state) -> tuple[dict, dict]:
        """gradaudit/_subject.py's `oracle_sides` for a subject in the child: torch and JAX there (where the
        subject and its reference live), finite differences here, of the child's forward values."""
        from ._subject import numeric_vjp
        from .function import SECOND_ORDER

        second = check in SECOND_ORDER
        if second not in self._unavailable:
            got = self._ask("oracles", second)
            if type(got) is not dict or any(o not in ORACLES or not isinstance(w, str) for o, w in got.items()):
                raise UserCodeError(f"{self.name}: the audit child named its oracles in an unknown form")
            self._unavailable[second] = {o: clean(w, 500) for o, w in got.items()}
        unavailable = dict(self._unavailable[second])
        forward = self.numpy_first_grads(self.n) if second else self.numpy_forward()
        same_math = None if subject.framework in unavailable else _SameMath(self, second)
        sides = {o: (forward, _OracleVjp(self, o, second)) for o in ORACLES if o not in unavailable}
        sides["numeric"] = (forward, numeric_vjp(subject, self, state, second, same_math))
        return sides, unavailable

    @property
    def _unavailable(self) -> dict:
        return self.__dict__.setdefault("_unavailable_by_order", {})


class RemoteForward(Elsewhere):
    """The subject's forward (or, `second`, its first-order rule as a function of inputs and upstream
    gradients) evaluated in the child at the judge's points: what finite differences differentiate."""

    def __init__(self, ad: RemoteAdapter, second: bool):
        self.ad, self.second = ad, second

    def __call__(self, *arrays, **params):
        (out,) = self.batch([arrays], params)
        return out

    def batch(self, points: list, params: dict) -> list:
        if not points:
            return []
        got = self.ad._ask("forward", [list(p) for p in points], dict(params), self.second, self.ad.n)
        if type(got) is not list or len(got) != len(points):
            raise UserCodeError(f"{self.ad.name}: the audit child returned {len(points)} forward values in an "
                                f"unknown form")
        outs = [self.ad._arrays(o, "a forward value") for o in got]
        shapes = [a.shape for a in outs[0]]
        if any([a.shape for a in o] != shapes for o in outs):
            raise UserCodeError(f"{self.ad.name}: the forward's outputs changed shape between nearby points")
        return [tuple(o) if len(o) > 1 else o[0] for o in outs]

    def vjp(self, oracle, arrays, params, douts, *, dtype, device):  # (the framework sides are _OracleVjp's)
        raise OracleUnavailable(f"{oracle}: not computed from this forward")


def _errors(raw, what: str) -> dict:
    """A low precision's own error of the same math, per array: finite non-negative numbers."""
    ok = type(raw) is dict and set(raw) <= {"forward", "grads"} and all(
        type(v) is dict and all(isinstance(k, str) and type(e) in (int, float) and math.isfinite(e) and e >= 0
                                for k, e in v.items()) for v in raw.values())
    if not ok:
        raise UserCodeError(f"{what}: the audit child returned its own error in an unknown form")
    return {"forward": dict(raw.get("forward") or {}), "grads": dict(raw.get("grads") or {})}


class _OracleVjp:
    """The oracle interface's `vjp` of torch or JAX for the subject, computed in the child."""

    def __init__(self, ad: RemoteAdapter, oracle: str, second: bool):
        self.ad, self.oracle, self.second = ad, oracle, second

    def __call__(self, forward, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str, **_):
        what = f"{self.ad.name} (the {self.oracle} oracle)"
        got = self.ad._ask("oracle_vjp", self.oracle, self.second, dict(arrays), dict(params), list(douts), dtype,
                           device)
        if type(got) is not dict or set(got) != {"out", "grads", "reference_error"} or type(got["grads"]) is not dict:
            raise UserCodeError(f"{what}: the audit child answered in an unknown form")
        grads = got["grads"]
        if set(grads) != set(arrays) or any(not _floating(g) or g.shape != np.shape(arrays[n])
                                            for n, g in grads.items()):
            raise UserCodeError(f"{what}: the audit child returned gradients that are not one float array per "
                                f"input, of its shape")
        out = None if got["out"] is None else tuple(self.ad._arrays(got["out"], f"{self.oracle}'s forward"))
        info = {}
        if got["reference_error"] is not None:
            info["reference_error"] = _errors(got["reference_error"], what)
        return OracleResult(out=None if out is None else out if len(out) > 1 else out[0], grads=grads, info=info)


class _SameMath:
    """(arrays, params, douts, dtype, device) -> the subject's own primal's error in a low precision
    (oracles/subject_oracle.same_math_errors), computed in the child."""

    def __init__(self, ad: RemoteAdapter, second: bool):
        self.ad, self.second = ad, second

    def __call__(self, arrays, params, douts, dtype, device):
        got = self.ad._ask("same_math", self.second, dict(arrays), dict(params), list(douts), dtype, device)
        return _errors(got, f"{self.ad.name} (its own error in {dtype})")


class _RemoteTolerance:
    """A subject's per-case tolerance factor (`tolerance=(case -> factor, reason)`), the user's code:
    evaluated in the child, a finite number >= 1 or an error."""

    def __init__(self, ad: RemoteAdapter):
        self.ad = ad

    def __call__(self, case) -> float:
        # the factor the subject declared for this case, computed in the child; no tolerance of the
        # judge's: it is checked here to be a positive finite number, then applied as a catalogue override
        got = self.ad._ask("tolerance", case)
        if type(got) not in (int, float) or not math.isfinite(got) or got <= 0:
            raise UserCodeError(f"{self.ad.name}: its tolerance factor is {clean(repr(got), 60)}, not a positive "
                                f"finite number")
        return float(got)


# ---- the subject, rebuilt here from the child's description -------------------------------------

def subject_in_child(code, job):
    """The subject of a job (gradaudit.audit.Job) whose module the child `code` (gradaudit._proxy.InChild)
    imported, rebuilt here; its calls go to the child."""
    found = [s for s in code.describe(job.key).get("subjects") or () if type(s) is dict and s.get("name") == job.name]
    if len(found) != 1:
        raise UserCodeError(f"no gradaudit.function subject {clean(job.name, 200)!s} in the audited module any more")
    return remote_subject(code.child, job.key, found[0])


_KINDS = ("array", "const", "labels", "onehot", "mask", "choice", "fixed")


def remote_subject(child: Child, key: str, desc: dict):
    """A FunctionSubject whose functions run in the child (gradaudit/function.py's description of it,
    checked here before it draws an array or names a target)."""
    from properties.strategies import REGIMES

    from ._proxy import MAX_SIZE, described_argspec
    from .function import CHECKS, DTYPES, FunctionSubject

    name = desc.get("name")
    if not isinstance(name, str) or not name or len(name) > 200 or clean(name, 200) != name:
        raise UserCodeError(f"a gradaudit.function subject named {clean(repr(name), 80)}")

    def bad(what):
        return UserCodeError(f"{name}: the audit child described {what} in an unknown form")

    def specs(field):
        raw = desc.get(field)
        if type(raw) is not list or any(type(p) is not list or len(p) != 2 for p in raw):
            raise bad(field)
        out = {n: described_argspec(n, s) for n, s in raw}
        if any(not n.isidentifier() or s.kind not in _KINDS or (s.regime or "typical") not in REGIMES
               for n, s in out.items()):
            raise bad(field)
        return out

    arrays, params = specs("arrays"), specs("params")
    if not arrays or len(arrays) > 64 or set(arrays) & set(params):
        raise bad("its arguments")
    if desc.get("framework") not in ("torch", "jax") or desc.get("order") not in (1, 2):
        raise bad("its framework or order")
    regimes, checks, dtypes = desc.get("regimes"), desc.get("checks"), desc.get("dtypes")
    if type(regimes) is not list or not regimes or any(r not in REGIMES for r in regimes):
        raise bad("its regimes")
    if type(checks) is not list or not checks or any(c not in CHECKS for c in checks):
        raise bad("its checks")
    if dtypes is not None and (type(dtypes) is not list or not dtypes or any(d not in DTYPES for d in dtypes)):
        raise bad("its dtypes")
    sizes = desc.get("sizes")
    if type(sizes) is not dict or any(not isinstance(k, str) or type(v) is not list or not v or
                                      any(type(x) is not int or not 0 <= x <= MAX_SIZE for x in v)
                                      for k, v in sizes.items()):
        raise bad("its sizes")
    tol = desc.get("tolerance")  # the subject's declared (factor or "per case", reason), validated below
    ad = RemoteAdapter(child, key, name, len(arrays))
    if tol is not None:
        if type(tol) is not list or len(tol) != 2 or not isinstance(tol[1], str) or not (
                tol[0] == "per case" or (type(tol[0]) in (int, float) and math.isfinite(tol[0]) and tol[0] > 0)):
            raise bad("its tolerance")
        tol = (_RemoteTolerance(ad) if tol[0] == "per case" else float(tol[0]), clean(tol[1], 500))
    source = desc.get("source")
    s = FunctionSubject(fn=None, name=name, framework=desc["framework"], kind="remote", order=desc["order"],
                        source=clean(source, 500) if isinstance(source, str) else "", tolerance=tol,
                        regimes=tuple(regimes), sizes={k: tuple(v) for k, v in sizes.items()},
                        dtypes=tuple(dtypes) if dtypes else None, checks=tuple(c for c in CHECKS if c in checks),
                        order_names=[*arrays, *params], arrays=arrays, params=params)
    s.remote_adapter = ad
    return s
