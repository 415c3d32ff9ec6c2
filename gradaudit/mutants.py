"""Mutants of hand-written backwards: the mistakes people make when they derive a gradient by hand.

Each operator finds the places in a backward function where one real mistake can be made, and makes
it there, one place per mutant. The mutated text replaces only the source span of the node it
changes, so a mutant's diff is the one line (or expression) that changed and the rest of the file,
comments included, stays as written. Standard library only (`ast`, `difflib`): this module never
runs the code it mutates.

    drop or double a 1/N          one_over_n     `dx / n` -> `dx`, `dx / n / n`;  `.mean(` -> `.sum(`
    flip a sign                   sign           `a - b` -> `a + b`,  `-a` -> `a`,  `-=` <-> `+=`
    transpose an operand          transpose      `w.T` -> `w`,  `a @ b` -> `a.T @ b` / `a @ b.T`
    wrong or missing reduction    axis           `axis=0` -> `axis=1`,  `axis=(0, 2, 3)` -> `(2, 3)`,
                                                 `dout.sum(axis=0)` -> `dout`
    keepdims lost                 keepdims       `.sum(axis=1, keepdims=True)` -> `.sum(axis=1)`
    off-by-one in a loop          off_by_one     `range(T)` -> `range(1, T)` / `range(T - 1)`,
                                                 `caches[t]` -> `caches[t - 1]`
    this step for the previous    prev_state     `prev_h` -> `next_h`,  `prev_c` -> `next_c`
    height and width swapped      swap_hw        `_, _, hh, ww = w.shape` -> `_, _, ww, hh = ...`,
                                                 `hs + hh` -> `hs + ww`,  `["pool_height"]` -> `["pool_width"]`
    `=` for `+=`                  accumulate     `dW += dW_t` -> `dW = dW_t`,  `np.add.at(a, i, v)` -> `a[i] += v`
    stale cache                   stale_cache    a cached `out = f(x)` recomputed from the wrong input:
                                                 `out = f(out)` right after the cache is unpacked
    dout written in place         dout_in_place  `dout * mask` -> `np.multiply(dout, mask, out=dout)`
    kink convention               kink           `x > 0` <-> `x >= 0`,  `<` <-> `<=`
"""
from __future__ import annotations

import ast
import copy
import difflib
import re
from dataclasses import dataclass
from typing import Callable, Iterator

__all__ = ["Mutant", "OPERATORS", "generate", "backward_helpers"]


@dataclass(frozen=True)
class Mutant:
    id: str  # "<function>:<operator>:<k>", stable for a given file
    function: str  # the function whose body changed
    operator: str
    line: int  # 1-based line in the file of the changed node
    description: str  # what changed, in words: "`dx /= n` removed (1/N dropped)"
    source: str  # the whole file with this one change
    diff: str  # unified diff of the function, with the file's line numbers


@dataclass
class _Site:
    node: ast.AST  # the node of the ORIGINAL tree whose source span is replaced
    new: ast.AST | list | str  # an expression, a statement, a list of statements, or raw text
    description: str


@dataclass
class _Info:
    """What the operators need to know about one function."""

    fn: ast.FunctionDef
    parents: dict
    size_names: set
    bound: set  # every name the function binds or reads
    dout: str | None  # the upstream-gradient parameter (first positional), None for a loss
    np: str  # the module's alias of numpy
    forward: ast.FunctionDef | None  # the forward whose cache the function unpacks


# ---- helpers ----------------------------------------------------------------------------------

def _parents(tree: ast.AST) -> dict:
    out = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            out[child] = node
    return out


def _ancestors(node, parents):
    while node in parents:
        node = parents[node]
        yield node


def _call_name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return ""


# calls whose arguments are sizes, indices or shapes, not gradient values
_SHAPE_CALLS = {"range", "reversed", "reshape", "zeros", "empty", "ones", "full", "arange", "pad", "transpose",
                "unravel_index", "broadcast_to", "slice", "eye", "tuple", "len", "int", "swapaxes", "moveaxis",
                "expand_dims", "squeeze", "split", "array_split", "hsplit", "vsplit", "take_along_axis"}
