"""Mutants of hand-written backwards: each operator (gradaudit/mutant_operators.py) finds the places in a
backward where one real mistake can be made and makes it there, one place per mutant. The mutated
text replaces only the source span of the node it changes, so a mutant's diff is the one line (or
expression) that changed and the rest of the file, comments included, stays as written. Standard
library only (`ast`, `difflib`): this module never runs the code it mutates."""
from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass

from .mutant_ast import FunctionInfo, Site, numpy_alias, parent_map, parenthesize, sizes_in, unparse
from .mutant_operators import OPERATORS

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


def _replacement_text(site: Site, parents: dict) -> str:
    new = site.new
    if isinstance(new, str):
        return new
    if isinstance(site.node, ast.stmt):
        return unparse(new)
    parent = parents.get(site.node)
    if isinstance(parent, _DELIMITED) and not (isinstance(parent, ast.Call) and parent.func is site.node) and \
            not (isinstance(parent, ast.Subscript) and parent.value is site.node):
        return unparse(new)
    return parenthesize(unparse(new), new)


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
    parents = parent_map(tree)
    np_alias = numpy_alias(tree)
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
        info = FunctionInfo(fn=fn, parents=parents, size_names=sizes_in(fn),
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
