"""The JAX side of a `gradaudit.function` subject: a `jax.custom_vjp` / `jax.custom_jvp` function (or
any JAX callable) called the ways gradaudit checks it, and the forwards its oracles differentiate.

- A custom_vjp's rule is called directly: `fwd` for the residuals, then `bwd(res, dout)`, whose
  cotangents are taken as returned. Through `jax.vjp` a cotangent of another dtype than its input
  comes back as it is (a float64 input gets a float32 gradient: `check_grads` passes it).
- The primal computation with every custom rule bypassed: the undecorated `fun` (and any custom_vjp
  or custom_jvp called inside, `bypass`), differentiated by JAX.
- Everything runs jit-compiled, one compile per (check, static params, shapes, dtypes), as the JAX
  oracle does; the JAX oracle (`oracles.jax_oracle.vjp`) differentiates the primal and the reference.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import numpy as np

from . import jax_oracle
from .base import as_tuple
from .subject_oracle import RuleError

__all__ = ["JaxSubject", "Run", "bypass", "second_order", "xp_forward"]

JVP_MAX_ELEMENTS = 4096


def _jax():
    jax_oracle.check_available("cpu")  # imports JAX (x64 on), or raises OracleUnavailable
    import jax

    return jax


def _library(fn) -> bool:
    """A rule JAX itself defines (jnp.logaddexp, jax.nn.relu, ...): trusted, and needed, since the
    primal beneath it is often not differentiable where the rule is (logaddexp at a tie)."""
    return (getattr(fn, "__module__", None) or "").split(".")[0] == "jax"


@contextlib.contextmanager
def bypass():
    """Inside (while a function is traced): every custom_vjp and custom_jvp of the user's code
    evaluates its undecorated `fun`, which JAX then differentiates itself; JAX's own keep their rules."""
    jax = _jax()
    saved = {cls: cls.__dict__["__call__"] for cls in (jax.custom_vjp, jax.custom_jvp)}

    def patched(call):
        def __call__(self, *args, **kwargs):
            if _library(self.fun):
                return call(self, *args, **kwargs)
            return self.fun(*args, **kwargs)
        return __call__

    try:
        for cls, call in saved.items():
            cls.__call__ = patched(call)
        yield
    finally:
        for cls, call in saved.items():
            cls.__call__ = call


def _split(params: dict) -> tuple[tuple, dict]:
    """(static params as a hashable tuple, array params): arrays are traced, the rest compiled in."""
    static = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()
                          if not isinstance(v, np.ndarray)))
    return static, {k: v for k, v in params.items() if isinstance(v, np.ndarray)}


def _np(x):
    return None if x is None else np.asarray(x)


@dataclass
class Run:
    inputs: tuple  # the differentiated arrays as passed (NumPy)
    params: dict
    outs: tuple
    residuals: object = None
    extra: dict = field(default_factory=dict)


