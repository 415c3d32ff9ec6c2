"""What `gradaudit.check(...)` returns: the records, and how they show in a notebook.

`CheckResult` is a list of result records (docs/result_record.md), so code that treats the result
as `list[dict]` keeps working. In Jupyter it displays itself (`_repr_mimebundle_`):

- `text/plain`: one line per function checked — its verdict, cells, worst error — then, for each
  function that is wrong, its message in full, wrapped (never cut) at 78 columns. This is the part
  that survives `jupyter nbconvert --to pdf` (LaTeX keeps text, not HTML), so it reads on its own.
- `text/html`: the same table, then the report's "What is wrong" table and the evidence of each
  failing cell (minimal input, both gradients, the error map), rendered by `reports.render_html`
  and inlined: one self-contained fragment, its CSS scoped to the fragment so that it does not
  restyle the notebook, no script, nothing from the network.
"""
from __future__ import annotations

import itertools
import re
import tempfile
import textwrap
from pathlib import Path

STATUS_ORDER = ("error", "fail", "pass", "kink", "skip")
WIDTH = 78
SCOPE = "gradaudit-result"
_serial = itertools.count(1)


def function_verdict(records: list[dict]) -> str:
    """One word for a function's cells: error or fail if any cell says so; else pass if any passed."""
    have = {r["status"] for r in records}
    return next((s for s in STATUS_ORDER if s in have), "skip")


def _fmt(x) -> str:
    if x is None:
        return "–"
    x = float(x)
    return f"{x:.2g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.1e}"


class CheckResult(list):
    """The records of one `gradaudit.check(...)`, displayed as a verdict table in a notebook."""

    def __init__(self, records=(), *, notes=(), report_dir: Path | None = None, run_meta: dict | None = None):
        super().__init__(records)
        self.notes = list(notes)  # what was not checked, or skipped in a document, and why
        self.report_dir = report_dir  # where the counterexamples are kept; None: nowhere (a temporary folder)
        self.run_meta = dict(run_meta or {})
        self._html: str | None = None

    # ---- what it says ----

    @property
    def verdict(self) -> str:
        """'pass' | 'fail' (a cell failed or errored) | 'skip' (every cell skipped) | 'empty'."""
        from reports import overall_verdict

        return overall_verdict(self)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self if r["status"] in ("fail", "error")]

    def functions(self) -> list[dict]:
        """One row per function checked, in the order checked: name, op, verdict, counts, worst error, first bad record."""
        groups: dict[str, list[dict]] = {}
        for r in self:
            groups.setdefault(r.get("target") or r["op"], []).append(r)
        rows = []
        for target, recs in groups.items():
            verdict = function_verdict(recs)
            counts = {s: sum(r["status"] == s for r in recs) for s in STATUS_ORDER}
            rel = [r["max_rel_err"] for r in recs if r.get("max_rel_err") is not None and r["status"] != "skip"]
            first_bad = next((r for r in recs if r["status"] == verdict and verdict in ("fail", "error")), None)
            skip = next((r for r in recs if r["status"] == "skip"), None) if verdict == "skip" else None
            rows.append({"target": target, "op": recs[0]["op"], "verdict": verdict, "counts": counts,
                         "cells": len(recs), "max_rel_err": max(rel) if rel else None, "first_bad": first_bad,
                         "skip": skip})
        return rows

    def headline(self) -> str:
        rows = self.functions()
        bad = [r["target"] for r in rows if r["verdict"] in ("fail", "error")]
        checked = [r for r in rows if r["verdict"] != "skip"]
        if self.verdict == "fail":
            return (f"gradaudit: FAIL — {len(bad)} of {len(checked)} function{'s' if len(checked) != 1 else ''} "
                    f"wrong: {', '.join(bad)}")
        if self.verdict == "pass":
            n = len(checked)
            return f"gradaudit: PASS — {n} function{'s agree' if n != 1 else ' agrees'} with the oracles"
        return "gradaudit: NOTHING CHECKED" + (" (every function was skipped)" if rows else "")

    # ---- text/plain ----

    def table(self) -> str:
        rows = self.functions()
        lines = [self.headline(), ""]
        if rows:
            wt = max(8, *(len(r["target"]) for r in rows))
            wo = max(2, *(len(r["op"]) for r in rows))
            lines.append(f"  {'function':<{wt}}  {'op':<{wo}}  {'verdict':<7}  {'cells':<22}  worst rel err")
            for r in rows:
                cells = ", ".join(f"{n} {s}" for s, n in r["counts"].items() if n)
                lines.append(f"  {r['target']:<{wt}}  {r['op']:<{wo}}  {r['verdict'].upper():<7}  {cells:<22}  "
                             f"{_fmt(r['max_rel_err'])}")
        for r in rows:
            rec = r["first_bad"]
            if rec is None:
                continue
            how = rec["status"].upper()
            if rec["status"] == "fail":
                how += f" ({rec.get('kind') or 'gradient'}, blame {rec.get('blame') or '?'}" + (
                    f", pattern {rec['pattern']}" if rec.get("pattern") else "") + ")"
            where = f"{rec['oracle']} {rec['device']} {rec['dtype']} {rec['regime']}"
            lines += [""] + textwrap.wrap(f"{r['target']}: {how}, first at [{where}]", WIDTH, subsequent_indent="  ")
            lines += textwrap.wrap(" ".join(str(rec.get("message") or "").split()), WIDTH,
                                   initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)
        skipped = [r for r in rows if r["skip"] is not None]
        notes = [f"{r['target']}: {r['skip'].get('message')}" for r in skipped] + self.notes
        if notes:
            lines += ["", "Not checked, or skipped:"]
            for n in notes:
                lines += textwrap.wrap(" ".join(str(n).split()), WIDTH, initial_indent="  - ",
                                       subsequent_indent="    ", break_on_hyphens=False)
        if self.failures:
            lines += ["", "Counterexamples: " + (f"{self.report_dir} (gradaudit replay ID --report {self.report_dir})"
                                                 if self.report_dir else "pass report=DIR to keep them and replay them")]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_pretty_(self, p, cycle) -> None:
        # IPython's plain-text formatter would print a list subclass item by item, ignoring the
        # bundle's text/plain: this is what a notebook (and a PDF made from it) shows as text
        p.text(self.table())

    def __repr__(self) -> str:
        return f"<gradaudit.CheckResult: {self.headline().removeprefix('gradaudit: ')} ({len(self)} records)>"

    # ---- text/html ----

    def _render(self, cases_dir: Path | None) -> None:
        """Render the HTML now (while the counterexamples exist)."""
        self._html = self._fragment(cases_dir)

    def _fragment(self, cases_dir: Path | None) -> str:
        from html import escape

        from reports import render_html

        rows = self.functions()
        out = [f'<div class="{SCOPE}"><style>{_scoped_css()}</style>',
               f'<div class="verdict v-{escape(self.verdict)}" style="margin-bottom:8px">'
               f"<b>{escape(self.headline().removeprefix('gradaudit: '))}</b></div>"]
        if rows:
            out.append("<table><thead><tr><th>function</th><th>op</th><th>verdict</th><th>cells</th>"
                       '<th class="num">worst rel err</th><th>why</th></tr></thead><tbody>')
            for r in rows:
                cells = " ".join(f'<span class="st st-{s}">{n} {s}</span>' for s, n in r["counts"].items() if n)
                rec = r["first_bad"] or r["skip"]
                why = escape(str(rec.get("message") or "")) if rec else ""
                out.append(f'<tr><td class="mono"><b>{escape(r["target"])}</b></td><td class="mono">{escape(r["op"])}'
                           f'</td><td><span class="st st-{r["verdict"]}">{r["verdict"].upper()}</span></td>'
                           f'<td>{cells}</td><td class="num">{_fmt(r["max_rel_err"])}</td>'
                           f'<td class="small">{why}</td></tr>')
            out.append("</tbody></table>")
        if self.notes:
            out.append('<p class="note">' + "<br>".join(escape(n) for n in self.notes) + "</p>")
        if self.failures:
            with tempfile.TemporaryDirectory(prefix="gradaudit-render-") as tmp:
                page = render_html(list(self), self.run_meta, Path(tmp), cases_dir=cases_dir).read_text("utf-8")
            out.append(_failure_parts(page, f"ga{next(_serial)}-"))
        out.append("</div>")
        return "\n".join(out)

    def html(self) -> str:
        if self._html is None:
            self._render(self.report_dir / "cases" if self.report_dir else None)
        return self._html

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": self.table(), "text/html": self.html()}


