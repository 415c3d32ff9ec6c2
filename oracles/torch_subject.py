"""The PyTorch side of a `gradaudit.function` subject: a custom `torch.autograd.Function` (or any torch
callable) called the ways gradaudit checks it, and the forwards its oracles differentiate.

- The subject's rule is called directly where it can be: `out.grad_fn.apply(*douts)` runs the
  Function's `backward` and returns what it returned, before autograd's engine would sum a gradient
  over broadcast axes or cast it to its input's dtype (both silently: gradcheck never sees them).
- The primal computation, with every custom rule bypassed: the Function's `forward` run as plain
  differentiable code (with a stand-in for `ctx`), and any Function called inside a callable likewise
  (`bypass`). Autograd of that is independent of the hand-written backward wherever the forward is
  written in differentiable torch ops; where it is not (NumPy, `.detach()`, a kernel), its outputs
  do not require grad and that side is not available.
- `vjp`, the torch oracle for these forwards: `oracles.torch_oracle.vjp` with bfloat16 (NumPy has no
  bfloat16: ml_dtypes arrays are converted through float32, which holds them exactly).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from . import torch_oracle
from .base import OracleResult, as_tuple
from .subject_oracle import NotDifferentiable, RuleError

__all__ = ["JVP_MAX_ELEMENTS", "Run", "TorchSubject", "array", "bypass", "second_order", "tensor", "vjp",
           "xp_forward"]

# the forward-mode checks build the Jacobian one column (one forward-mode call) per input element
JVP_MAX_ELEMENTS = 4096


def _torch():
    torch_oracle.check_available("cpu")  # imports torch (TF32 off), or raises OracleUnavailable
    import torch

    return torch


def _ml_dtypes():
    import ml_dtypes  # JAX's dependency; NumPy has no bfloat16 of its own

    return ml_dtypes


def tensor(a, device: str = "cpu"):
    """A NumPy array as a tensor, sharing its memory where it can (CPU, not bfloat16): a rule that
    writes into its inputs or upstream gradient is then seen by the caller's copies."""
    torch = _torch()
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    elif a.flags.writeable and a.dtype.kind in "fiub":
        t = torch.from_numpy(a)
    else:
        t = torch.tensor(a)
    return t if device == "cpu" else t.to(device)


def array(t) -> np.ndarray:
    """A tensor as a NumPy array of its dtype (a copy; bfloat16 as ml_dtypes' bfloat16)."""
    torch = _torch()
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().cpu().numpy().astype(_ml_dtypes().bfloat16)
    return t.cpu().numpy().copy()


def _np_dtype(dtype: str):
    if dtype == "bfloat16":
        return _ml_dtypes().bfloat16
    return np.dtype(dtype)