_REDUCTIONS = {"sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "prod", "std", "var", "nansum"}


def _in_index(node, info: _Info) -> bool:
    """Is `node` part of an index, a slice, a size or a shape (not of a gradient's value)?"""
    child = node
    for anc in _ancestors(node, info.parents):
        if isinstance(anc, ast.Subscript) and child is anc.slice:
            return True
        if isinstance(anc, ast.Slice):
            return True
        if isinstance(anc, ast.Call) and child is not anc.func and _call_name(anc) in _SHAPE_CALLS:
            return True
        if isinstance(anc, ast.keyword) and anc.arg in ("axis", "axes", "shape", "dtype", "keepdims", "out"):
            return True
        if isinstance(anc, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = anc.targets if isinstance(anc, ast.Assign) else [anc.target]
            names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            return bool(names) and names <= info.size_names
        if isinstance(anc, ast.stmt):
            return False
        child = anc
    return False


def _is_shape_expr(node) -> bool:
    """`x.shape`, `x.shape[i]`, `len(x)`, `x.size`, `x.ndim`, `param["key"]`."""
    if isinstance(node, ast.Attribute) and node.attr in ("shape", "size", "ndim"):
        return True
    if isinstance(node, ast.Subscript):
        if _is_shape_expr(node.value):
            return True
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return True  # a hyperparameter from a cs231n *_param dict
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("len", "int"):
        return True
    if isinstance(node, ast.Call) and _call_name(node) == "get" and node.args and \
            isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return True  # bn_param.get("eps", 1e-5)
    return False


def _parent_call(name: ast.Name, root: ast.AST):
    """The call whose argument `name` is, inside `root` (x in `len(x)` is no size), else None."""
    for node in ast.walk(root):
        if isinstance(node, ast.Call) and any(a is name for a in node.args):
            return node
        if isinstance(node, ast.Attribute) and node.value is name:
            return ast.Call(node, [], [])  # x in `x.shape[0]`: an array, not a size
    return None


def _sizes(fn: ast.FunctionDef) -> set:
    """Names bound to sizes: from shapes, lengths, params, loop indices, and arithmetic of those."""
    sizes: set = set()

    def size_valued(v) -> bool:
        if _is_shape_expr(v):
            return True
        if isinstance(v, ast.Constant) and isinstance(v.value, int) and not isinstance(v.value, bool):
            return True
        if isinstance(v, ast.Name):
            return v.id in sizes
        if isinstance(v, ast.BinOp):
            return size_valued(v.left) and size_valued(v.right)
        if isinstance(v, ast.UnaryOp):
            return size_valued(v.operand)
        return False

    # names used as sizes: slice bounds, and arguments of range / arange / reshape and of the shape
    # tuple of an allocation (`x_shape, dtype, arg, ph, pw, stride = cache` holds sizes too)
    for node in ast.walk(fn):
        used = []
        if isinstance(node, ast.Slice):
            used = [node.lower, node.upper, node.step]
        elif isinstance(node, ast.Call) and _call_name(node) in ("range", "arange", "reshape"):
            used = [a for a in node.args if not isinstance(a, ast.Starred)]
        elif isinstance(node, ast.Call) and _call_name(node) in ("zeros", "empty", "ones", "full") and node.args \
                and isinstance(node.args[0], ast.Tuple):
            used = node.args[0].elts
        for u in used:
            for n in ast.walk(u) if u is not None else ():
                if isinstance(n, ast.Name) and not isinstance(_parent_call(n, u), ast.Call):
                    sizes.add(n.id)
    changed = True
    while changed:
        changed = False
        for node in ast.walk(fn):
            pairs = []
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        pairs.append((t.id, size_valued(node.value)))
                    elif isinstance(t, ast.Tuple):
                        whole = _is_shape_expr(node.value)
                        vals = node.value.elts if isinstance(node.value, ast.Tuple) and \
                            len(node.value.elts) == len(t.elts) else None
                        for k, e in enumerate(t.elts):
                            if isinstance(e, ast.Name):
                                pairs.append((e.id, whole or (vals is not None and size_valued(vals[k]))))
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and \
                    isinstance(node.iter, ast.Call) and _call_name(node.iter) in ("range", "reversed"):
                pairs.append((node.target.id, True))
            for name, ok in pairs:
                if ok and name not in sizes:
                    sizes.add(name)
                    changed = True
    return sizes


def _numpy_alias(tree: ast.Module) -> str:
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "numpy":
                    return a.asname or "numpy"
    return "np"


def _wrap(text: str, node) -> str:
    """Parenthesize a replacement expression unless it is atomic: it goes where the old one was."""
    if isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant, ast.Tuple,
                         ast.List)):
        return text
    return f"({text})"