class JaxSubject:
    """A JAX subject: `kind` is custom_vjp, custom_jvp or callable; `assemble(arrays, params)` puts a
    call's arguments in the signature's order."""

    def __init__(self, fn, *, name: str, assemble, kind: str):
        _jax()
        self.fn, self.name, self.assemble, self.kind = fn, name, assemble, kind
        self._compiled: dict = {}

    def _jit(self, what: str, static: tuple, build):
        key = (what, static)
        if key not in self._compiled:
            self._compiled[key] = _jax().jit(build(dict(static)))
        return self._compiled[key]

    def _call(self, xs, ap, static: dict):
        return self.fn(*self.assemble(list(xs), {**ap, **static}))

    def _device(self, tree, device: str):
        jax = _jax()
        if device == "cpu":
            return tree
        return jax.device_put(tree, jax.devices({"cuda": "gpu"}.get(device, device))[0])

    # ---- the subject itself --------------------------------------------------------------------

    def run(self, arrays, params: dict, device: str = "cpu", layout=None) -> Run:
        static, ap = _split(params)
        xs = tuple(np.asarray(a) for a in arrays)
        if self.kind == "custom_vjp":
            fwd = self._jit("fwd", static, lambda st: lambda xs, ap: self.fn.fwd(*self.assemble(list(xs), {**ap, **st})))
            out, res = fwd(*self._device((xs, ap), device))
            return Run(xs, params, as_tuple(out), residuals=res)
        f = self._jit("call", static, lambda st: lambda xs, ap: self._call(xs, ap, st))
        return Run(xs, params, as_tuple(f(*self._device((xs, ap), device))))

    @staticmethod
    def outputs(run: Run):
        outs = tuple(np.asarray(o) for o in run.outs)
        return outs if len(outs) > 1 else outs[0]

    def _engine_vjp(self, st: dict):
        jax = _jax()

        def pull(xs, ap, ds):
            out, vjp_fn = jax.vjp(lambda *xs: self._call(xs, ap, st), *xs)
            return vjp_fn(tuple(ds) if isinstance(out, tuple) else ds[0])

        return pull

    def rule(self, run: Run, douts, device: str = "cpu") -> tuple[list, bool]:
        """(cotangents of the differentiated inputs as the rule returned them, raw?)."""
        static, ap = _split(run.params)
        ds = tuple(np.asarray(d) for d in douts)
        if self.kind == "custom_vjp":
            nondiff = tuple(getattr(self.fn, "nondiff_argnums", ()) or ())

            def build(st):
                def bwd(xs, ap, res, ds):
                    args = self.assemble(list(xs), {**ap, **st})
                    g = tuple(ds) if len(ds) > 1 else ds[0]
                    return self.fn.bwd(*[args[i] for i in nondiff], res, g)
                return bwd

            raw = as_tuple(self._jit("bwd", static, build)(*self._device((run.inputs, ap, run.residuals, ds), device)))
            # the arguments bwd answers for, in order; the differentiated arrays among them
            marks = self.assemble([("x", i) for i in range(len(run.inputs))], {k: ("p", k) for k in run.params})
            answered = [m for i, m in enumerate(marks) if i not in nondiff]
            if len(raw) != len(answered):
                raise RuleError(f"bwd returned {len(raw)} cotangent(s), expected {len(answered)} (one per "
                                f"argument that is not in nondiff_argnums)")
            return [_np(raw[answered.index(("x", i))]) for i in range(len(run.inputs))], True
        grads = self._jit("vjp", static, self._engine_vjp)(*self._device((run.inputs, ap, ds), device))
        return [_np(g) for g in grads], False

    def rule_batched(self, run: Run, batched_douts, device: str = "cpu") -> list:
        """jax.vmap of the VJP over a batch of upstream gradients: one array (B, *shape) per input."""
        jax = _jax()
        static, ap = _split(run.params)

        def build(st):
            pull = self._engine_vjp(st)
            return lambda xs, ap, ds: jax.vmap(lambda *d: pull(xs, ap, d))(*ds)

        grads = self._jit("vjp_batched", static, build)(
            *self._device((run.inputs, ap, tuple(np.asarray(d) for d in batched_douts)), device))
        return [np.asarray(g) for g in grads]

    def _columns_dot(self, f, prim: tuple, ddx: tuple):
        """Jᵀ·ddx for f(*prim) -> tuple, from forward mode: per argument j, vmap of jax.jvp over the
        basis of its elements (column J·e_i, dotted with ddx)."""
        jax = _jax()
        jnp = jax.numpy
        out = []
        for j, p in enumerate(prim):
            n = int(np.size(p))
            basis = jnp.eye(n, dtype=p.dtype).reshape((n, *np.shape(p)))

            def column(t, j=j):
                tans = tuple(t if k == j else jnp.zeros_like(q) for k, q in enumerate(prim))
                _, tan_out = jax.jvp(f, prim, tans)
                return sum(jnp.sum(c.astype(jnp.float64) * jnp.asarray(d).astype(jnp.float64))
                           for c, d in zip(as_tuple(tan_out), ddx))

            out.append(jax.vmap(column)(basis).reshape(np.shape(p)).astype(p.dtype))
        return tuple(out)

    def jvp_transposed(self, arrays, params: dict, douts, device: str = "cpu") -> list:
        """Jᵀ·dout from the forward-mode rule (a custom_jvp's, through jax.jvp), column by column."""
        n = sum(int(np.size(a)) for a in arrays)
        if n > JVP_MAX_ELEMENTS:
            raise RuleError(f"the forward-mode check builds the Jacobian column by column: {n} input elements "
                            f"is more than {JVP_MAX_ELEMENTS}; draw smaller sizes")
        static, ap = _split(params)

        def build(st):
            return lambda xs, ap, ds: self._columns_dot(lambda *xs: self._call(xs, ap, st), tuple(xs), tuple(ds))

        xs = tuple(np.asarray(a) for a in arrays)
        got = self._jit("jvp", static, build)(*self._device((xs, ap, tuple(np.asarray(d) for d in douts)), device))
        return [np.asarray(g) for g in got]

    # ---- second order --------------------------------------------------------------------------

    def _h(self, st: dict):
        """(xs, ds, ap) -> the rule's gradients: `bwd(fwd(x) residuals, d)` for a custom_vjp (what
        jax.grad of jax.grad differentiates), jax.vjp otherwise."""
        jax = _jax()
        jnp = jax.numpy
        if self.kind == "custom_vjp":
            nondiff = tuple(getattr(self.fn, "nondiff_argnums", ()) or ())

            def h(xs, ds, ap):
                args = self.assemble(list(xs), {**ap, **st})
                _, res = self.fn.fwd(*args)
                raw = as_tuple(self.fn.bwd(*[args[i] for i in nondiff], res, tuple(ds) if len(ds) > 1 else ds[0]))
                marks = self.assemble([("x", i) for i in range(len(xs))], {k: ("p", k) for k in {**ap, **st}})
                answered = [m for i, m in enumerate(marks) if i not in nondiff]
                got = [raw[answered.index(("x", i))] for i in range(len(xs))]
                return tuple(jnp.zeros_like(x) if g is None else g for g, x in zip(got, xs))
            return h
        pull = self._engine_vjp(st)
        return lambda xs, ds, ap: tuple(pull(xs, ap, ds))

    def first(self, xs, ds, params: dict, device: str = "cpu"):
        """(the rule's gradients as NumPy, a handle for `second`)."""
        return self.first_grads(xs, ds, params, device), (xs, ds, params)

    def second(self, handle, ddx, device: str = "cpu") -> list:
        """The VJP of the backward (reverse-over-reverse): d<grads, ddx>/d(inputs, douts)."""
        return self.second_vjp(*handle, ddx, device)

    def first_grads(self, xs, ds, params: dict, device: str = "cpu"):
        static, ap = _split(params)
        h = self._jit("h", static, lambda st: self._h(st))
        xs = tuple(np.asarray(a) for a in xs)
        ds = tuple(np.asarray(d) for d in ds)
        return [np.asarray(g) for g in h(*self._device((xs, ds, ap), device))]

    def second_vjp(self, xs, ds, params: dict, ddx, device: str = "cpu") -> list:
        jax = _jax()
        static, ap = _split(params)
        n = len(xs)

        def build(st):
            h = self._h(st)

            def second(xs, ds, ap, ddx):
                _, pull = jax.vjp(lambda *xds: h(xds[:n], xds[n:], ap), *xs, *ds)
                return pull(tuple(ddx))
            return second

        got = self._jit("second_vjp", static, build)(
            *self._device((tuple(map(np.asarray, xs)), tuple(map(np.asarray, ds)), ap,
                           tuple(map(np.asarray, ddx))), device))
        return [np.asarray(g) for g in got]

    def second_jvp_transposed(self, xs, ds, params: dict, ddx, device: str = "cpu") -> list:
        n_el = sum(int(np.size(a)) for a in (*xs, *ds))
        if n_el > JVP_MAX_ELEMENTS:
            raise RuleError(f"the forward-over-reverse check builds the Jacobian column by column: {n_el} "
                            f"elements is more than {JVP_MAX_ELEMENTS}; draw smaller sizes")
        static, ap = _split(params)
        n = len(xs)

        def build(st):
            h = self._h(st)
            return lambda xs, ds, ap, ddx: self._columns_dot(lambda *xds: h(xds[:n], xds[n:], ap),
                                                             (*xs, *ds), tuple(ddx))

        got = self._jit("second_jvp", static, build)(
            *self._device((tuple(map(np.asarray, xs)), tuple(map(np.asarray, ds)), ap,
                           tuple(map(np.asarray, ddx))), device))
        return [np.asarray(g) for g in got]

    # ---- what the oracles differentiate ---------------------------------------------------------

    def _primal(self, *args):
        with bypass():
            return (self.fn.fun if self.kind in ("custom_vjp", "custom_jvp") else self.fn)(*args)

    @functools.cached_property
    def primal_forward_fn(self):
        """(*arrays, **params) -> out with the custom rules bypassed: what the JAX oracle differentiates."""
        return lambda *xs, **kw: self._primal(*self.assemble(list(xs), kw))

    def primal_forward(self):
        return self.primal_forward_fn

    def numpy_forward(self, device: str = "cpu"):
        """(*arrays, **params) -> out as NumPy: the subject's own forward, for finite differences."""
        def forward(*arrays, **params):
            run = self.run(arrays, params, device)
            return self.outputs(run)

        return forward

    def numpy_first_grads(self, n_inputs: int, device: str = "cpu"):
        """(*inputs, *douts, **params) -> the rule's gradients as NumPy, for finite differences."""
        def forward(*arrays, **params):
            gs = self.first_grads(arrays[:n_inputs], arrays[n_inputs:], params, device)
            return tuple(gs) if len(gs) > 1 else gs[0]

        return forward


def xp_forward(reference, assemble):
    """(*arrays, **params) -> out: `reference(xp, *args)` with jax.numpy as the array-API namespace."""
    xp = jax_oracle.namespace()
    return lambda *xs, **kw: reference(xp, *assemble(list(xs), kw))


def second_order(forward, n_inputs: int):
    """(*inputs, *douts, **params) -> the VJP of `forward`: what the JAX oracle differentiates for the
    second order."""
    def h(*xds, **kw):
        jax = _jax()
        xs, ds = xds[:n_inputs], xds[n_inputs:]
        out, pull = jax.vjp(lambda *xs: forward(*xs, **kw), *xs)
        return tuple(pull(tuple(ds) if isinstance(out, tuple) else ds[0]))

    return h
