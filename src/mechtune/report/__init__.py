"""Run reports: ``provenance.json`` provenance (:mod:`~mechtune.report.provenance`) and one
self-contained ``report.html`` per run (:func:`~mechtune.report.render.write_report`,
``mechtune report RUN_DIR``), built from Jinja2 templates."""

from mechtune.report.provenance import read_run_record, run_record, write_run_record
from mechtune.report.render import REPORT_FILE, collect, render, report_after, write_report

__all__ = [
    "REPORT_FILE",
    "collect",
    "read_run_record",
    "render",
    "report_after",
    "run_record",
    "write_report",
    "write_run_record",
]
