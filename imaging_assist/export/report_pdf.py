"""The PDF report of an analysed study (issue 13): what a clinician reads.

Two steps, both without Qt:

* :func:`build_report` turns a ``results.json`` document (or the demo's ``report.json``
  series entries) into plain data: header, per-model findings, measurements, key images
  (paths or arrays), warnings, card summaries.  Nothing is guessed: what is missing is
  said as missing.
* :func:`write_report_pdf` lays that data out as a PDF (vector text, lossless images,
  A4 or Letter, "NOT FOR CLINICAL USE" on every page).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
PAGE_SIZES = ("A4", "Letter")


class ReportError(UserError):
    """The report cannot be written (bad page size, unwritable path, ...)."""


def build_report(results_json: dict, *, volumes: dict | None = None,
                 measurements: list | None = None, deidentify: bool = False) -> dict:
    """Plain data for :func:`write_report_pdf` (skeleton: filled in by the next commits)."""
    return {
        "header": {},
        "models": [],
        "measurements": list(measurements or []),
        "warnings": [],
        "cards": [],
        "software": {},
        "deidentified": bool(deidentify),
    }


def write_report_pdf(report: dict, out_path, *, page_size: str = "A4") -> Path:
    """Write ``report`` (from :func:`build_report`) to ``out_path``; returns the path."""
    if page_size not in PAGE_SIZES:
        raise ReportError(f"page size {page_size!r}: choose A4 or Letter")
    from fpdf import FPDF
    out = Path(out_path)
    pdf = FPDF(format=page_size.upper() if page_size == "A4" else "letter")
    pdf.add_page()
    pdf.set_font("helvetica", size=10)
    pdf.cell(text=NOT_FOR_CLINICAL_USE)
    pdf.output(str(out))
    return out
