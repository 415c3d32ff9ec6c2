"""Slips in writing a `@gradaudit.derivation`, explained in the user's terms instead of as the error
Python, NumPy or a framework raises at them: a shape written as a string (`("D")` is "D", and
`("N" "D")` is "ND"), a forward without `xp` first, NumPy called on a framework's tensor, a shape
symbol misspelt. Each function here is called from one place in derivation.py or _xp_target.py."""
from __future__ import annotations

import difflib
import inspect
import re

__all__ = ["check_first_parameter", "check_sizes", "forward_error", "framework_slip", "signature",
           "string_annotation"]


def string_annotation(fn_name: str, arg: str, text: str) -> TypeError:
    """`x: ("D")` is the string "D" (parentheses alone make no tuple); `("N" "D")` is "ND"."""
    fix = f'("{text}",)' if text else "(...)"
    msg = (f'{fn_name}: argument {arg!r} is annotated with the string "{text}", not a tuple of symbols: write '
           f"{fix} (a one-symbol tuple needs its comma)")
    if len(text) > 1 and text.isalpha():
        msg += (f"; if these are {len(text)} symbols, Python joined them (\"N\" \"D\" is \"ND\"): write "
                f"({', '.join(repr(c).replace(chr(39), chr(34)) for c in text)})")
    return TypeError(msg)


def signature(fn, fn_name: str) -> inspect.Signature:
    """inspect.signature with annotations evaluated; a string annotation that names nothing (`("D")`
    without `from __future__ import annotations` is the string "D", evaluated as a name) is explained."""
    try:
        return inspect.signature(fn, eval_str=True)
    except NameError:
        for p in inspect.signature(fn).parameters.values():
            if isinstance(p.annotation, str):
                try:
                    eval(p.annotation, getattr(fn, "__globals__", {}))  # noqa: S307  (the user's own annotation)
                except NameError:
                    raise string_annotation(fn_name, p.name, p.annotation) from None
                except Exception:
                    pass
        raise


def check_first_parameter(fn_name: str, first: inspect.Parameter) -> None:
    """The forward's first parameter is the namespace `xp`; one annotated with a shape is an array."""
    from .arguments import ArgSpec

    ann = first.annotation
    if isinstance(ann, (tuple, list, ArgSpec)) or (isinstance(ann, str) and ann):
        raise TypeError(f"{fn_name}: the forward's first parameter is the array namespace: write "
                        f"def {fn_name}(xp, {first.name}, ...) and use xp.exp, xp.tanh, ... in it "
                        f"({first.name!r} is annotated as an array)")


def check_sizes(fn_name: str, sizes: dict, symbols: list[str]) -> None:
    """`sizes=` keys that no shape uses: a misspelt symbol."""
    unknown = [k for k in sizes if k not in symbols]
    if unknown:
        near = {k: difflib.get_close_matches(k, symbols, n=1, cutoff=0.5) or
                [s for s in symbols if s.lower() == k.lower()] for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {v[0]!r}?" for k, v in near.items() if v)
        raise TypeError(f"{fn_name}: sizes= names {', '.join(map(repr, unknown))}, which no shape uses; the "
                        f"symbols are {', '.join(symbols) or 'none'}" + (f" ({hints})" if hints else ""))


_SHAPE_WORDS = re.compile(r"shape|broadcast|size|dimension|mismatch|aligned|match", re.I)


def _drawn(d, arrays, params) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for spec, value in [*zip(d.arrays.values(), arrays), *((d.params[k], v) for k, v in params.items()
                                                            if k in d.params)]:
        for sym, n in zip(spec.shape, getattr(value, "shape", ())):
            if isinstance(sym, str):
                sizes.setdefault(sym, int(n))
    return sizes


def forward_error(d, who: str, e: BaseException, arrays, params):
    """A shape error in the forward, with the sizes drawn for each symbol, and the symbols that look
    like one another (`M` and `m`: one is probably a typo). None when it is no shape error."""
    from properties.verdict import CodeUnderTestError

    text = str(e)
    if not _SHAPE_WORDS.search(text):
        return None
    sizes = _drawn(d, arrays, params)
    if not sizes:
        return None
    syms = list(sizes)
    alike = sorted({tuple(sorted((a, b))) for a in syms for b in syms
                    if a < b and (a.lower() == b.lower() or difflib.SequenceMatcher(None, a, b).ratio() >= 0.8)})
    head = text if isinstance(e, CodeUnderTestError) else f"{who}: forward raised {type(e).__name__}: {text}"
    msg = f"{head} — the sizes drawn: {', '.join(f'{k}={v}' for k, v in sizes.items())}"
    if alike:
        msg += "; " + "; ".join(f"{a!r} and {b!r} are different symbols (a typo?)" for a, b in alike)
    return CodeUnderTestError(msg)


_ON_TENSOR = re.compile(r"Can't call numpy\(\) on Tensor|TracerArrayConversionError|__array__\(\) was called on "
                        r"(?:a )?traced array|numpy\(\) is not supported|Cannot convert a symbolic", re.I)


def framework_slip(d, e: BaseException, framework: str):
    """NumPy called on a framework's array inside the forward: name the NumPy calls and their xp
    equivalents, instead of torch's advice to `.detach()` (which would cut the graph)."""
    from properties.verdict import CodeUnderTestError

    if not _ON_TENSOR.search(f"{type(e).__name__}: {e}"):
        return None
    try:
        src = inspect.getsource(d.fn)
    except (OSError, TypeError):
        src = ""
    calls = list(dict.fromkeys(re.findall(r"\b(?:np|numpy)\.([A-Za-z_]\w*)\s*\(", src)))
    use = ", ".join(f"xp.{c} for np.{c}" for c in calls[:4]) if calls else "the xp function for each NumPy one"
    return CodeUnderTestError(
        f"{d.name}: the forward calls NumPy on a {framework} array: use {use}. The forward is run with each "
        f"framework's namespace as `xp` so that the framework can differentiate it; a NumPy call leaves its "
        f"graph (do not .detach())")