def _expr(text: str) -> ast.expr:
    return ast.parse(text, mode="eval").body


def _u(node) -> str:
    return ast.unparse(ast.fix_missing_locations(node))  # new statements need a lineno to unparse


# ---- the operators ----------------------------------------------------------------------------

def _size_denominator(node, info: _Info) -> bool:
    if isinstance(node, ast.Name):
        return node.id in info.size_names and not node.id.startswith(("stride", "pad"))
    if _is_shape_expr(node) and not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                                     and isinstance(node.slice.value, str)):
        return True
    return False


def _factors(node):
    """The factors of a product `a * b * c` (left-nested BinOps)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _factors(node.left) + _factors(node.right)
    return [node]


def op_one_over_n(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and not _in_index(node, info):
            den = node.right
            if _size_denominator(den, info):
                yield _Site(node, node.left, f"`{_u(node)}` -> `{_u(node.left)}` (1/{_u(den)} dropped)")
                twice = ast.BinOp(ast.BinOp(node.left, ast.Div(), den), ast.Div(), den)
                yield _Site(node, twice, f"`{_u(node)}` -> `{_u(twice)}` (1/{_u(den)} applied twice)")
            else:
                fs = _factors(den)
                for k, f in enumerate(fs):
                    if len(fs) > 1 and _size_denominator(f, info):
                        rest = fs[:k] + fs[k + 1:]
                        new_den = rest[0]
                        for r in rest[1:]:
                            new_den = ast.BinOp(new_den, ast.Mult(), r)
                        new = ast.BinOp(node.left, ast.Div(), new_den)
                        yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (1/{_u(f)} dropped)")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Div) and _size_denominator(node.value, info):
            yield _Site(node, "pass", f"`{_u(node)}` removed (1/{_u(node.value)} dropped)")
            twice = ast.AugAssign(node.target, ast.Div(), ast.BinOp(node.value, ast.Mult(), node.value))
            yield _Site(node, twice, f"`{_u(node)}` -> `{_u(twice)}` (1/{_u(node.value)} applied twice)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "mean" \
                and not _in_index(node, info):
            new = copy.deepcopy(node)
            new.func.attr = "sum"
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (the mean's 1/N dropped)")


def op_sign(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if _in_index(node, info):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and \
                not isinstance(node.operand, ast.Constant):
            yield _Site(node, node.operand, f"`{_u(node)}` -> `{_u(node.operand)}` (sign flipped)")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            new = ast.BinOp(node.left, ast.Sub() if isinstance(node.op, ast.Add) else ast.Add(), node.right)
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (sign of `{_u(node.right)}` flipped)")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)) and \
                not (isinstance(node.target, ast.Name) and node.target.id in info.size_names):
            new = ast.AugAssign(node.target, ast.Sub() if isinstance(node.op, ast.Add) else ast.Add(), node.value)
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (sign flipped)")


def op_transpose(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.Attribute) and node.attr == "T" and isinstance(node.ctx, ast.Load):
            yield _Site(node, node.value, f"`{_u(node)}` -> `{_u(node.value)}` (transpose dropped)")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            for side in ("left", "right"):
                operand = getattr(node, side)
                if isinstance(operand, ast.Attribute) and operand.attr == "T":
                    continue  # dropping it is the other mutant
                new = copy.copy(node)
                setattr(new, side, ast.Attribute(operand, "T", ast.Load()))
                yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (operand transposed)")


def _axis_keyword(call: ast.Call):
    for kw in call.keywords:
        if kw.arg == "axis":
            return kw
    return None


def _other_axes(value) -> list:
    """Wrong axes for a reduction over `value` (an int or a tuple of ints), as AST nodes + words."""
    out = []
    if isinstance(value, ast.Constant) and isinstance(value.value, int):
        k = value.value
        wrong = 1 if k == 0 else 0
        out.append((ast.Constant(wrong), f"axis {k} -> {wrong}"))
    elif isinstance(value, ast.Tuple) and all(isinstance(e, ast.Constant) for e in value.elts):
        elts = [e.value for e in value.elts]
        for k in range(len(elts)):
            rest = elts[:k] + elts[k + 1:]
            if rest:
                node = ast.Constant(rest[0]) if len(rest) == 1 else ast.Tuple([ast.Constant(r) for r in rest],
                                                                               ast.Load())
                out.append((node, f"axis {elts[k]} no longer reduced"))
    return out


def op_axis(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if not isinstance(node, ast.Call) or _call_name(node) not in _REDUCTIONS:
            continue
        kw = _axis_keyword(node)
        positional = None
        if kw is None and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == info.np and len(node.args) >= 2:
            positional = 1  # np.sum(x, 0)
        elif kw is None and isinstance(node.func, ast.Attribute) and node.args and \
                not (isinstance(node.func.value, ast.Name) and node.func.value.id == info.np):
            positional = 0  # x.sum(0)
        value = kw.value if kw is not None else (node.args[positional] if positional is not None else None)
        if value is None:
            continue
        for new_value, words in _other_axes(value):
            new = copy.deepcopy(node)
            if kw is not None:
                _axis_keyword(new).value = new_value
            else:
                new.args[positional] = new_value
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` ({words})")
        if _call_name(node) == "sum" and not _in_index(node, info):
            # forgetting to reduce a broadcast axis: the reduction is left out entirely
            operand = node.func.value if isinstance(node.func, ast.Attribute) and not (
                isinstance(node.func.value, ast.Name) and node.func.value.id == info.np) else (
                node.args[0] if node.args else None)
            if operand is not None:
                yield _Site(node, operand, f"`{_u(node)}` -> `{_u(operand)}` (the broadcast axis not reduced)")


def op_keepdims(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "keepdims" and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                    new = copy.deepcopy(node)
                    new.keywords = [k for k in new.keywords if k.arg != "keepdims"]
                    yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (keepdims lost)")


def _range_of(loop: ast.For):
    it = loop.iter
    if isinstance(it, ast.Call) and _call_name(it) == "reversed" and it.args:
        it = it.args[0]
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range" and \
            1 <= len(it.args) <= 3 and not it.keywords:
        return it
    return None


def _plus(node, k: int):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return ast.Constant(node.value + k)
    return ast.BinOp(node, ast.Add() if k > 0 else ast.Sub(), ast.Constant(abs(k)))


def op_off_by_one(info: _Info) -> Iterator[_Site]:
    for loop in ast.walk(info.fn):
        if not isinstance(loop, ast.For):
            continue
        rng = _range_of(loop)
        if rng is not None:
            args = list(rng.args)
            step_negative = len(args) == 3 and isinstance(args[2], ast.UnaryOp) and isinstance(args[2].op, ast.USub) \
                or len(args) == 3 and isinstance(args[2], ast.Constant) and args[2].value < 0
            start, stop = (ast.Constant(0), args[0]) if len(args) == 1 else (args[0], args[1])
            d = -1 if step_negative else 1
            new_start = ast.Call(rng.func, [_plus(start, d), stop, *args[2:]], [])
            yield _Site(rng, new_start, f"`{_u(rng)}` -> `{_u(new_start)}` (the loop starts one step late)")
            stop_args = [_plus(stop, -d)] if len(args) == 1 else [start, _plus(stop, -d), *args[2:]]
            new_stop = ast.Call(rng.func, stop_args, [])
            yield _Site(rng, new_stop, f"`{_u(rng)}` -> `{_u(new_stop)}` (the loop stops one step early)")
        if not isinstance(loop.target, ast.Name):
            continue
        var = loop.target.id
        for stmt in loop.body:
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and node.id == var and isinstance(node.ctx, ast.Load):
                    par = info.parents.get(node)
                    # the index itself, or one element of a tuple index: dh[:, t], caches[t]
                    if isinstance(par, ast.Subscript) and par.slice is node or \
                            isinstance(par, ast.Tuple) and isinstance(info.parents.get(par), ast.Subscript) and \
                            info.parents[par].slice is par:
                        sub = par if isinstance(par, ast.Subscript) else info.parents[par]
                        new = _plus(node, -1)
                        yield _Site(node, new, f"`{_u(sub)}`: index `{var}` -> `{_u(new)}` (the neighbouring step)")


_STEP_PREFIXES = (("prev_", "next_"), ("dprev_", "dnext_"))


def op_prev_state(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
            continue
        for prev, nxt in _STEP_PREFIXES:
            if node.id.startswith(prev):
                stem = node.id[len(prev):]
                for cand in (nxt + stem, stem):
                    if cand in info.bound and cand != node.id:
                        yield _Site(node, ast.Name(cand, ast.Load()),
                                    f"`{node.id}` -> `{cand}` (this step's value where the previous step's belongs)")
                        break


_HW = {"h": "w", "H": "W", "hh": "ww", "HH": "WW", "ph": "pw", "kh": "kw", "fh": "fw", "height": "width",
       "ho": "wo", "oh": "ow", "hp": "wp", "Hp": "Wp", "hs": "ws", "Ho": "Wo", "Hout": "Wout", "hout": "wout",
       "rows": "cols", "HO": "WO"}
_HW.update({v: k for k, v in list(_HW.items())})


def _hw_partner(name: str) -> str | None:
    if name in _HW:
        return _HW[name]
    parts = name.split("_")
    for k, p in enumerate(parts):
        if p in _HW:
            return "_".join(parts[:k] + [_HW[p]] + parts[k + 1:])
    return None


def op_swap_hw(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Tuple):
            elts = node.targets[0].elts
            names = [e.id if isinstance(e, ast.Name) else None for e in elts]
            for i, a in enumerate(names):
                b = _hw_partner(a) if a else None
                if b in names and names.index(b) > i and a in info.size_names:
                    j = names.index(b)
                    new = copy.deepcopy(node)
                    new.targets[0].elts[i], new.targets[0].elts[j] = new.targets[0].elts[j], new.targets[0].elts[i]
                    yield _Site(node, new, f"`{_u(node.targets[0])}` -> `{_u(new.targets[0])}` "
                                           f"(height and width swapped)")
        elif isinstance(node, ast.stmt) or isinstance(info.parents.get(node), ast.stmt) and \
                isinstance(info.parents[node], _COMPOUND) and isinstance(node, ast.expr):
            # every use of a height-like size in one simple statement (or one header expression of a
            # loop or branch) read as its width partner: one consistent slip per place
            if isinstance(node, _COMPOUND) or isinstance(node, ast.FunctionDef):
                continue
            uses = {}
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in info.size_names:
                    b = _hw_partner(n.id)
                    if b is not None and b in info.size_names:
                        uses.setdefault(n.id, b)
            for a, b in uses.items():
                new = _rename(node, a, b)
                words = f"`{a}` -> `{b}` in `{_u(_first_line(node))}`"
                yield _Site(node, new, f"{words} (height and width swapped)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            b = _hw_partner(node.value)
            if b is not None and "_" in node.value and isinstance(info.parents.get(node), (ast.Subscript, ast.Call)):
                yield _Site(node, ast.Constant(b), f"`{node.value!r}` -> `{b!r}` (height and width swapped)")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and \
                node.value.attr == "shape" and isinstance(node.slice, ast.Constant) and node.slice.value in (2, 3) \
                and _four_d(info.fn):
            new = copy.deepcopy(node)
            new.slice = ast.Constant(5 - node.slice.value)
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (height and width swapped)")


_COMPOUND = (ast.For, ast.While, ast.If, ast.With, ast.AsyncFor, ast.AsyncWith, ast.Try)


class _Renamer(ast.NodeTransformer):
    def __init__(self, a, b):
        self.a, self.b = a, b

    def visit_Name(self, n):
        return ast.Name(self.b, n.ctx) if n.id == self.a and isinstance(n.ctx, ast.Load) else n


def _rename(node, a, b):
    return _Renamer(a, b).visit(copy.deepcopy(node))


def _first_line(node):
    """A statement for a description: an assignment as is, a loop by its header."""
    if isinstance(node, ast.stmt) and not isinstance(node, (ast.Assign, ast.AugAssign, ast.Return, ast.Expr)):
        return ast.Constant("...")
    return node


def _four_d(fn) -> bool:
    """Does the function handle (N, C, H, W) arrays (a 4-name unpack of a shape, or shape[3])?"""
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Tuple) and len(n.targets[0].elts) == 4 \
                and _is_shape_expr(n.value):
            return True
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Attribute) and n.value.attr == "shape" and \
                isinstance(n.slice, ast.Constant) and n.slice.value == 3:
            return True
    return False


def op_accumulate(info: _Info) -> Iterator[_Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add) and \
                any(isinstance(a, (ast.For, ast.While)) for a in _ancestors(node, info.parents)):
            new = ast.Assign([node.target], node.value)
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (`=` instead of `+=` in the loop)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "at" and \
                isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "add" and len(node.args) == 3:
            stmt = info.parents.get(node)
            if isinstance(stmt, ast.Expr):
                a, i, v = node.args
                new = ast.AugAssign(ast.Subscript(a, i, ast.Store()), ast.Add(), v)
                yield _Site(stmt, new, f"`{_u(node)}` -> `{_u(new)}` (repeated indices add once)")


def _cache_definitions(forward: ast.FunctionDef) -> list:
    """For each element of the cache the forward returns: (name, defining Call) or None."""
    ret = None
    for node in ast.walk(forward):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            ret = node.value
    if ret is None:
        return []
    cache = ret.elts[-1]
    elts = cache.elts if isinstance(cache, ast.Tuple) else [cache]
    defs: dict = {}
    for node in ast.walk(forward):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t, v = node.targets[0], node.value
            if isinstance(t, ast.Name):
                defs[t.id] = v
            elif isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts):
                for a, b in zip(t.elts, v.elts):
                    if isinstance(a, ast.Name):
                        defs[a.id] = b
    out = []
    for e in elts:
        v = defs.get(e.id) if isinstance(e, ast.Name) else None
        ok = isinstance(v, ast.Call) and v.args and all(isinstance(a, ast.Constant) for a in v.args[1:]) and \
            all(isinstance(k.value, ast.Constant) for k in v.keywords) and not isinstance(v.args[0], ast.Starred)
        out.append((e.id, v) if ok else None)
    return out


def op_stale_cache(info: _Info) -> Iterator[_Site]:
    if info.forward is None or len(info.fn.args.args) < 2:
        return
    cache_arg = info.fn.args.args[-1].arg
    defs = _cache_definitions(info.forward)
    if not defs:
        return
    for stmt in info.fn.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.value, ast.Name)
                and stmt.value.id == cache_arg):
            continue
        t = stmt.targets[0]
        names = [e.id if isinstance(e, ast.Name) else None for e in t.elts] if isinstance(t, ast.Tuple) else \
            [t.id if isinstance(t, ast.Name) else None]
        if len(names) != len(defs):
            return
        indent = " " * stmt.col_offset
        for name, d in zip(names, defs):
            if name is None or d is None:
                continue
            call = copy.deepcopy(d[1])
            call.args[0] = ast.Name(name, ast.Load())
            text = f"{_u(stmt)}\n{indent}{name} = {_u(call)}"
            yield _Site(stmt, text, f"`{name}` recomputed as `{_u(call)}` from the wrong input "
                                    f"(the forward had `{d[0]} = {_u(d[1])}`)")
        return


def op_dout_in_place(info: _Info) -> Iterator[_Site]:
    if info.dout is None:
        return
    ufunc = {ast.Mult: "multiply", ast.Add: "add", ast.Sub: "subtract", ast.Div: "divide"}
    for node in ast.walk(info.fn):
        if not isinstance(node, ast.BinOp) or type(node.op) not in ufunc or _in_index(node, info):
            continue
        if isinstance(node.left, ast.Name) and node.left.id == info.dout:
            other = node.right
        elif isinstance(node.right, ast.Name) and node.right.id == info.dout and \
                isinstance(node.op, (ast.Mult, ast.Add)):
            other = node.left  # y * dout: the same product, written into dout
        else:
            continue
        if True:
            new = _expr(f"{info.np}.{ufunc[type(node.op)]}({info.dout}, {_u(other)}, out={info.dout})")
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (the result written into {info.dout})")


def op_kink(info: _Info) -> Iterator[_Site]:
    swap = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt}
    for node in ast.walk(info.fn):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in swap:
            if _is_sizes_only(node, info):
                continue  # `if stride < 1:` is a size check, not a kink
            new = ast.Compare(node.left, [swap[type(node.ops[0])]()], node.comparators)
            yield _Site(node, new, f"`{_u(node)}` -> `{_u(new)}` (the kink's convention changed)")


def _is_sizes_only(node, info) -> bool:
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
    return all(n in info.size_names for n in names)


OPERATORS: dict[str, tuple[str, Callable[[_Info], Iterator[_Site]]]] = {
    "one_over_n": ("drop or double a 1/N", op_one_over_n),
    "sign": ("flip a sign", op_sign),
    "transpose": ("transpose an operand (.T added or removed)", op_transpose),
    "axis": ("reduce over the wrong axis, or forget to reduce a broadcast axis", op_axis),
    "keepdims": ("keepdims lost", op_keepdims),
    "off_by_one": ("off-by-one step in a loop (start, stop or the recurrent index)", op_off_by_one),
    "prev_state": ("this step's input or state where the previous one belongs", op_prev_state),
    "swap_hw": ("height and width swapped in a size formula", op_swap_hw),
    "accumulate": ("`=` instead of `+=` in a loop (or a fancy-index `+=` for np.add.at)", op_accumulate),
    "stale_cache": ("a cached value recomputed from the wrong input", op_stale_cache),
    "dout_in_place": ("the upstream gradient written in place", op_dout_in_place),
    "kink": ("a kink convention changed (`>` <-> `>=`)", op_kink),
}


# ---- splicing a change into the file's text ---------------------------------------------------

def _splice(lines: list[bytes], node: ast.AST, text: str) -> list[bytes]:
    """`lines` (UTF-8, with line ends) with the source span of `node` replaced by `text`. The AST's
    column offsets count UTF-8 bytes."""
    l0, c0, l1, c1 = node.lineno - 1, node.col_offset, node.end_lineno - 1, node.end_col_offset
    head, tail = lines[l0][:c0], lines[l1][c1:]
    new = (head + text.encode("utf-8") + tail).splitlines(keepends=True)
    return lines[:l0] + new + lines[l1 + 1:]


# where an expression stands alone between delimiters, a lower-precedence replacement needs no parentheses
_DELIMITED = (ast.Call, ast.keyword, ast.Tuple, ast.List, ast.Slice, ast.Return, ast.Assign, ast.AugAssign,
              ast.Expr, ast.Subscript)


def _replacement_text(site: _Site, parents: dict) -> str:
    new = site.new
    if isinstance(new, str):
        return new
    if isinstance(site.node, ast.stmt):
        return _u(new)
    parent = parents.get(site.node)
    if isinstance(parent, _DELIMITED) and not (isinstance(parent, ast.Call) and parent.func is site.node) and \
            not (isinstance(parent, ast.Subscript) and parent.value is site.node):
        return _u(new)
    return _wrap(_u(new), new)


def _function_nodes(tree: ast.Module) -> dict:
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _span(fn: ast.FunctionDef) -> tuple[int, int]:
    first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    return first, fn.end_lineno


def backward_helpers(source: str, backwards: list[str], others: list[str] | None = None) -> dict[str, list[str]]:
    """Private module-level functions (`_name`) that only backward code calls: {helper: [backwards
    that reach it]}. A backward's arithmetic often lives in one (`_normalize_backward`); a helper
    that a forward also calls (`_sigmoid`) is not backward code."""
    tree = ast.parse(source)
    fns = _function_nodes(tree)

    def calls(name):
        return {n.func.id for n in ast.walk(fns[name]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id in fns}

    def reach(roots):
        seen, todo = set(), list(roots)
        while todo:
            f = todo.pop()
            for g in calls(f):
                if g not in seen:
                    seen.add(g)
                    todo.append(g)
        return seen

    non_backward = [f for f in fns if f not in backwards and not f.startswith("_")] if others is None else others
    forward_reach = reach([f for f in non_backward if f in fns])
    out: dict = {}
    for b in backwards:
        if b not in fns:
            continue
        for h in sorted(reach([b])):
            if h.startswith("_") and h not in forward_reach and h not in backwards:
                out.setdefault(h, []).append(b)
    return out


def generate(source: str, functions: list[str], *, forwards: dict[str, str] | None = None,
             operators: list[str] | None = None, losses: set | None = None, filename: str = "<file>") -> list[Mutant]:
    """Every mutant of `functions` (names of module-level functions of `source`) by `operators`
    (default: all). `forwards` maps a backward to the forward that makes its cache (for
    stale_cache); `losses` names functions with no upstream gradient (`loss, dx = f(x, y)`)."""
    tree = ast.parse(source, filename=filename)
    fns = _function_nodes(tree)
    parents = _parents(tree)
    np_alias = _numpy_alias(tree)
    lines = source.encode("utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    forwards = forwards or {}
    losses = losses or set()
    chosen = list(OPERATORS) if operators is None else list(operators)
    unknown = [o for o in chosen if o not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown mutation operator(s) {', '.join(unknown)}; known: {', '.join(OPERATORS)}")
    out: list[Mutant] = []
    for name in functions:
        fn = fns.get(name)
        if fn is None:
            continue
        positional = [a.arg for a in fn.args.args]
        info = _Info(fn=fn, parents=parents, size_names=_sizes(fn),
                     bound={n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | set(positional),
                     dout=positional[0] if positional and name not in losses else None, np=np_alias,
                     forward=fns.get(forwards.get(name, "")))
        original_fn = ast.dump(fn)
        first, last = _span(fn)
        seen_sources = set()
        for op in chosen:
            k = 0
            for site in OPERATORS[op][1](info):
                new_lines = _splice(lines, site.node, _replacement_text(site, parents))
                new_source = b"".join(new_lines).decode("utf-8")
                try:
                    new_tree = ast.parse(new_source)
                except SyntaxError:
                    continue  # a change that does not parse is no mistake anyone ships
                new_fn = _function_nodes(new_tree).get(name)
                if new_fn is None or ast.dump(new_fn) == original_fn or new_source in seen_sources:
                    continue
                seen_sources.add(new_source)
                shift = len(new_lines) - len(lines)
                diff = "".join(difflib.unified_diff(
                    [b.decode("utf-8") for b in lines[first - 1:last]],
                    [b.decode("utf-8") for b in new_lines[first - 1:last + shift]],
                    fromfile=f"{filename}:{name}", tofile=f"{filename}:{name} ({op})", n=1, lineterm="\n"))
                diff = _renumber(diff, first)
                out.append(Mutant(id=f"{name}:{op}:{k}", function=name, operator=op, line=site.node.lineno,
                                  description=site.description, source=new_source, diff=diff))
                k += 1
    return out


_HUNK = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@")


def _renumber(diff: str, first: int) -> str:
    """Hunk headers of a diff of the function's lines, in the file's line numbers."""
    out = []
    for line in diff.splitlines(keepends=True):
        m = _HUNK.match(line)
        if m:
            a, b = int(m.group(1)) + first - 1, int(m.group(3)) + first - 1
            line = f"@@ -{a}{m.group(2) or ''} +{b}{m.group(4) or ''} @@\n"
        out.append(line)
    return "".join(out)
