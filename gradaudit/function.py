"""`gradaudit.function`: a framework function whose derivative is written by hand, checked the way
gradaudit checks a NumPy backward.

    import gradaudit

    class LayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta): ...
        @staticmethod
        def backward(ctx, dout): ...

    layernorm = gradaudit.function(LayerNorm, reference=layernorm_xp, order=2,
                                   x=("N", "D"), gamma=("D",), beta=("D",))

The subject is `SomeFunction.apply` or the Function class itself, a `jax.custom_vjp` or
`jax.custom_jvp` function, or any torch or JAX callable. Its arguments are declared by keyword, as a
`@gradaudit.derivation` annotates its own: a shape tuple of symbols (`x=("N", "D")`) or
`gradaudit.array(...)` for a float array that is differentiated; `gradaudit.labels`, `onehot`,
`const`, `mask`, `choice` or a plain value for one that is not. They are passed positionally, in the
order of the function's signature.

What is checked (each a target of its own in the records, `<name>.<check>`):

- `vjp`: the hand-written rule's vector-Jacobian product, called directly (`grad_fn.apply`, the
  custom_vjp's `bwd`), so a gradient of the wrong shape or dtype is seen before autograd's engine
  sums it over the broadcast axes or casts it silently (gradcheck never sees it);
- `vjp_strided`, `vjp_expanded` (torch): the same with non-contiguous inputs, and inputs expanded
  along an axis (stride 0: aliased elements);
- `vjp_batched`: the VJPs of a batch of upstream gradients computed at once (torch
  `is_grads_batched`, `jax.vmap`), each against the one computed alone;
- `jvp`: the forward-mode rule (a `custom_jvp`'s, a Function's `jvp`), its Jacobian built column by
  column and transposed;
- with `order=2`, `vjp_of_vjp` (reverse-over-reverse: the gradient of the backward, as double
  backward computes it) and `jvp_of_vjp` (forward-over-reverse) where forward mode reaches the rule.

Each against oracles independent of the rule: autograd of the primal computation with the custom rule
bypassed (the Function's `forward` run under autograd, the custom_vjp's undecorated `fun`), the
other framework running `reference(xp, *args)` (written against the array-API namespace `xp`, as a
derivation's forward), and float64 finite differences of the subject's own forward.

This module imports NumPy only: `import gradaudit` stays free of torch and jax.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from reports.text import clean

from .arguments import ArgSpec

__all__ = ["CHECKS", "FunctionSubject", "built_subject", "describe_subjects", "described", "function", "subject_jobs", "subject_of",
           "subjects_in"]

# every check a subject can get, in the order they run; `checks=` picks among them
CHECKS = ("vjp", "vjp_strided", "vjp_expanded", "vjp_batched", "jvp", "vjp_of_vjp", "jvp_of_vjp")
SECOND_ORDER = ("vjp_of_vjp", "jvp_of_vjp")
LOW_PRECISION = ("float16", "bfloat16")
DTYPES = ("float64", "float32", *LOW_PRECISION)


def _torch_function_class(fn):
    """The torch.autograd.Function subclass `fn` is (or whose `.apply` it is), else None. Looks torch up
    only if the caller's process has imported it already."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cls = fn if isinstance(fn, type) else getattr(fn, "__self__", None)
    if isinstance(cls, type) and issubclass(cls, torch.autograd.Function):
        return cls
    return None


def _jax_kind(fn) -> str | None:
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    if isinstance(fn, jax.custom_vjp):
        return "custom_vjp"
    if isinstance(fn, jax.custom_jvp):
        return "custom_jvp"
    return None


def _framework_of_callable(fn) -> str | None:
    """torch or jax, from the modules a plain callable's globals hold (None when neither or both)."""
    g = getattr(inspect.unwrap(fn), "__globals__", {}) or {}
    found = set()
    for v in g.values():
        mod = getattr(v, "__name__", "") if inspect.ismodule(v) else ""
        top = mod.split(".")[0]
        if top in ("torch", "jax"):
            found.add(top)
    mod = getattr(fn, "__module__", "") or ""
    if mod.split(".")[0] in ("torch", "jax"):
        found.add(mod.split(".")[0])
    return found.pop() if len(found) == 1 else None