# ---- the report page, inlined ------------------------------------------------------------------

def _section(page: str, start: str, stops: tuple[str, ...]) -> str:
    """The page from the <h2> with id `start` up to the next <h2> of another part (or the script)."""
    m = re.search(rf'<h2 id="{start}"', page)
    if not m:
        return ""
    ends = [page.find(f'<h2 id="{s}"', m.end()) for s in stops] + [page.find("<script", m.end())]
    ends = [e for e in ends if e != -1]
    return page[m.start():min(ends) if ends else len(page)]


def _failure_parts(page: str, prefix: str) -> str:
    """The "What is wrong" table and the evidence sections of a rendered report page; the whole body
    if the page does not have them where expected. Scripts and links out of the page are removed;
    anchors get a per-result prefix (several results share one notebook page)."""
    others = ("failures", "matrix", "details", "near", "kinks", "skips", "run")
    parts = [_section(page, "failures", others[1:]), _section(page, "details", others[3:])]
    body = "\n".join(p for p in parts if p)
    if not body:
        m = re.search(r"<body[^>]*>(.*)</body>", page, re.S)
        body = m.group(1) if m else ""
    body = re.sub(r"<script.*?</script>", "", body, flags=re.S)
    body = re.sub(r'<a href="(?!#)[^"]*">', "<a>", body)
    body = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', body)
    return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', body)


_css_cache: str | None = None


def _scoped_css() -> str:
    """The report's stylesheet with every rule scoped to the fragment (`:root`, `html` and `body` become the fragment)."""
    global _css_cache
    if _css_cache is None:
        import reports

        css = (Path(reports.__file__).parent / "templates" / "style.css").read_text("utf-8")
        _css_cache = scope_css(css, f".{SCOPE}") + f".{SCOPE}{{background:#fff;max-width:none;padding:8px 12px}}"
    return _css_cache


def scope_css(css: str, scope: str) -> str:
    """Prefix every selector of `css` with `scope`; @-rules with blocks (@media) are scoped inside."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out, i = [], 0
    while i < len(css):
        brace = css.find("{", i)
        if brace == -1:
            break
        selector = css[i:brace].strip()
        depth, j = 1, brace + 1
        while j < len(css) and depth:
            depth += {"{": 1, "}": -1}.get(css[j], 0)
            j += 1
        block = css[brace + 1:j - 1]
        if selector.startswith("@"):
            inner = scope_css(block, scope) if "{" in block else block
            out.append(f"{selector}{{{inner}}}")
        else:
            sels = []
            for s in selector.split(","):
                s = s.strip()
                if s in (":root", "html", "body"):
                    sels.append(scope)
                elif s.startswith(("html ", "body ")):
                    sels.append(f"{scope} {s.split(' ', 1)[1]}")
                else:
                    sels.append(f"{scope} {s}")
            out.append(f"{','.join(sels)}{{{block}}}")
        i = j
    return "\n".join(out)
