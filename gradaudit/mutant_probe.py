"""The probe of `gradaudit mutate` (run in its child, gradaudit/_mutant_worker.py): does a mutant
compute another gradient than the original, and where? Both backwards run on the same float64
inputs drawn from the judge's own strategies; the probe decides equivalent and invalid mutants and
keeps where a mutant differs, to explain a survivor."""
from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["EQUIV_ATOL", "EQUIV_RTOL", "combine", "difference", "draw_cases", "geometry", "probe", "run_side", "shapes_of"]

EQUIV_RTOL = 1e-9  # float64 gradients of the same formula agree to ~1e-15; a mistake is far above this
EQUIV_ATOL = 1e-12  # times the case's magnitude: a gradient of 1e-17 where 0 is right is rounding, not a bug


# ---- the probe: does the mutant compute another gradient, and where? ----------------------------

def draw_cases(subj, n_narrow: int, n_full: int) -> list[tuple]:
    """(regime, breadth, case, dout seed) drawn from the judge's strategies, reproducibly."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from properties.config import module_independent_draws

    out = []
    for regime in subj.regimes:
        for br, n in (("narrow", n_narrow), ("full", n_full)):
            if n <= 0:
                continue
            got = []

            def collect(case, seed):
                got.append((case, seed))

            test = settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate],
                            deadline=None, suppress_health_check=list(HealthCheck))(
                given(subj.inputs(regime, br), st.integers(0, 2**31 - 1))(collect))
            with contextlib.suppress(Exception), module_independent_draws():
                test()
            out += [(regime, br, c, s) for c, s in got]
    return out


def as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def shapes_of(v) -> list:
    return [list(np.shape(a)) if isinstance(a, np.ndarray) else type(a).__name__ for a in as_tuple(v)]


def run_side(subj, case, douts):
    """(forward output, gradients as a tuple, whether the backward wrote into dout, the shapes the
    user's function itself returned), on private copies."""
    arrays = [np.array(a, copy=True) for a in case.arrays.values()]
    params = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in case.params.items()}
    if subj.raw is not None:
        subj.raw.clear()
    out, cache = subj.target.forward(*arrays, **params)
    d = [np.array(x, copy=True) for x in douts]
    grads = as_tuple(subj.target.backward(*d, cache))
    written = any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(d, douts))
    raw = shapes_of(subj.raw[-1]) if subj.raw else None
    return as_tuple(out), grads, written, raw


def geometry(case) -> str:
    shapes = ", ".join(f"{n}{tuple(a.shape)}" for n, a in case.arrays.items())
    params = ", ".join(f"{k}={v!r}" for k, v in case.scalar_params().items() if not isinstance(v, (list, dict)))
    return shapes + (f"; {params}" if params else "")


def difference(g0, g1, scale: float) -> tuple[str | None, float, list]:
    """(None | 'count' | 'shape', worst relative difference, names of the gradients that differ)."""
    if len(g0) != len(g1):
        return "count", float("inf"), []
    worst, which = 0.0, []
    for k, (a, b) in enumerate(zip(g0, g1)):
        try:
            a = np.asarray(a, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64)
        except (TypeError, ValueError):
            return "shape", float("inf"), [k]
        if a.shape != b.shape:
            return "shape", float("inf"), [k]
        fa, fb = np.isfinite(a), np.isfinite(b)
        if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb]):
            worst, which = float("inf"), which + [k]
            continue
        if not fa.any():
            continue
        err = float(np.abs(a[fa] - b[fb]).max())
        mag = float(np.abs(a[fa]).max())
        if err > EQUIV_RTOL * mag + EQUIV_ATOL * scale:
            which.append(k)
            worst = max(worst, err / max(mag, 1e-300))
    return None, worst, which