def _signature_names(fn, kind: str, cls) -> list[str] | None:
    """The positional parameters the subject is called with, in order (None when unknown)."""
    try:
        if cls is not None:
            params = list(inspect.signature(cls.forward).parameters.values())
            torch = sys.modules["torch"]
            if cls.setup_context is torch.autograd.Function.setup_context:  # forward(ctx, ...)
                params = params[1:]
        elif kind in ("custom_vjp", "custom_jvp"):
            params = list(inspect.signature(fn.fun).parameters.values())
        else:
            params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _arg_spec(name: str, value) -> tuple[ArgSpec, bool]:
    """(what to draw, differentiated?) for one declared argument."""
    if isinstance(value, ArgSpec):
        if value.kind == "array":
            return value, True
        return value, False
    if isinstance(value, (tuple, list)):
        from .arguments import array

        return array(*value), True
    if value is None or isinstance(value, (bool, int, float, str)):
        return ArgSpec("fixed", values=(value,)), False
    raise TypeError(f"argument {name!r}: declare it with a shape tuple such as (\"N\", \"D\") (differentiated), "
                    f"a gradaudit spec (array, labels, onehot, const, mask, choice) or a plain value, "
                    f"not {type(value).__name__}")


@dataclass(eq=False)
class FunctionSubject:
    """A framework function with a hand-written derivative, and what to draw for it."""

    fn: Callable
    name: str
    framework: str  # "torch" | "jax"
    kind: str  # "function" (torch.autograd.Function) | "custom_vjp" | "custom_jvp" | "callable"
    reference: Callable | None = None
    order: int = 1
    source: str = ""
    tolerance: tuple | None = None  # (rtol factor or case -> factor, the numerical reason): properties.spec.Tolerance
    regimes: tuple = ("typical",)
    sizes: dict = field(default_factory=dict)
    dtypes: tuple | None = None  # None: the run's
    checks: tuple = ()
    order_names: list = field(default_factory=list)  # every declared argument, in call order
    arrays: dict = field(default_factory=dict)  # name -> ArgSpec: differentiated, in order
    params: dict = field(default_factory=dict)  # name -> ArgSpec: not differentiated

    # -- what _draw.cases needs (the same drawing as a derivation's) -------------------------------

    def symbols(self) -> list[str]:
        seen = []
        for s in (*self.arrays.values(), *self.params.values()):
            for d in s.dims():
                if d not in seen:
                    seen.append(d)
        return seen

    def inputs(self, regime: str, breadth: str):
        from ._draw import cases

        return cases(self, regime, breadth)

    def assemble(self, arrays, params) -> list:
        """The positional arguments of a call: `arrays` (the differentiated ones, in order) and `params`
        (by name) put back in the signature's order."""
        it = iter(arrays)
        return [next(it) if n in self.arrays else params[n] for n in self.order_names]

    def target_name(self, check: str) -> str:
        return f"{self.name}.{check}"

    def describe(self) -> dict:
        return {"name": self.name, "framework": self.framework, "kind": self.kind, "order": self.order,
                "checks": list(self.checks), "arrays": {n: list(s.shape) for n, s in self.arrays.items()},
                "reference": getattr(self.reference, "__name__", None) if self.reference else None}


