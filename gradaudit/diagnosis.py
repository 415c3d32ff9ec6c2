"""Why a model class fails: the layer functions its `loss` calls, traced while it runs and each
checked on its own against an oracle, and the parameters whose gradient a probe finds wrong.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from . import cs231n


def traced_calls(fn: Callable[[], object]) -> dict[str, Callable]:
    """The cs231n-named functions that fn() calls, directly or through helpers (layer_utils), by name."""
    wanted = {f for p in cs231n.PAIRS for f in (*p.functions, p.forward and f"{p.forward}_alt") if f}
    seen: dict[str, Callable] = {}

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name in wanted:
            f = frame.f_globals.get(frame.f_code.co_name)
            if getattr(f, "__code__", None) is frame.f_code:
                seen.setdefault(frame.f_code.co_name, f)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(previous)
    return seen


def draw_cases(strategy, n: int) -> list:
    """n cases of a strategy, the same ones every time (a derandomized Hypothesis run)."""
    from hypothesis import HealthCheck, Phase, given, settings

    from properties.config import module_independent_draws

    out = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(case):
        out.append(case)

    with module_independent_draws():
        collect()
    return out[:n]


_LAYER_VERDICTS: dict = {}  # (pair target, function objects) -> (ok, why): one check per process


def layer_verdicts(called: dict[str, Callable], guard, oracle: str) -> dict[str, tuple[bool, str]]:
    """Each cs231n pair whose functions `called` holds, checked on a few typical cases against `oracle`."""
    from properties import catalogue
    from properties.evaluate import evaluate

    names, ops = set(called), catalogue.load()
    out = {}
    for pair in cs231n.PAIRS:
        pair = cs231n.resolve(pair, names)
        if pair.op not in ops or not all(f in names for f in pair.required):
            continue
        key = (pair.target, tuple(id(called[f]) for f in pair.functions if f in called))
        if key not in _LAYER_VERDICTS:
            fns = {f: guard.wrap(called[f], f) for f in pair.functions if f in called}
            verdict = (True, "")
            try:
                target, inputs = cs231n.build_target(pair, fns, {})
                for case in draw_cases(inputs("typical", "full"), 3):
                    v = evaluate(ops[pair.op], target, case, "float64", [(oracle, "cpu")]).sides[(oracle, "cpu")]
                    if v.status in ("fail", "error"):
                        verdict = (False, v.message)
                        break
            except Exception as e:  # its check could not even be set up: that is its verdict
                verdict = (False, f"{type(e).__name__}: {e}")
            _LAYER_VERDICTS[key] = verdict
        out[pair.target] = _LAYER_VERDICTS[key]
    return out


def wrong_params(target, inputs, oracle: str, geometries) -> list[str]:
    """The params whose gradient disagrees with `oracle` on one case of `geometries`."""
    import oracles
    from properties import tolerances
    from properties.evaluate import compare_any, run_target

    try:  # the rich geometry: a batch of 2 hides things (one of two units after a batch norm is off)
        case = draw_cases(inputs("typical", "full", geometries), 1)[0]
        ev = run_target(target, case, "float64", douts=(np.float64(1.0),))
        if ev.error:
            return []
        res = oracles.get(oracle).vjp(target.oracle_forward(oracle), ev.arrays, ev.case.params, ev.douts,
                                      dtype="float64", device="cpu")
    except Exception:
        return []
    pol = tolerances.policy("float64", size=max(a.size for a in ev.arrays.values()), oracle=oracle,
                            input_max=max(float(np.abs(a).max()) for a in ev.arrays.values()),
                            noise=res.info.get("noise", 0.0))
    return [n for n in ev.grads if not compare_any(ev.grads[n], res.grads[n], pol, "float64").ok]