class _Ctx:
    """Stands in for autograd's ctx when a Function's forward runs as plain differentiable code."""

    def __init__(self, n: int):
        self.needs_input_grad = (True,) * n
        self.saved_tensors = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        self.saved_for_forward = tensors

    def mark_non_differentiable(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        self.materialize_grads = value


def _ctx_style(cls) -> bool:
    """forward(ctx, ...), as opposed to forward(...) with a separate setup_context."""
    torch = _torch()
    return cls.setup_context is torch.autograd.Function.setup_context


def _primal(cls, *args, **kwargs):
    if _ctx_style(cls):
        return cls.forward(_Ctx(len(args)), *args, **kwargs)
    return cls.forward(*args, **kwargs)


@contextlib.contextmanager
def bypass():
    """Inside: every torch.autograd.Function of the user's code applied runs its forward as plain
    autograd code (its custom backward and jvp are never used); torch's own keep theirs."""
    torch = _torch()
    base = torch.autograd.Function
    original = base.__dict__["apply"]

    def apply(cls, *args, **kwargs):
        if (cls.__module__ or "").split(".")[0] == "torch":
            return original.__func__(cls, *args, **kwargs)
        return _primal(cls, *args, **kwargs)

    base.apply = classmethod(apply)
    try:
        yield
    finally:
        base.apply = original


def _params(params: dict, device: str) -> dict:
    return {k: tensor(np.array(v), device) if isinstance(v, np.ndarray) else v for k, v in params.items()}


@dataclass
class Run:
    """One call of the subject: its differentiated inputs (as passed), its outputs, its arguments."""

    inputs: list
    outs: tuple
    args: list


def _zeros_like_np(a, dtype) -> np.ndarray:
    return np.zeros(np.shape(a), dtype=_np_dtype(dtype))


class TorchSubject:
    """A torch subject: `fn` is a Function's `.apply`, the Function class, or a torch callable;
    `assemble(arrays, params)` puts a call's arguments in the signature's order."""

    last_run: Run | None = None

    def __init__(self, fn, *, name: str, assemble):
        torch = _torch()
        cls = fn if isinstance(fn, type) else getattr(fn, "__self__", None)
        self.cls = cls if isinstance(cls, type) and issubclass(cls, torch.autograd.Function) else None
        self.call = self.cls.apply if self.cls is not None else fn
        self.name, self.assemble = name, assemble

    # ---- the subject itself --------------------------------------------------------------------

    def _input(self, a, device: str, layout: str | None):
        torch = _torch()
        if layout == "strided":
            # the same values, every other element of a buffer laid out in the reverse order of the axes
            # (column-major for a matrix): not contiguous, and not viewable as a flat tensor either
            src = tensor(a, device)
            rev = tuple(reversed(range(src.dim())))
            buf = torch.zeros((*(src.shape[i] for i in rev), 2), dtype=src.dtype, device=src.device)
            buf[..., 0] = src.permute(rev)
            return buf.requires_grad_(True)[..., 0].permute(rev)
        if layout == "expanded":  # one slice expanded along the first axis longer than 1 (stride 0)
            axis = next((i for i, s in enumerate(np.shape(a)) if s > 1), None)
            if axis is not None:
                base = tensor(np.take(a, [0], axis=axis).copy(), device).requires_grad_(True)
                return base.expand(*np.shape(a))
        return tensor(a, device).requires_grad_(True)

    def run(self, arrays, params: dict, device: str = "cpu", layout: str | None = None) -> Run:
        torch = _torch()
        inputs = [self._input(a, device, layout) for a in arrays]
        args = self.assemble(inputs, _params(params, device))
        with torch.enable_grad():
            outs = as_tuple(self.call(*args))
        for i, o in enumerate(outs):
            if not isinstance(o, torch.Tensor):
                raise RuleError(f"forward output {i} is a {type(o).__name__}, not a tensor")
        return Run(inputs, outs, args)

    @staticmethod
    def outputs(run: Run):
        outs = tuple(array(o) for o in run.outs)
        return outs if len(outs) > 1 else outs[0]

    def _node(self, run: Run):
        """The Function's backward node (its ctx), when the subject is one Function called directly."""
        node = getattr(run.outs[0], "grad_fn", None) if run.outs else None
        if self.cls is not None and node is not None and getattr(node, "_forward_cls", None) is self.cls:
            return node
        return None

    def rule(self, run: Run, douts, device: str = "cpu") -> tuple[list, bool]:
        """(gradients of the differentiated inputs as the rule returned them, raw?). Raw: the Function's
        `backward` called through its node, unvalidated (None stays None); otherwise through autograd's
        engine (`torch.autograd.grad`), which reduces and casts as it does in training."""
        torch = _torch()
        gs = [tensor(d, device) for d in douts]
        node = self._node(run)
        if node is not None:
            raw = as_tuple(node.apply(*gs))
            if len(raw) != len(run.args):
                raise RuleError(f"backward returned {len(raw)} value(s), expected {len(run.args)} "
                                f"(one per input of forward)")
            pos = [next(i for i, a in enumerate(run.args) if a is t) for t in run.inputs]
            return [raw[i] if raw[i] is None or not isinstance(raw[i], torch.Tensor) else array(raw[i])
                    for i in pos], True
        req = [(o, g.to(o.dtype)) for o, g in zip(run.outs, gs) if o.requires_grad]
        if not req:
            raise RuleError("no output requires grad: the function returns no differentiable result")
        grads = torch.autograd.grad([o for o, _ in req], run.inputs, [g for _, g in req], allow_unused=True)
        return [None if g is None else array(g) for g in grads], False

    def rule_batched(self, run: Run, batched_douts, device: str = "cpu") -> list:
        """VJPs for a batch of upstream gradients at once (`is_grads_batched`, autograd's vmap over the
        backward, as gradcheck's check_batched_grad): one array (B, *input shape) per input."""
        torch = _torch()
        req = [(o, tensor(g, device).to(o.dtype)) for o, g in zip(run.outs, batched_douts) if o.requires_grad]
        if not req:
            raise RuleError("no output requires grad: the function returns no differentiable result")
        grads = torch.autograd.grad([o for o, _ in req], run.inputs, [g for _, g in req], allow_unused=True,
                                    is_grads_batched=True)
        b = np.shape(batched_douts[0])[0]
        return [np.zeros((b, *t.shape), dtype=array(t).dtype) if g is None else array(g)
                for t, g in zip(run.inputs, grads)]

    def jvp_transposed(self, arrays, params: dict, douts, device: str = "cpu") -> list:
        """Jᵀ·dout from the forward-mode rule (the Function's `jvp`, through torch.autograd.forward_ad):
        one forward-mode call per input element, each a column J·e_i, dotted with dout."""
        torch = _torch()
        import torch.autograd.forward_ad as fwAD

        n = sum(int(np.size(a)) for a in arrays)
        if n > JVP_MAX_ELEMENTS:
            raise RuleError(f"the forward-mode check builds the Jacobian column by column: {n} input elements "
                            f"is more than {JVP_MAX_ELEMENTS}; draw smaller sizes")
        xs = [tensor(np.array(a), device) for a in arrays]
        kw = _params(params, device)
        ds = [torch.as_tensor(np.asarray(d, dtype=np.float64)) for d in douts]
        out = [np.zeros(np.shape(a), dtype=np.float64) for a in arrays]
        for j, x in enumerate(xs):
            flat = out[j].reshape(-1)
            for i in range(x.numel()):
                with fwAD.dual_level():
                    duals = []
                    for k, y in enumerate(xs):
                        t = torch.zeros_like(y)
                        if k == j:
                            t.view(-1)[i] = 1
                        duals.append(fwAD.make_dual(y, t))
                    outs = as_tuple(self.call(*self.assemble(duals, kw)))
                    tangents = [fwAD.unpack_dual(o).tangent for o in outs]
                flat[i] = sum(float((tan.detach().cpu().double() * d).sum()) for tan, d in zip(tangents, ds)
                              if tan is not None)
        return [o.astype(array(x).dtype) for o, x in zip(out, xs)]

    def ctx_intermediates(self, run: Run) -> list[str]:
        """Tensors the Function kept for backward that are neither its inputs nor its outputs: computed
        in forward without a graph, they are constants to a double backward (pytorch #76185)."""
        torch = _torch()
        node = self._node(run)
        if node is None:
            return []
        known = {(t.data_ptr(), tuple(t.shape)) for t in (*run.args, *run.outs) if isinstance(t, torch.Tensor)}
        found = []
        for k, v in sorted(vars(node).items()):
            if isinstance(v, torch.Tensor) and (v.data_ptr(), tuple(v.shape)) not in known:
                found.append(f"ctx.{k}")
        try:
            saved = node.saved_tensors
        except RuntimeError:  # already freed
            saved = ()
        for i, v in enumerate(saved):
            if isinstance(v, torch.Tensor) and (v.data_ptr(), tuple(v.shape)) not in known:
                found.append(f"saved_tensors[{i}]")
        return found

    # ---- second order: the backward as a function of (inputs, upstream gradients) ---------------

    def first_grads(self, xs, ds, params: dict, device: str = "cpu", *, create_graph: bool = True):
        """(gradients of the inputs as autograd computes them through the rule, inputs, douts)."""
        torch = _torch()
        ts = [tensor(np.array(a), device).requires_grad_(True) for a in xs]
        dts = [tensor(np.array(d), device).requires_grad_(create_graph) for d in ds]
        args = self.assemble(ts, _params(params, device))
        with torch.enable_grad():
            outs = as_tuple(self.call(*args))
            self.last_run = Run(ts, outs, args)  # for ctx_intermediates
            req = [(o, d.to(o.dtype)) for o, d in zip(outs, dts) if o.requires_grad]
            if not req:
                raise RuleError("no output requires grad: the function returns no differentiable result")
            gs = torch.autograd.grad([o for o, _ in req], ts, [d for _, d in req], create_graph=create_graph,
                                     allow_unused=True)
        gs = [torch.zeros_like(t) if g is None else g for g, t in zip(gs, ts)]
        return gs, ts, dts

    def first(self, xs, ds, params: dict, device: str = "cpu"):
        """(the rule's gradients as NumPy, a handle for `second`), and the Function's kept tensors."""
        gs, ts, dts = self.first_grads(xs, ds, params, device)
        return [array(g) for g in gs], (gs, ts, dts)

    def second(self, handle, ddx, device: str = "cpu") -> list:
        return self.second_vjp(*handle, ddx, device)

    def second_vjp(self, gs, ts, dts, ddx, device: str = "cpu") -> list:
        """The VJP of the backward (double backward): d<grads, ddx>/d(inputs, douts)."""
        torch = _torch()
        req = [(g, tensor(np.array(d), device).to(g.dtype)) for g, d in zip(gs, ddx) if g.requires_grad]
        wrt = [*ts, *dts]
        if not req:  # the backward has no graph: its derivative is zero as autograd sees it
            return [np.zeros(tuple(t.shape), dtype=array(t).dtype) for t in wrt]
        grads = torch.autograd.grad([g for g, _ in req], wrt, [d for _, d in req], allow_unused=True)
        return [np.zeros(tuple(t.shape), dtype=array(t).dtype) if g is None else array(g)
                for g, t in zip(grads, wrt)]

    def second_jvp_transposed(self, xs, ds, params: dict, ddx, device: str = "cpu") -> list:
        """Forward-over-reverse (torch.func.jvp of torch.func.vjp), transposed column by column."""
        torch = _torch()
        from torch import func

        n = sum(int(np.size(a)) for a in (*xs, *ds))
        if n > JVP_MAX_ELEMENTS:
            raise RuleError(f"the forward-over-reverse check builds the Jacobian column by column: {n} elements "
                            f"is more than {JVP_MAX_ELEMENTS}; draw smaller sizes")
        kw = _params(params, device)
        prim = [tensor(np.array(a), device) for a in (*xs, *ds)]
        nx = len(xs)

        def h(*tds):
            _, pull = func.vjp(lambda *ts: self.call(*self.assemble(list(ts), kw)), *tds[:nx])
            cot = tds[nx:]
            return tuple(pull(cot if len(cot) > 1 else cot[0]))

        dd = [torch.as_tensor(np.asarray(d, dtype=np.float64)) for d in ddx]
        out = [np.zeros(np.shape(a), dtype=np.float64) for a in (*xs, *ds)]
        for j, p in enumerate(prim):
            flat = out[j].reshape(-1)
            for i in range(p.numel()):
                tans = [torch.zeros_like(q) for q in prim]
                tans[j].view(-1)[i] = 1
                _, col = func.jvp(h, tuple(prim), tuple(tans))
                flat[i] = sum(float((c.detach().cpu().double() * d).sum()) for c, d in zip(col, dd))
        return [o.astype(array(p).dtype) for o, p in zip(out, prim)]

    # ---- what the oracles differentiate ---------------------------------------------------------

    def primal(self, *args):
        """The subject's output computed with every custom rule bypassed (differentiable by autograd)."""
        with bypass():
            if self.cls is not None:
                return _primal(self.cls, *args)
            return self.call(*args)

    def primal_forward(self):
        """(*tensors, **params) -> out: what the torch oracle differentiates (first order)."""
        return lambda *ts, **kw: self.primal(*self.assemble(list(ts), kw))

    def numpy_forward(self, device: str = "cpu"):
        """(*arrays, **params) -> out as NumPy: the subject's own forward, for finite differences."""
        torch = _torch()

        def forward(*arrays, **params):
            with torch.no_grad():
                outs = as_tuple(self.call(*self.assemble([tensor(np.array(a), device) for a in arrays],
                                                         _params(params, device))))
            outs = tuple(array(o) for o in outs)
            return outs if len(outs) > 1 else outs[0]

        return forward

    def numpy_first_grads(self, n_inputs: int, device: str = "cpu"):
        """(*inputs, *douts, **params) -> the rule's gradients as NumPy: the backward as a function,
        for finite differences of the second order."""
        def forward(*arrays, **params):
            gs, _, _ = self.first_grads(arrays[:n_inputs], arrays[n_inputs:], params, device, create_graph=False)
            outs = tuple(array(g) for g in gs)
            return outs if len(outs) > 1 else outs[0]

        return forward


def xp_forward(reference, assemble):
    """(*tensors, **params) -> out: `reference(xp, *args)` with torch as the array-API namespace."""
    xp = torch_oracle.namespace()
    return lambda *ts, **kw: reference(xp, *assemble(list(ts), kw))


def second_order(forward, n_inputs: int):
    """(*inputs, *douts, **params) -> the VJP of `forward` (first order), with its graph: what an oracle
    differentiates for the second order."""
    def h(*tds, **kw):
        torch = _torch()
        xs, ds = tds[:n_inputs], tds[n_inputs:]
        outs = as_tuple(forward(*xs, **kw))
        req = [(o, d.to(o.dtype)) for o, d in zip(outs, ds) if getattr(o, "requires_grad", False)]
        if not req:
            raise NotDifferentiable("torch: the forward's outputs do not require grad")
        gs = torch.autograd.grad([o for o, _ in req], list(xs), [d for _, d in req], create_graph=True,
                                 allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(gs, xs))

    return h


def vjp(forward, arrays: dict, params: dict, douts: tuple, *, dtype: str, device: str, **_) -> OracleResult:
    """torch_oracle.vjp, for bfloat16 too, and naming a forward autograd cannot differentiate."""
    torch = _torch()
    torch_oracle.check_available(device)
    npd = _np_dtype(dtype)
    inputs = [tensor(np.array(a, dtype=npd), device).requires_grad_(True) for a in arrays.values()]
    kw = _params(params, device)
    outs = as_tuple(forward(*inputs, **kw))
    req = [(o, d) for o, d in zip(outs, douts) if getattr(o, "requires_grad", False)]
    if not req:
        raise NotDifferentiable("torch: none of the primal forward's outputs requires grad (it is not written in "
                                "differentiable torch ops: NumPy, .detach(), no_grad or a kernel inside)")
    grads = torch.autograd.grad([o for o, _ in req], inputs,
                                [tensor(np.array(d, dtype=npd), device).to(o.dtype) for o, d in req],
                                allow_unused=True)
    out_np = tuple(array(o) for o in outs)
    return OracleResult(out=out_np if len(out_np) > 1 else out_np[0],
                        grads={n: array(g) if g is not None else _zeros_like_np(a, dtype)
                               for (n, a), g in zip(arrays.items(), grads)})
