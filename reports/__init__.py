"""Result records -> reports: a self-contained HTML page, JUnit XML and a terminal summary.

Reads ``results.jsonl`` / ``run.json`` / ``cases/<id>.npz`` as described in
docs/result_record.md. Depends on NumPy and Jinja2 only; never imports torch or jax.
"""
from .html import render_html
from .junit import write_junit
from .records import RecordError, load_records, load_run_meta, overall_verdict
from .terminal import terminal_summary

__all__ = ["RecordError", "load_records", "load_run_meta", "overall_verdict", "render_html",
           "terminal_summary", "write_junit"]
