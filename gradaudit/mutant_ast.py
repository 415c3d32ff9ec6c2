"""What the mutation operators (gradaudit/mutant_operators.py) know about a function's syntax: which
names hold sizes, which nodes are indices or shapes rather than gradient values, what a forward's
cache holds. Standard library only (`ast`): nothing here runs the code it reads."""
from __future__ import annotations

import ast
import copy
from dataclasses import dataclass

__all__ = ["Site", "FunctionInfo", "parent_map", "ancestors", "call_name", "in_index", "is_shape_expr", "sizes_in",
           "numpy_alias", "parenthesize", "parse_expr", "unparse", "rename", "first_line", "is_four_d",
           "cache_definitions", "COMPOUND", "REDUCTIONS", "SHAPE_CALLS"]


@dataclass
class Site:
    node: ast.AST  # the node of the ORIGINAL tree whose source span is replaced
    new: ast.AST | list | str  # an expression, a statement, a list of statements, or raw text
    description: str


@dataclass
class FunctionInfo:
    """What the operators need to know about one function."""

    fn: ast.FunctionDef
    parents: dict
    size_names: set
    bound: set  # every name the function binds or reads
    dout: str | None  # the upstream-gradient parameter (first positional), None for a loss
    np: str  # the module's alias of numpy
    forward: ast.FunctionDef | None  # the forward whose cache the function unpacks


# ---- reading a function ----------------------------------------------------------------------------------

def parent_map(tree: ast.AST) -> dict:
    out = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            out[child] = node
    return out


def ancestors(node, parents):
    while node in parents:
        node = parents[node]
        yield node


def call_name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return ""


# calls whose arguments are sizes, indices or shapes, not gradient values
SHAPE_CALLS = {"range", "reversed", "reshape", "zeros", "empty", "ones", "full", "arange", "pad", "transpose",
                "unravel_index", "broadcast_to", "slice", "eye", "tuple", "len", "int", "swapaxes", "moveaxis",
                "expand_dims", "squeeze", "split", "array_split", "hsplit", "vsplit", "take_along_axis"}
REDUCTIONS = {"sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "prod", "std", "var", "nansum"}


def in_index(node, info: FunctionInfo) -> bool:
    """Is `node` part of an index, a slice, a size or a shape (not of a gradient's value)?"""
    child = node
    for anc in ancestors(node, info.parents):
        if isinstance(anc, ast.Subscript) and child is anc.slice:
            return True
        if isinstance(anc, ast.Slice):
            return True
        if isinstance(anc, ast.Call) and child is not anc.func and call_name(anc) in SHAPE_CALLS:
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


def is_shape_expr(node) -> bool:
    """`x.shape`, `x.shape[i]`, `len(x)`, `x.size`, `x.ndim`, `param["key"]`."""
    if isinstance(node, ast.Attribute) and node.attr in ("shape", "size", "ndim"):
        return True
    if isinstance(node, ast.Subscript):
        if is_shape_expr(node.value):
            return True
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return True  # a hyperparameter from a cs231n *_param dict
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("len", "int"):
        return True
    if isinstance(node, ast.Call) and call_name(node) == "get" and node.args and \
            isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return True  # bn_param.get("eps", 1e-5)
    return False


def parent_call(name: ast.Name, root: ast.AST):
    """The call whose argument `name` is, inside `root` (x in `len(x)` is no size), else None."""
    for node in ast.walk(root):
        if isinstance(node, ast.Call) and any(a is name for a in node.args):
            return node
        if isinstance(node, ast.Attribute) and node.value is name:
            return ast.Call(node, [], [])  # x in `x.shape[0]`: an array, not a size
    return None


def sizes_in(fn: ast.FunctionDef) -> set:
    """Names bound to sizes: from shapes, lengths, params, loop indices, and arithmetic of those."""
    sizes: set = set()

    def size_valued(v) -> bool:
        if is_shape_expr(v):
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
        elif isinstance(node, ast.Call) and call_name(node) in ("range", "arange", "reshape"):
            used = [a for a in node.args if not isinstance(a, ast.Starred)]
        elif isinstance(node, ast.Call) and call_name(node) in ("zeros", "empty", "ones", "full") and node.args \
                and isinstance(node.args[0], ast.Tuple):
            used = node.args[0].elts
        for u in used:
            for n in ast.walk(u) if u is not None else ():
                if isinstance(n, ast.Name) and not isinstance(parent_call(n, u), ast.Call):
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
                        whole = is_shape_expr(node.value)
                        vals = node.value.elts if isinstance(node.value, ast.Tuple) and \
                            len(node.value.elts) == len(t.elts) else None
                        for k, e in enumerate(t.elts):
                            if isinstance(e, ast.Name):
                                pairs.append((e.id, whole or (vals is not None and size_valued(vals[k]))))
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and \
                    isinstance(node.iter, ast.Call) and call_name(node.iter) in ("range", "reversed"):
                pairs.append((node.target.id, True))
            for name, ok in pairs:
                if ok and name not in sizes:
                    sizes.add(name)
                    changed = True
    return sizes


def numpy_alias(tree: ast.Module) -> str:
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "numpy":
                    return a.asname or "numpy"
    return "np"


def parenthesize(text: str, node) -> str:
    """Parenthesize a replacement expression unless it is atomic: it goes where the old one was."""
    if isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant, ast.Tuple,
                         ast.List)):
        return text
    return f"({text})"


def parse_expr(text: str) -> ast.expr:
    return ast.parse(text, mode="eval").body


def unparse(node) -> str:
    return ast.unparse(ast.fix_missing_locations(node))  # new statements need a lineno to unparse


COMPOUND = (ast.For, ast.While, ast.If, ast.With, ast.AsyncFor, ast.AsyncWith, ast.Try)


class Renamer(ast.NodeTransformer):
    def __init__(self, a, b):
        self.a, self.b = a, b

    def visit_Name(self, n):
        return ast.Name(self.b, n.ctx) if n.id == self.a and isinstance(n.ctx, ast.Load) else n


def rename(node, a, b):
    return Renamer(a, b).visit(copy.deepcopy(node))


def first_line(node):
    """A statement for a description: an assignment as is, a loop by its header."""
    if isinstance(node, ast.stmt) and not isinstance(node, (ast.Assign, ast.AugAssign, ast.Return, ast.Expr)):
        return ast.Constant("...")
    return node


def is_four_d(fn) -> bool:
    """Does the function handle (N, C, H, W) arrays (a 4-name unpack of a shape, or shape[3])?"""
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Tuple) and len(n.targets[0].elts) == 4 \
                and is_shape_expr(n.value):
            return True
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Attribute) and n.value.attr == "shape" and \
                isinstance(n.slice, ast.Constant) and n.slice.value == 3:
            return True
    return False


def cache_definitions(forward: ast.FunctionDef) -> list:
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
