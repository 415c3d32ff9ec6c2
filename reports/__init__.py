"""Result records -> reports: a self-contained HTML page, JUnit XML and a terminal summary.

Owns ``results.jsonl`` and ``run.json`` (records.py) and ``cases/<id>.npz`` (cases.py): the only
writers and readers of those files (docs/result_record.md). Depends on NumPy and Jinja2 only;
never imports torch, jax or the engine above it (properties).
"""
from .html import render_html
from .junit import write_junit
from .records import RecordError, load_records, load_run_meta, overall_verdict
from .terminal import terminal_summary

__all__ = ["RecordError", "load_records", "load_run_meta", "overall_verdict", "render_html",
           "terminal_summary", "write_junit"]
