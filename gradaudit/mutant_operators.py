"""The mutation operators: the mistakes people make when they derive a gradient by hand.

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
from typing import Callable, Iterator

from .mutant_ast import (COMPOUND, REDUCTIONS, FunctionInfo, Site, ancestors, cache_definitions, call_name,
                         first_line, in_index, is_four_d, is_shape_expr, parse_expr, rename, unparse)

__all__ = ["OPERATORS"]


# ---- the operators ----------------------------------------------------------------------------

def _size_denominator(node, info: FunctionInfo) -> bool:
    if isinstance(node, ast.Name):
        return node.id in info.size_names and not node.id.startswith(("stride", "pad"))
    if is_shape_expr(node) and not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                                     and isinstance(node.slice.value, str)):
        return True
    return False


def _factors(node):
    """The factors of a product `a * b * c` (left-nested BinOps)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _factors(node.left) + _factors(node.right)
    return [node]


def op_one_over_n(info: FunctionInfo) -> Iterator[Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and not in_index(node, info):
            den = node.right
            if _size_denominator(den, info):
                yield Site(node, node.left, f"`{unparse(node)}` -> `{unparse(node.left)}` (1/{unparse(den)} dropped)")
                twice = ast.BinOp(ast.BinOp(node.left, ast.Div(), den), ast.Div(), den)
                yield Site(node, twice, f"`{unparse(node)}` -> `{unparse(twice)}` (1/{unparse(den)} applied twice)")
            else:
                fs = _factors(den)
                for k, f in enumerate(fs):
                    if len(fs) > 1 and _size_denominator(f, info):
                        rest = fs[:k] + fs[k + 1:]
                        new_den = rest[0]
                        for r in rest[1:]:
                            new_den = ast.BinOp(new_den, ast.Mult(), r)
                        new = ast.BinOp(node.left, ast.Div(), new_den)
                        yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (1/{unparse(f)} dropped)")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Div) and _size_denominator(node.value, info):
            yield Site(node, "pass", f"`{unparse(node)}` removed (1/{unparse(node.value)} dropped)")
            twice = ast.AugAssign(node.target, ast.Div(), ast.BinOp(node.value, ast.Mult(), node.value))
            yield Site(node, twice, f"`{unparse(node)}` -> `{unparse(twice)}` (1/{unparse(node.value)} applied twice)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "mean" \
                and not in_index(node, info):
            new = copy.deepcopy(node)
            new.func.attr = "sum"
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (the mean's 1/N dropped)")


def op_sign(info: FunctionInfo) -> Iterator[Site]:
    for node in ast.walk(info.fn):
        if in_index(node, info):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and \
                not isinstance(node.operand, ast.Constant):
            yield Site(node, node.operand, f"`{unparse(node)}` -> `{unparse(node.operand)}` (sign flipped)")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            new = ast.BinOp(node.left, ast.Sub() if isinstance(node.op, ast.Add) else ast.Add(), node.right)
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (sign of `{unparse(node.right)}` flipped)")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)) and \
                not (isinstance(node.target, ast.Name) and node.target.id in info.size_names):
            new = ast.AugAssign(node.target, ast.Sub() if isinstance(node.op, ast.Add) else ast.Add(), node.value)
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (sign flipped)")


TRANSPOSES = ("T", "mT")  # NumPy 2's .mT: the last two axes (a stack of matrices)


def op_transpose(info: FunctionInfo) -> Iterator[Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.Attribute) and node.attr in TRANSPOSES and isinstance(node.ctx, ast.Load):
            yield Site(node, node.value, f"`{unparse(node)}` -> `{unparse(node.value)}` (transpose dropped)")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            for side in ("left", "right"):
                operand = getattr(node, side)
                if isinstance(operand, ast.Attribute) and operand.attr in TRANSPOSES:
                    continue  # dropping it is the other mutant
                new = copy.copy(node)
                setattr(new, side, ast.Attribute(operand, "T", ast.Load()))
                yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (operand transposed)")


def _axis_keyword(call: ast.Call):
    for kw in call.keywords:
        if kw.arg == "axis":
            return kw
    return None


def _axis_of(node) -> int | None:
    """The int an axis expression spells (`0`, `-2`), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _axis_of(node.operand)
        return -inner if inner is not None else None
    return None


def _axis_node(k: int):
    return ast.Constant(k) if k >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-k))


def _other_axes(value) -> list:
    """Wrong axes for a reduction over `value` (an int or a tuple of ints, negative ones too), as AST
    nodes + words."""
    out = []
    k = _axis_of(value)
    if k is not None:
        wrong = {0: 1, -1: -2}.get(k, 0 if k > 0 else -1)  # the neighbouring axis, on the same side
        out.append((_axis_node(wrong), f"axis {k} -> {wrong}"))
    elif isinstance(value, ast.Tuple) and all(_axis_of(e) is not None for e in value.elts):
        elts = [_axis_of(e) for e in value.elts]
        for k in range(len(elts)):
            rest = elts[:k] + elts[k + 1:]
            if rest:
                node = _axis_node(rest[0]) if len(rest) == 1 else ast.Tuple([_axis_node(r) for r in rest], ast.Load())
                out.append((node, f"axis {elts[k]} no longer reduced"))
    return out


def op_axis(info: FunctionInfo) -> Iterator[Site]:
    for node in ast.walk(info.fn):
        if not isinstance(node, ast.Call) or call_name(node) not in REDUCTIONS:
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
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` ({words})")
        if call_name(node) == "sum" and not in_index(node, info):
            # forgetting to reduce a broadcast axis: the reduction is left out entirely
            operand = node.func.value if isinstance(node.func, ast.Attribute) and not (
                isinstance(node.func.value, ast.Name) and node.func.value.id == info.np) else (
                node.args[0] if node.args else None)
            if operand is not None:
                yield Site(node, operand, f"`{unparse(node)}` -> `{unparse(operand)}` (the broadcast axis not reduced)")


def op_keepdims(info: FunctionInfo) -> Iterator[Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "keepdims" and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                    new = copy.deepcopy(node)
                    new.keywords = [k for k in new.keywords if k.arg != "keepdims"]
                    yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (keepdims lost)")


def _range_of(loop: ast.For):
    it = loop.iter
    if isinstance(it, ast.Call) and call_name(it) == "reversed" and it.args:
        it = it.args[0]
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range" and \
            1 <= len(it.args) <= 3 and not it.keywords:
        return it
    return None


def _plus(node, k: int):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return ast.Constant(node.value + k)
    return ast.BinOp(node, ast.Add() if k > 0 else ast.Sub(), ast.Constant(abs(k)))


def op_off_by_one(info: FunctionInfo) -> Iterator[Site]:
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
            yield Site(rng, new_start, f"`{unparse(rng)}` -> `{unparse(new_start)}` (the loop starts one step late)")
            stop_args = [_plus(stop, -d)] if len(args) == 1 else [start, _plus(stop, -d), *args[2:]]
            new_stop = ast.Call(rng.func, stop_args, [])
            yield Site(rng, new_stop, f"`{unparse(rng)}` -> `{unparse(new_stop)}` (the loop stops one step early)")
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
                        yield Site(node, new, f"`{unparse(sub)}`: index `{var}` -> `{unparse(new)}` (the neighbouring step)")


_STEP_PREFIXES = (("prev_", "next_"), ("dprev_", "dnext_"))


def op_prev_state(info: FunctionInfo) -> Iterator[Site]:
    for node in ast.walk(info.fn):
        if not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
            continue
        for prev, nxt in _STEP_PREFIXES:
            if node.id.startswith(prev):
                stem = node.id[len(prev):]
                for cand in (nxt + stem, stem):
                    if cand in info.bound and cand != node.id:
                        yield Site(node, ast.Name(cand, ast.Load()),
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


def op_swap_hw(info: FunctionInfo) -> Iterator[Site]:
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
                    yield Site(node, new, f"`{unparse(node.targets[0])}` -> `{unparse(new.targets[0])}` "
                                           f"(height and width swapped)")
        elif isinstance(node, ast.stmt) or isinstance(info.parents.get(node), ast.stmt) and \
                isinstance(info.parents[node], COMPOUND) and isinstance(node, ast.expr):
            # every use of a height-like size in one simple statement (or one header expression of a
            # loop or branch) read as its width partner: one consistent slip per place
            if isinstance(node, COMPOUND) or isinstance(node, ast.FunctionDef):
                continue
            uses = {}
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in info.size_names:
                    b = _hw_partner(n.id)
                    if b is not None and b in info.size_names:
                        uses.setdefault(n.id, b)
            for a, b in uses.items():
                new = rename(node, a, b)
                words = f"`{a}` -> `{b}` in `{unparse(first_line(node))}`"
                yield Site(node, new, f"{words} (height and width swapped)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            b = _hw_partner(node.value)
            if b is not None and "_" in node.value and isinstance(info.parents.get(node), (ast.Subscript, ast.Call)):
                yield Site(node, ast.Constant(b), f"`{node.value!r}` -> `{b!r}` (height and width swapped)")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and \
                node.value.attr == "shape" and isinstance(node.slice, ast.Constant) and node.slice.value in (2, 3) \
                and is_four_d(info.fn):
            new = copy.deepcopy(node)
            new.slice = ast.Constant(5 - node.slice.value)
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (height and width swapped)")


def op_accumulate(info: FunctionInfo) -> Iterator[Site]:
    for node in ast.walk(info.fn):
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add) and \
                any(isinstance(a, (ast.For, ast.While)) for a in ancestors(node, info.parents)):
            new = ast.Assign([node.target], node.value)
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (`=` instead of `+=` in the loop)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "at" and \
                isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "add" and len(node.args) == 3:
            stmt = info.parents.get(node)
            if isinstance(stmt, ast.Expr):
                a, i, v = node.args
                new = ast.AugAssign(ast.Subscript(a, i, ast.Store()), ast.Add(), v)
                yield Site(stmt, new, f"`{unparse(node)}` -> `{unparse(new)}` (repeated indices add once)")


def op_stale_cache(info: FunctionInfo) -> Iterator[Site]:
    if info.forward is None or len(info.fn.args.args) < 2:
        return
    cache_arg = info.fn.args.args[-1].arg
    defs = cache_definitions(info.forward)
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
            text = f"{unparse(stmt)}\n{indent}{name} = {unparse(call)}"
            yield Site(stmt, text, f"`{name}` recomputed as `{unparse(call)}` from the wrong input "
                                    f"(the forward had `{d[0]} = {unparse(d[1])}`)")
        return


def op_dout_in_place(info: FunctionInfo) -> Iterator[Site]:
    if info.dout is None:
        return
    ufunc = {ast.Mult: "multiply", ast.Add: "add", ast.Sub: "subtract", ast.Div: "divide"}
    for node in ast.walk(info.fn):
        if not isinstance(node, ast.BinOp) or type(node.op) not in ufunc or in_index(node, info):
            continue
        if isinstance(node.left, ast.Name) and node.left.id == info.dout:
            other = node.right
        elif isinstance(node.right, ast.Name) and node.right.id == info.dout and \
                isinstance(node.op, (ast.Mult, ast.Add)):
            other = node.left  # y * dout: the same product, written into dout
        else:
            continue
        if True:
            new = parse_expr(f"{info.np}.{ufunc[type(node.op)]}({info.dout}, {unparse(other)}, out={info.dout})")
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (the result written into {info.dout})")


def op_kink(info: FunctionInfo) -> Iterator[Site]:
    swap = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt}
    for node in ast.walk(info.fn):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in swap:
            if _is_sizes_only(node, info):
                continue  # `if stride < 1:` is a size check, not a kink
            new = ast.Compare(node.left, [swap[type(node.ops[0])]()], node.comparators)
            yield Site(node, new, f"`{unparse(node)}` -> `{unparse(new)}` (the kink's convention changed)")


def _is_sizes_only(node, info) -> bool:
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
    return all(n in info.size_names for n in names)


OPERATORS: dict[str, tuple[str, Callable[[FunctionInfo], Iterator[Site]]]] = {
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
