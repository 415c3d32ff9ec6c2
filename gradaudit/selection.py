"""`gradaudit audit -k EXPR`: which functions of a file to check, pytest's way. EXPR is a substring
of a function's name (case-insensitive), or an expression of them with `and`, `or`, `not` and
parentheses: `-k conv`, `-k "batchnorm and not spatial"`, `-k "affine or relu"`."""
from __future__ import annotations

import re
from typing import Callable, Iterable

__all__ = ["KeywordError", "matcher", "select"]


class KeywordError(ValueError):
    """An expression that does not parse; the message says where."""


_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def matcher(expr: str) -> Callable[[Iterable[str]], bool]:
    """A predicate over the names of one function (its backward's, its forward's, its op's): true when
    the expression holds, each word true when it is a substring of one of the names."""
    tokens = _TOKEN.findall(expr)
    if not tokens or "".join(tokens).strip() == "":
        raise KeywordError("-k needs an expression, e.g. -k conv or -k \"batchnorm and not spatial\"")
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            got = "the end" if tok is None else repr(tok)
            raise KeywordError(f"-k {expr!r}: expected {expected or 'a name'} at {got}")
        pos += 1
        return tok

    def either():
        parts = [both()]
        while peek() == "or":
            take("or")
            parts.append(both())
        return lambda names: any(p(names) for p in parts)

    def both():
        parts = [negation()]
        while peek() == "and":
            take("and")
            parts.append(negation())
        return lambda names: all(p(names) for p in parts)

    def negation():
        if peek() == "not":
            take("not")
            inner = negation()
            return lambda names: not inner(names)
        if peek() == "(":
            take("(")
            inner = either()
            take(")")
            return inner
        word = take()
        if word in ("and", "or", ")"):
            raise KeywordError(f"-k {expr!r}: expected a name before {word!r}")
        word = word.lower()
        return lambda names: any(word in n.lower() for n in names)

    pred = either()
    if pos != len(tokens):
        raise KeywordError(f"-k {expr!r}: unexpected {tokens[pos]!r}")
    return lambda names: pred([n for n in names if n])


def select(jobs: list[dict], expr: str | None) -> list[dict]:
    """The planned jobs (gradaudit.audit's, as dicts) whose function names match `expr` (None: all)."""
    if expr is None:
        return list(jobs)
    keep = matcher(expr)
    return [j for j in jobs if keep([j.get("target") or "", j.get("forward") or "", j.get("name") or ""])]