def function(fn: Callable, *, reference: Callable | None = None, order: int = 1, name: str | None = None,
             framework: str | None = None, regimes=("typical",), sizes: dict | None = None, dtypes=None,
             checks=None, source: str = "", tolerance=None, **shapes) -> FunctionSubject:
    """A subject for a framework function with a hand-written derivative.

    fn: `SomeFunction.apply` or the `torch.autograd.Function` subclass, a `jax.custom_vjp` or
        `jax.custom_jvp` function, or any torch or JAX callable (`framework=` when its module does
        not tell which);
    reference: `reference(xp, *args) -> out`, the same forward against the array-API namespace `xp`:
        the other framework runs it (optional; without it that side is skipped);
    order: 2 adds the gradient of the backward (double backward) to what is checked;
    regimes, sizes: as for `@gradaudit.derivation`; dtypes: the dtypes this subject is checked in
        (default: the run's), float16 and bfloat16 included (judged reference-relative);
    checks: a subset of CHECKS (default: every one that applies);
    tolerance: `(factor, reason)`: the policy's rtol times `factor` (a number, or `case -> number`: a
        condition number), as a catalogue op's override (properties.spec.Tolerance); `reason`, the
        numerical reason, is mandatory. Not used in float16/bfloat16 (reference-relative there);
    **shapes: every argument by name: `x=("N", "D")`, `labels=gradaudit.labels("N", classes="C")`, ...
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    cls = _torch_function_class(fn)
    kind = "function" if cls is not None else _jax_kind(fn) or "callable"
    fw = "torch" if cls is not None else "jax" if kind != "callable" else framework or _framework_of_callable(fn)
    if framework is not None and framework != fw:
        if kind != "callable":
            raise ValueError(f"framework={framework!r}, but {fn!r} is a {'torch' if cls else 'JAX'} function")
        fw = framework
    if fw not in ("torch", "jax"):
        raise TypeError(f"cannot tell whether {getattr(fn, '__name__', fn)!r} is a torch or a JAX function; "
                        f"pass framework='torch' or framework='jax'")
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    if reference is not None and not callable(reference):
        raise TypeError("reference must be a function reference(xp, *args) -> out")
    label = name or (cls.__name__ if cls is not None else getattr(fn, "__name__", None) or type(fn).__name__)
    names = _signature_names(fn, kind, cls)
    if names is not None:
        unknown = [k for k in shapes if k not in names]
        if unknown:
            raise TypeError(f"{label}: {', '.join(map(repr, unknown))} is not an argument of its forward "
                            f"({', '.join(names)})")
        missing = [n for n in names if n not in shapes]
        # arguments left out keep their defaults; those after them cannot be passed positionally
        for i, n in enumerate(names):
            if n in missing and any(m in shapes for m in names[i + 1:]):
                raise TypeError(f"{label}: declare argument {n!r} (a shape tuple, a gradaudit spec or a value): "
                                f"arguments after it are declared and are passed positionally")
        order_names = [n for n in names if n in shapes]
    else:
        order_names = list(shapes)
    arrays, params = {}, {}
    for n in order_names:
        spec, diff = _arg_spec(n, shapes[n])
        (arrays if diff else params)[n] = spec
    if not arrays:
        raise TypeError(f"{label}: no differentiated argument (declare one with a shape tuple such as x=(\"N\", \"D\"))")
    if tolerance is not None:
        if (not isinstance(tolerance, tuple) or len(tolerance) != 2 or not isinstance(tolerance[1], str)
                or not tolerance[1].strip() or not (callable(tolerance[0]) or isinstance(tolerance[0], (int, float)))):
            raise TypeError(f"{label}: tolerance must be (factor, reason): a number or a function case -> number, "
                            f"and the numerical reason for it")
    if isinstance(regimes, str):
        regimes = (regimes,)
    if dtypes is not None:
        dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
        bad = [d for d in dtypes if d not in DTYPES]
        if bad:
            raise ValueError(f"{label}: unknown dtype {', '.join(map(repr, bad))}; accepted: {', '.join(DTYPES)}")
    applicable = _applicable(fw, kind, cls, order)
    if checks is None:
        chosen = applicable
    else:
        chosen = (checks,) if isinstance(checks, str) else tuple(checks)
        bad = [c for c in chosen if c not in CHECKS]
        if bad:
            raise ValueError(f"{label}: unknown check {', '.join(map(repr, bad))}; accepted: {', '.join(CHECKS)}")
        chosen = tuple(c for c in CHECKS if c in chosen)
    return FunctionSubject(fn=fn, name=label, framework=fw, kind=kind, reference=reference, order=order,
                           source=source, tolerance=tolerance, regimes=tuple(regimes), sizes=dict(sizes or {}), dtypes=dtypes,
                           checks=chosen, order_names=order_names, arrays=arrays, params=params)


def _applicable(fw: str, kind: str, cls, order: int) -> tuple:
    """The checks that apply to a subject: layouts exist in torch only; a forward-mode rule only where
    one is written (a custom_jvp, a Function with `jvp`); forward-over-reverse where forward mode can
    reach the backward (JAX but for a custom_vjp; torch.func, which needs a Function with
    `setup_context`)."""
    out = ["vjp"]
    if fw == "torch":
        out += ["vjp_strided", "vjp_expanded"]
    out.append("vjp_batched")
    if kind == "custom_jvp" or (cls is not None and _defines(cls, "jvp")):
        out.append("jvp")
    if order == 2:
        out.append("vjp_of_vjp")
        # JAX cannot run forward mode through a custom_vjp's backward (jax.hessian fails on one too)
        if (fw == "jax" and kind != "custom_vjp") or (fw == "torch" and (cls is None or _defines(cls, "setup_context"))):
            out.append("jvp_of_vjp")
    return tuple(c for c in CHECKS if c in out)


def _defines(cls, attr: str) -> bool:
    """Whether a Function subclass (or a base of it other than torch's own) defines `attr`."""
    for c in cls.__mro__:
        if c.__module__.startswith("torch."):
            return False
        if attr in vars(c):
            return True
    return False


def subjects_in(module) -> list[FunctionSubject]:
    """The FunctionSubjects defined at module level, each once."""
    return _subjects(vars(module).values())


def _subjects(values) -> list[FunctionSubject]:
    seen, out = set(), []
    for v in list(values):
        if isinstance(v, FunctionSubject) and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out



def describe_subjects(values) -> list[dict]:
    """What the judge needs to plan the subjects among `values` (a module's, gradaudit/_child.py) and,
    under `gradaudit audit`, to draw their cases (gradaudit/_subject_remote.py checks every field)."""
    import dataclasses

    def tolerance(s):  # the declared (factor, reason) as the judge receives it; a function stays in the child
        if s.tolerance is None:
            return None
        return ["per case" if callable(s.tolerance[0]) else s.tolerance[0], s.tolerance[1]]

    return [{"name": s.name, "regimes": list(s.regimes), "source": s.source, "framework": s.framework,
             "order": s.order, "checks": list(s.checks), "dtypes": list(s.dtypes) if s.dtypes else None,
             "sizes": {k: list(v) for k, v in s.sizes.items()}, "tolerance": tolerance(s),
             "arrays": [[n, dataclasses.asdict(a)] for n, a in s.arrays.items()],
             "params": [[n, dataclasses.asdict(a)] for n, a in s.params.items()]}
            for s in _subjects(values)]


def subject_jobs(desc: dict, path: str, key: str, make, qualify, *, runnable: bool) -> list:
    """A job (made by `make`, gradaudit.audit.Job) per subject described in `desc`. `runnable`: in this
    process (gradaudit.check); else the description is the audit child's word, named only once escaped."""
    named = [dict(s, name=s["name"] if runnable else clean(s["name"], 200)) for s in desc.get("subjects") or ()
             if type(s) is dict and isinstance(s.get("name"), str) and s["name"]]
    names = [s["name"] for s in named]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        message = (f"two gradaudit.function subjects are named {twice[0]!r} in {Path(path).name}: give one "
                   f"of them name=")
        if runnable:
            raise ValueError(message)
        from ._guard import UserCodeError

        raise UserCodeError(message)
    return [make(qualify(s["name"]), qualify(s["name"]), "function", path, key, s["name"],
                 [r for r in s.get("regimes") or () if isinstance(r, str) and r.isidentifier()] or ["typical"],
                 source=clean(s["source"], 500) if isinstance(s.get("source"), str) and s["source"]
                 else Path(path).name, checks=_listed(s.get("checks"), CHECKS),
                 dtypes=_listed(s.get("dtypes"), DTYPES) or None) for s in named]


def _listed(raw, known: tuple) -> tuple:
    """The known names among a description's list (the child's word: for counting cells only)."""
    return tuple(x for x in known if type(raw) in (list, tuple) and x in raw)


def described(obj, describe_derivation) -> dict:
    """gradaudit.check's description of one object it was given: a derivation or a subject."""
    if isinstance(obj, FunctionSubject):
        return {"functions": [], "derivations": [], "subjects": describe_subjects([obj])}
    return {"functions": [], "derivations": [describe_derivation(obj)]}


def built_subject(job, code, _notes: dict):
    """gradaudit.audit.build for a subject's job: no spec, inputs or regimes of its own (each of its
    checks has them, gradaudit/_subject_run.py), the subject as the target."""
    return None, subject_of(code, job), None, None


def subject_of(code, job):
    """The subject a job checks, from the objects and modules `code` holds (gradaudit.audit.InProcess)."""
    obj = code.objects.get(job.key)
    if isinstance(obj, FunctionSubject):
        return obj
    s = next((s for s in subjects_in(code.modules[job.key]) if s.name == job.name), None)
    if s is None:
        raise LookupError(f"no gradaudit.function subject {job.name!r} in {job.file}")
    return s
