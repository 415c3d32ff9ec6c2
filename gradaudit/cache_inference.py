"""A cs231n backward whose forward is not given (notes often show only the backward): its cache is
built from how the backward unpacks it.

    def rnn_step_backward(dnext_h, cache):
        x, Wx, Wh, prev_h, next_h, b = cache

Each unpacked name is matched to an argument of the cs231n forward (`rnn_step_forward(x, prev_h,
Wx, Wh, b)`), an output of it (`next_h`), or a hyperparameter (`eps`, `stride`, ...), in the usual
spellings (`w`/`W`/`weight`, `Wx`/`Wxh`, `prev_h`/`h_prev`, `next_h`/`h`; case and underscores
do not count); `_` gets None. The forward that makes the cache is then the catalogue's reference
forward, so the backward alone is on trial. What is recognised: a tuple (or list, nested)
unpacking of the cache parameter, `x = cache` (the cache is one value), string keys `cache["x"]`
(a dict cache), and no unpacking at all when the forward has a single argument (`relu`: the cache
is `x`). A name that cannot be placed (an intermediate of the forward, `x_hat`, `mu`) makes the
function a `skip` that names it.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from typing import Callable

import numpy as np

# The cs231n forward's arguments in order (what Pair.call produces), by backward name, in the
# assignments' spelling; the gradients are reported as d<name>.
FORWARD_ARGS = {
    "affine_backward": ("x", "w", "b"),
    "relu_backward": ("x",),
    "batchnorm_backward": ("x", "gamma", "beta", "bn_param"),
    "batchnorm_backward_alt": ("x", "gamma", "beta", "bn_param"),
    "layernorm_backward": ("x", "gamma", "beta", "ln_param"),
    "conv_backward_naive": ("x", "w", "b", "conv_param"),
    "max_pool_backward_naive": ("x", "pool_param"),
    "rnn_step_backward": ("x", "prev_h", "Wx", "Wh", "b"),
    "rnn_backward": ("x", "h0", "Wx", "Wh", "b"),
    "lstm_step_backward": ("x", "prev_h", "prev_c", "Wx", "Wh", "b"),
    "lstm_backward": ("x", "h0", "Wx", "Wh", "b"),
    "word_embedding_backward": ("x", "W"),
    "temporal_affine_backward": ("x", "w", "b"),
}
OUTPUTS = {"rnn_step_backward": ("next_h",), "lstm_step_backward": ("next_h", "next_c"),
           "rnn_backward": ("h",), "lstm_backward": ("h",)}  # others: ("out",)

# Other spellings of a role (compared lower-case, without underscores).
SPELLINGS = {
    "x": {"input", "inp", "xin", "inputs", "idx", "indices"},
    "w": {"weight", "weights"},
    "b": {"bias", "biases"},
    "wx": {"wxh", "wih", "wi"},
    "wh": {"whh"},
    "prevh": {"hprev", "hprevious", "previoush", "hlast", "lasth", "hold", "oldh", "htminus1", "hpre"},
    "prevc": {"cprev", "cprevious", "previousc", "clast", "lastc", "cold", "oldc", "ctminus1", "cpre"},
    "nexth": {"hnext", "h", "hnew", "newh", "ht"},
    "nextc": {"cnext", "c", "cnew", "newc", "ct"},
    "h0": {"hinit", "hstart", "initialh", "hinitial"},
    "h": {"hs", "hidden", "hiddens", "hall"},
    "out": {"output", "y", "outputs"},
    "gamma": {"g"},
    "bnparam": {"param", "params", "bnparams"},
    "lnparam": {"param", "params", "lnparams"},
    "convparam": {"param", "params", "convparams"},
    "poolparam": {"param", "params", "poolparams"},
}


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


class CannotPlace(Exception):
    """The backward's cache cannot be built; the message says which names and why."""


@dataclass(frozen=True)
class Layout:
    """How the backward reads its cache: a (nested) tuple of names, one name, or dict keys."""

    kind: str  # "tuple" | "single" | "dict"
    names: tuple  # tuple: nested tuples of names; single: (name,); dict: the keys

    def build(self, values: dict) -> object:
        def fill(item):
            if isinstance(item, tuple):
                return tuple(fill(i) for i in item)
            return values[item]

        if self.kind == "single":
            return values[self.names[0]]
        if self.kind == "dict":
            return {k: values[k] for k in self.names}
        return fill(self.names)

    def flat(self) -> list[str]:
        out = []

        def walk(item):
            if isinstance(item, tuple):
                for i in item:
                    walk(i)
            else:
                out.append(item)

        walk(self.names)
        return out


def _tuple_names(node) -> tuple:
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_tuple_names(e) for e in node.elts)
    if isinstance(node, ast.Name):
        return node.id
    raise CannotPlace(f"unpacks its cache into {ast.unparse(node)}")