def probe(orig, mut, cases: list) -> dict:
    from properties.spec import Case

    s = {"cases": len(cases), "ran": 0, "broken": 0, "differs": 0, "kink_only": 0, "written": 0, "max_rel": 0.0,
         "by_regime": {}, "by_breadth": {"narrow": [0, 0], "full": [0, 0]}, "example": None, "error": None,
         "geoms_differ": [], "geoms_narrow": []}
    for regime, br, case, seed in cases:
        g = geometry(case)
        if br == "narrow" and g not in s["geoms_narrow"]:
            s["geoms_narrow"].append(g)
        with np.errstate(all="ignore"):
            try:
                out, _ = orig.target.forward(*[np.array(a, copy=True) for a in case.arrays.values()], **case.params)
                rng = np.random.default_rng(seed)
                douts = tuple(np.asarray(rng.standard_normal(np.shape(o))) for o in as_tuple(out))
                o0, g0, w0, raw0 = run_side(orig, case, douts)
            except Exception:  # noqa: BLE001  the original cannot run this input: not evidence either way
                continue
            s["ran"] += 1
            r = s["by_regime"].setdefault(regime, [0, 0])
            r[1] += 1
            s["by_breadth"][br][1] += 1
            try:
                o1, g1, w1, raw1 = run_side(mut, case, douts)
            except Exception as e:  # noqa: BLE001
                s["broken"] += 1
                s["error"] = s["error"] or f"{type(e).__name__}: {e}"[:300]
                continue
        if raw0 != raw1:  # the adapter may reshape what the function returned: a wrong shape is still wrong
            s["broken"] += 1
            s["reshaped"] = s.get("reshaped", 0) + 1
            s["error"] = s["error"] or f"returns gradients of shapes {raw1}, the original {raw0}"
            continue
        scale = max([1.0] + [float(np.abs(np.asarray(a, dtype=np.float64)).max(initial=0))
                             for a in case.arrays.values()]
                    + [float(np.abs(d).max(initial=0)) for d in douts])
        # the forward output too: a loss function `loss, dx = f(x, y)` is mutated as a whole
        bad, rel, which = difference(g0 + o0, g1 + o1, scale)
        if bad:
            s["broken"] += 1
            s["error"] = s["error"] or f"the mutant returned the wrong {bad} of gradients"
            continue
        if which and all(k < len(g0) for k in which) and orig.spec is not None and orig.spec.kinks is not None \
                and orig.spec.subgradient is not None:
            c64 = Case({n: np.asarray(a, dtype=np.float64) for n, a in case.arrays.items()}, case.params)
            try:
                at_kink = orig.spec.kinks(c64, 0.0)
                ok = at_kink and orig.spec.subgradient(c64, douts, dict(zip(orig.array_names, g1)))[0]
            except Exception:  # noqa: BLE001
                ok = False
            if ok:
                s["kink_only"] += 1
                which = []
        written = w1 and not w0
        s["written"] += int(written)
        if which or written:
            s["differs"] += int(bool(which))
            r[0] += 1
            s["by_breadth"][br][0] += 1
            s["max_rel"] = max(s["max_rel"], rel)
            if g not in s["geoms_differ"] and len(s["geoms_differ"]) < 8:
                s["geoms_differ"].append(g)
            if s["example"] is None:
                names = [orig.array_names[k] if k < len(orig.array_names) else
                         ("forward" if k >= len(g0) else str(k)) for k in which]
                s["example"] = {"regime": regime, "breadth": br, "geometry": g, "grads": names,
                                "rel": rel, "written": written}
    if s["ran"] == 0:
        s["status"] = "unprobed"
    elif s["broken"] == s["ran"]:
        s["status"] = "invalid"
    elif s["differs"] or s["written"] or s["broken"]:
        s["status"] = "differs"
    else:
        s["status"] = "equivalent"
    return s


def combine(statuses: list[str]) -> str:
    """One mutant, several judges: it differs if any judge sees a difference."""
    for st in ("differs", "invalid", "equivalent"):
        if st in statuses:
            return st
    return "unprobed"
