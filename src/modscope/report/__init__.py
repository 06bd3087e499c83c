"""Reports: a run's ``results.json`` as one self-contained HTML page (``modscope report``)."""

from modscope.report.html import render_html, write_report

__all__ = ["render_html", "write_report"]
