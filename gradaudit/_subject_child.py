"""A `gradaudit.function` subject under `gradaudit audit`: what the audit child computes for it.

The judge (gradaudit/_subject_remote.py) draws the cases, judges the rule's contract (shapes, dtypes,
batching), compares, blames and writes the records; it takes the finite differences itself, from
values of the subject's forward computed here. Here, where the subject lives, run only what needs the
subject's own framework around the user's code: the subject called (its outputs back, the call's
autograd graph kept here as a handle), its rule called on it (its gradients back, as the rule returned
them), the second-order calls, and the two framework oracles (the primal with the rule bypassed, the
reference forward in the other framework), which therefore run beside the audited code and are
forgeable (docs/security.md): the judge counts a disagreement blamed on them as a `fail`.

One request kind, `subject`, with an `op` from the fixed table `OPS`; whatever the user's code raises
is a `raised` reply naming the call, a rule that breaks autograd's contract (RuleError) comes back as
`["rule", message]` for the judge to word as it does in-process, an oracle that cannot judge the
subject is an `unavailable` reply.
"""
from __future__ import annotations

from oracles.base import OracleUnavailable, as_tuple
from oracles.subject_oracle import RuleError

from ._confine import limit_cpu
from ._guard import UserCodeError, clean, describe_exception

__all__ = ["OPS", "serve"]


class _Kept:
    """What stays here between two requests (an autograd graph, a second-order handle)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _subject(server, key: str, name: str):
    from .function import subjects_in

    cache = server.__dict__.setdefault("subjects", {})
    if (key, name) not in cache:
        found = [s for s in subjects_in(server.modules[key]) if s.name == name]
        if len(found) != 1:
            raise UserCodeError(f"{'no' if not found else 'more than one'} gradaudit.function subject named "
                                f"{clean(name, 200)!s} in the audited module")
        cache[(key, name)] = found[0]
    return cache[(key, name)]


def _sides(subject, second: bool):
    """The framework oracles' (forward, vjp) for the subject's first- or second-order checks, and the
    unavailable ones with why (gradaudit/_subject.py's own, built here)."""
    from ._subject import SubjectState, adapter, oracle_sides as sides_of

    key = (id(subject), second)  # one per subject and order: a low precision's same-math errors are memoised
    if key not in _SIDES:
        _SIDES[key] = sides_of(subject, adapter(subject), "vjp_of_vjp" if second else "vjp", SubjectState())
    return _SIDES[key]


_SIDES: dict = {}  # the subjects themselves stay alive in the server's cache


def _kept(h):
    if not isinstance(h, _Kept):
        raise UserCodeError("the judge passed back something that is not a value this child kept")
    return h.value


def _run(s, ad, arrays, params, device, layout):
    run = ad.run(arrays, params, device, layout)
    return [list(as_tuple(ad.outputs(run))), _Kept(run)]


def _rule(s, ad, run, douts, device):
    grads, raw = ad.rule(_kept(run), douts, device)
    return [list(grads), bool(raw)]


def _first(s, ad, xs, ds, params, device):
    grads, handle = ad.first(xs, ds, params, device)
    kept = ad.ctx_intermediates(ad.last_run) if s.framework == "torch" and ad.last_run is not None else []
    return [list(grads), _Kept(handle), list(kept)]


def _forward(s, ad, points, params, second, n):
    fn = ad.numpy_first_grads(n) if second else ad.numpy_forward()
    return [list(as_tuple(fn(*p, **params))) for p in points]


def _oracles(s, ad, second):
    return dict(_sides(s, second)[1])


def _oracle_vjp(s, ad, oracle, second, arrays, params, douts, dtype, device):
    sides, unavailable = _sides(s, second)
    if oracle in unavailable or oracle not in sides or oracle == "numeric":
        raise OracleUnavailable(unavailable.get(oracle, f"{oracle}: not an oracle of {s.name} here"))
    forward, vjp = sides[oracle]
    res = vjp(forward, arrays, params, tuple(douts), dtype=dtype, device=device)
    return {"out": list(as_tuple(res.out)) if res.out is not None else None, "grads": dict(res.grads),
            "reference_error": res.info.get("reference_error")}


def _same_math(s, ad, second, arrays, params, douts, dtype, device):
    from ._subject import framework_oracle, oracle_forwards

    own = oracle_forwards(s, second).get(s.framework)
    if isinstance(own, OracleUnavailable):
        raise own
    from oracles.subject_oracle import same_math_errors

    return same_math_errors(framework_oracle(s.framework)[0], own)(arrays, params, tuple(douts), dtype, device)


def _tolerance(s, ad, case):
    # the subject's own declared factor (function(..., tolerance=(factor, reason)): its reason is
    # mandatory and every record's tolerance source shows both); computed here, as it is user code
    factor = s.tolerance[0] if s.tolerance else 1.0
    return float(factor(case) if callable(factor) else factor)


OPS = {  # op -> what it runs on (subject, adapter, *args); every argument the judge's own data
    "run": _run,
    "rule": _rule,
    "rule_batched": lambda s, ad, run, batch, device: list(ad.rule_batched(_kept(run), batch, device)),
    "jvp_transposed": lambda s, ad, arrays, params, douts, device: list(ad.jvp_transposed(arrays, params, douts,
                                                                                          device)),
    "first": _first,
    "second": lambda s, ad, handle, ddx, device: list(ad.second(_kept(handle), ddx, device)),
    "second_jvp_transposed": lambda s, ad, xs, ds, params, ddx, device: list(
        ad.second_jvp_transposed(xs, ds, params, ddx, device)),
    "forward": _forward,
    "oracles": _oracles,
    "oracle_vjp": _oracle_vjp,
    "same_math": _same_math,
    "tolerance": _tolerance,
}


def serve(server, meta, data, enc) -> dict:
    """One `subject` request of the judge (gradaudit/_child.py's Server hands it over)."""
    from ._subject import adapter

    op = OPS.get(meta.get("op"))
    if op is None:
        raise ValueError(f"unknown subject request {clean(meta.get('op'), 40)!s}")
    key, name = meta["fn"]
    label = clean(meta.get("label") or name, 200)
    args = server.decode(meta["args"], data)

    def attempt():
        s = _subject(server, key, name)
        try:
            return "ok", op(s, adapter(s), *args)
        except RuleError as e:
            return "rule", str(e)
        except OracleUnavailable as e:
            return "unavailable", str(e)

    limit_cpu(server.cpu_per_call)
    how, value = server.guard.call(attempt, label)
    if how == "unavailable":
        return {"kind": "unavailable", "message": clean(value, 500)}
    try:  # ["ok", value], or ["rule", what the rule did wrong] (the judge's contract check words it)
        return {"kind": "ok", "value": {"L": [how, _encode(value, server, enc) if how == "ok" else clean(value)]}}
    except (ValueError, TypeError, RecursionError, MemoryError) as e:
        raise UserCodeError(f"{label} returned a value that cannot be sent back: {clean(describe_exception(e))}") \
            from None


def _encode(value, server, enc):
    """The value, with what stays here (`_Kept`) as handles and any other object the rule returned as
    a handle named by its type (the judge names it: "grad[x] is a Tensor")."""
    if isinstance(value, _Kept):
        return {"H": [server.keep(value), "kept"]}
    if type(value) is list:
        return {"L": [_encode(v, server, enc) for v in value]}
    if type(value) is dict:
        return {"D": [[enc.value(k), _encode(v, server, enc)] for k, v in value.items()]}
    return enc.value(value)
