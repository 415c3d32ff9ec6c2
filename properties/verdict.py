"""What the judge decided about one side of one case, as fields, and `describe`: the one place a
verdict is put into words (torch's gradcheck keeps its messages in one place too). Layers above add
fields (triangulation adds a blame and notes, an audit names the user's functions through the
Target), never edit the sentence.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import numpy as np

from oracles.base import OracleResult

from .compare import Comparison
from .patterns import Finding, explain

__all__ = ["CodeUnderTestError", "Hazard", "Side", "Verdict", "collect_hazards", "describe", "name_pattern", "raised",
           "report_hazard"]

Side = tuple[str, str]  # (oracle, device)


class CodeUnderTestError(Exception):
    """An error whose message already names the function of the code under test and what it did
    (raised by what wraps user code: gradaudit's guard, the cs231n adapter). Quoted as it is."""


def raised(who: str, e: BaseException, *, named_alone: bool = False) -> str:
    """`who raised Type: message`; for a CodeUnderTestError its own words (after `who:` unless
    `named_alone`: the error names the function itself)."""
    if isinstance(e, CodeUnderTestError):
        return str(e) if named_alone else f"{who}: {e}"
    return f"{who} raised {type(e).__name__}: {e}"


@dataclass(frozen=True)
class Hazard:
    """Something the code under test does that is worth saying although its values are right: the
    record's `hazards` (docs/result_record.md) and a `warning` when nothing worse was found.
    `kind`: dtype | mutation | nondeterminism | convention."""

    kind: str
    message: str

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message}


_hazards: contextvars.ContextVar[list | None] = contextvars.ContextVar("gradaudit_hazards", default=None)


@contextlib.contextmanager
def collect_hazards():
    """Collect the hazards that code wrapping the user's functions reports (`report_hazard`) while the
    block runs: an adapter that translates a parameter convention, a forward that promotes dtypes."""
    found: list[Hazard] = []
    token = _hazards.set(found)
    try:
        yield found
    finally:
        _hazards.reset(token)


def report_hazard(kind: str, message: str) -> None:
    """Say that the code under test did something hazardous (see Hazard); a no-op outside a check."""
    found = _hazards.get()
    if found is not None:
        found.append(Hazard(kind, message))


@dataclass
class Verdict:
    status: str  # pass | fail | error | skip | kink
    what: str = ""  # the target's name
    side: Side = ("", "")
    dtype: str = ""
    kind: str | None = None  # on fail: gradient | forward | nonfinite | mutation
    phase: str | None = None  # which: forward | grad[<name>]
    cmp: Comparison | None = None  # where and how far: the worst array compared
    judged: dict[str, Comparison] = field(default_factory=dict)  # every array compared (`out`, `out1` forwards)
    result: OracleResult | None = None
    kink: str | None = None  # on kink: why the case sits on a non-differentiable point
    pattern: str | None = None
    factor: float | None = None  # reference = factor x oracle, with the pattern constant_factor or sign_flip
    tolerance_source: str = ""
    tolerance_mode: str = "policy"  # or "reference-relative" (tolerances.reference_relative)
    blame: str | None = None  # set by triangulation on a fail
    triangulation: dict | None = None
    why: list[str] = field(default_factory=list)  # explanations after the figures: the pattern's, the kink's
    notes: list[str] = field(default_factory=list)  # remarks in parentheses: TF32, an inherited forward
    fault: str | None = None  # skip and error: the whole reason
    out_shapes: tuple | None = None  # forwards of different shapes: (the target's, the oracle's)
    modified: list[str] = field(default_factory=list)  # mutation: what the code under test wrote into
    forward_name: str | None = None  # names a forward mismatch (an audit: the user's forward)
    severity: str | None = None  # on fail: fail | unstable (properties/stability.py decides)
    sentence: tuple[str, str] | None = None  # (pattern, its sentence with the fields filled in) from a Finding

    @property
    def explanation(self) -> str | None:
        """What a student reads first: the pattern's sentence (patterns.SENTENCES), before any number."""
        if self.sentence is not None and self.sentence[0] == self.pattern:
            return self.sentence[1]
        return explain(self.pattern)

    @property
    def message(self) -> str:
        return describe(self)


def _shape(a) -> str:
    return f"{np.asarray(a).dtype}{list(np.shape(a))}"


def _difference(c: Comparison) -> str:
    if c.nonfinite_mismatch:
        return f"NaN/Inf on one side only, first at index {c.worst_index}"
    return (f"greatest absolute difference {c.max_abs:.3g} at index {c.worst_index} "
            f"(up to {c.atol:.3g} + {c.rtol:.3g}*|expected| allowed; greatest relative difference {c.max_rel:.3g})")


def name_pattern(v: Verdict, found: Finding | None) -> None:
    """Give the verdict the pattern a recogniser found: its name, factor, clause and sentence."""
    if found is not None:
        v.pattern, v.factor = found.pattern, found.factor
        v.sentence = (found.pattern, found.explanation) if found.explanation else None
        v.why.append(found.why)


def describe(v: Verdict) -> str:
    """One line a person can act on: what, against which side, what it means (the pattern's sentence,
    before any number), which gradient, how far and where, why."""
    if v.fault is not None:
        if not v.explanation:
            return v.fault
        head = f"{v.what}: "
        return (f"{head}{v.explanation} — {v.fault[len(head):]}" if v.what and v.fault.startswith(head)
                else f"{v.explanation} — {v.fault}")
    if v.status == "kink":
        return f"{v.kink}: {' — '.join(v.why)}" if v.why else str(v.kink)
    if v.status == "pass" and v.kind is None:
        return ""
    oracle, device = v.side
    label = f"{v.what} vs {oracle} ({device}, {v.dtype})"
    if v.kind == "mutation":
        text = f"{label}: modified its input(s) in place: {', '.join(v.modified)}"
    elif v.out_shapes is not None:
        mine, theirs = v.out_shapes
        # no oracle is involved: the forward's output has another shape than the op's
        text = (f"{v.what} ({v.dtype}), forward: returns an output of shape {[_shape(m) for m in mine]}, the op's "
                f"forward one of shape {[_shape(t) for t in theirs]} (the code's own error, not an oracle's)")
    elif v.explanation:
        text = f"{label}: {v.explanation} — {v.phase}: {_difference(v.cmp)}"
    else:
        text = f"{label}, {v.phase}: {_difference(v.cmp)}"
    text += "".join(f" — {w}" for w in v.why) + "".join(f" ({n})" for n in v.notes)
    if v.status == "fail" and v.phase == "forward" and v.forward_name:
        text = f"forward_mismatch in {v.forward_name}: {text}"
    return text