def read_layout(fn: Callable) -> Layout:
    """How `fn` (a backward, its last positional parameter the cache) unpacks its cache."""
    try:
        src = textwrap.dedent(inspect.getsource(inspect.unwrap(fn)))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError) as e:
        raise CannotPlace(f"its source is not available ({e})") from None
    func = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if func is None or not func.args.args:
        raise CannotPlace("it is not a def with a cache parameter")
    cache = func.args.args[-1].arg
    keys = []
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == cache \
                and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                return Layout("single", (target.id,))
            return Layout("tuple", _tuple_names(target))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == cache \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            keys.append(node.slice.value)
    if keys:
        return Layout("dict", tuple(dict.fromkeys(keys)))
    raise CannotPlace(f"it never unpacks `{cache}` (as in `x, w, b = {cache}`)")


def roles(target: str, params: tuple[str, ...]) -> list[str]:
    """The names a cache entry can take for this backward: forward arguments, outputs, hyperparameters."""
    return [*FORWARD_ARGS[target], *OUTPUTS.get(target, ("out",)), *params]


def place(layout: Layout, target: str, params: tuple[str, ...]) -> dict[str, str | None]:
    """name in the cache -> role (None for `_`); raises CannotPlace naming what is left over."""
    known = roles(target, params)
    by_spelling: dict[str, list[str]] = {}
    for r in known:
        for s in {_norm(r)} | SPELLINGS.get(_norm(r), set()):
            by_spelling.setdefault(s, []).append(r)
    placed, unplaced, ambiguous = {}, [], []
    for n in layout.flat():
        if n.strip("_") == "":
            placed[n] = None
            continue
        exact = [r for r in known if r == n]
        cands = exact or by_spelling.get(_norm(n), [])
        if len(cands) == 1:
            placed[n] = cands[0]
        elif cands:
            ambiguous.append(f"{n} ({' or '.join(cands)}?)")
        else:
            unplaced.append(n)
    if unplaced or ambiguous:
        what = ", ".join(unplaced + ambiguous)
        raise CannotPlace(f"its cache holds {what}, which gradaudit cannot place (it knows "
                          f"{', '.join(known)} and their usual spellings)")
    return placed


def _params(op: str) -> tuple[str, ...]:
    """The op's hyperparameters: the keyword-only parameters of its reference forward."""
    from properties import catalogue

    sig = inspect.signature(catalogue.load()[op].forward)
    return tuple(p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY)


def layout_for(pair, fn: Callable) -> tuple[Layout, dict]:
    """(layout, placement) for a backward given without its forward; raises CannotPlace."""
    if pair.target not in FORWARD_ARGS or pair.call is None:
        raise CannotPlace(f"gradaudit does not know the arguments of {pair.forward} well enough to make "
                          f"its cache")
    args = FORWARD_ARGS[pair.target]
    try:
        layout = read_layout(fn)
    except CannotPlace:
        if len(args) != 1:
            raise
        layout = Layout("single", (args[0],))  # relu: `dx = dout * (cache > 0)`, the cache is x
    return layout, place(layout, pair.target, _params(pair.op))


def unplaceable(pair, fn: Callable) -> str | None:
    """Why the backward cannot be checked without its forward, or None when it can."""
    try:
        layout_for(pair, fn)
    except CannotPlace as e:
        return (f"{pair.forward} is not defined, and {pair.target}'s cache cannot be built from how it "
                f"unpacks it: {e}; define {pair.forward} to check it")
    return None


class _Held:
    """The cache handed to the backward, and the shapes its gradients must have."""

    def __init__(self, cache, shapes: dict):
        self.cache, self.shapes = cache, shapes


def adapt(pair, backward: Callable, spec, error: type[Exception]):
    """(forward, backward) of a Target for a backward alone: the catalogue's reference forward makes
    the output, the cache is filled in the backward's own layout, and every gradient it returns is
    checked at once, so that a message (an `error`) names all that is wrong (a None and a wrong shape)."""
    layout, placed = layout_for(pair, backward)
    names = spec.array_names
    args, outs = FORWARD_ARGS[pair.target], OUTPUTS.get(pair.target, ("out",))
    grad_names = {n: next((f"d{a}" for a in args if _norm(a) == _norm(n)), f"d{n}") for n in names}

    def forward(*arrays, **params):
        out, _ = spec.forward(*arrays, **params)
        values = dict(zip(args, pair.call(dict(zip(names, arrays)), params)))
        values.update(zip(outs, out if len(outs) > 1 else (out,)))
        values.update(params)
        cache = layout.build({n: None if r is None else values[r] for n, r in placed.items()})
        return out, _Held(cache, {n: np.shape(a) for n, a in zip(names, arrays)})

    def backward_(*args_):
        *douts, held = args_
        grads = backward(*douts, held.cache)
        seq = grads if isinstance(grads, (tuple, list)) else (grads,)
        if len(seq) == len(names):
            problems = []
            for n, g in zip(names, seq):
                if g is None:
                    problems.append(f"{grad_names[n]} is None (never computed)")
                elif hasattr(g, "shape") and tuple(g.shape) != tuple(held.shapes[n]):
                    problems.append(f"{grad_names[n]} has shape {list(g.shape)}, expected {list(held.shapes[n])}")
            if problems:
                raise error(f"{pair.target}: {'; '.join(problems)}")
        return grads

    return forward, backward_
