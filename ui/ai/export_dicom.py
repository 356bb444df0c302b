"""File → Export results (DICOM)…: the shown series' results as DICOM objects (issue 13).

The same objects as ``imaging-assist analyze --dicom`` (the engine's
:func:`imaging_assist.export.dicom.write_dicom_results`): a SEG per label map, a Parametric
Map per heat map, a TID 1500 SR per model with the measurements on screen, and the PDF report
(E1's :class:`~imaging_assist_ui.ai.export_report.ReportExporter` builds it) encapsulated.
What will be written is listed first and must be confirmed; a plain image (no DICOM source)
gets the one-line reason instead.

"De-identify" (a check box under the list, issue 16) makes every object from de-identified
source headers (PS3.15 basic profile, the site key's UIDs and patient pseudonym: the objects pair
with an Export de-identified… copy of the study) and the report de-identified.  Key images of a
source that may carry burned-in text (US, secondary capture, XA...) are left out of that report:
the viewer's pixels were not cleaned, and the report says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt
from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import QCheckBox, QFileDialog, QMessageBox

from imaging_assist.errors import UserError

from ..radiology.series_results import series_key
from .session_runs import session_runs


class DicomExporter:
    """Writes the DICOM objects of the runs on the shown series, from the session's run log
    (:mod:`.session_runs`, shared with the report)."""

    def __init__(self, win):
        self.win = win
        self.log = session_runs(win)
        self.last_notes: list[str] = []
        self.last_error = ""

    def add_run(self, vol, res, card, settings=None, key=None) -> None:
        self.log.add(vol, res, card, settings, key=key)

    def _runs(self):
        doc = self.win.doc
        if doc.volume is None:
            return [], []
        runs = self.log.of_series(series_key(doc))  # this part and stack of the series, not its UID
        return [r.result for r in runs], [r.item for r in runs]

    def plan(self) -> list[str]:
        """The lines listed before writing (one per object, or why none can be written)."""
        vol = self.win.doc.volume
        if vol is None:
            return ["open a series first: the results are of the shown series"]
        results, _ = self._runs()
        return _plan(vol, results, [m for m in self.win.doc.measurements if m.result])

    def export(self, folder: str | None = None, confirm: bool = True,
               deidentify: bool = False) -> list:
        """Write into ``folder`` (asked when None); returns the WrittenObjects ([] if none).
        ``deidentify``: the default of the dialog's check box (the value used when not
        confirming)."""
        from imaging_assist.export.dicom import has_dicom_source, write_dicom_results
        from imaging_assist.export.report_pdf import write_report_pdf

        from .export_report import SERIES_CHANGED

        win = self.win
        vol = win.doc.volume
        title = "Export results (DICOM)"
        if vol is None or not has_dicom_source(vol):
            QMessageBox.information(win, title, self.plan()[0]) if confirm else None
            return []
        # everything written is taken now, once: the box and the folder dialog run nested event
        # loops, in which another series may be shown or a run may finish; what is written is
        # what was listed, of the series it was listed for
        results, items = self._runs()
        meas = [m for m in win.doc.measurements if m.result]
        snap = win.report_exporter.snapshot()
        lines = _plan(vol, results, meas)
        if confirm:
            box = QMessageBox(QMessageBox.Question, title, "These DICOM objects will be written, each as "
                              "a new series in the study:", QMessageBox.Ok | QMessageBox.Cancel, win)
            box.setInformativeText("\n".join(f"• {ln}" for ln in lines))
            deid_box = QCheckBox("De-identify (PS3.15 basic profile; pairs with Export de-identified…)")
            deid_box.setChecked(deidentify)
            box.setCheckBox(deid_box)
            self._confirm_box = box  # for tests
            if box.exec() != QMessageBox.Ok:
                return []
            deidentify = deid_box.isChecked()
        if folder is None:
            docs = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or str(Path.home())
            folder = QFileDialog.getExistingDirectory(win, title, docs)
            if not folder:
                return []
        if not win.report_exporter.still_shown(snap):
            self.last_error = f"Nothing was written: {SERIES_CHANGED}."
            if confirm:
                QMessageBox.warning(win, title, self.last_error)
            return []
        QGuiApplication.setOverrideCursor(Qt.WaitCursor)
        notes: list[str] = []
        try:
            opts = None
            report = win.report_exporter.build(deidentify=deidentify, snap=snap)
            if deidentify:
                from imaging_assist.privacy.deid import Options

                opts = Options()
                notes.extend(w for w in report.get("warnings") or [] if "burned-in" in str(w))
            with tempfile.TemporaryDirectory() as tmp:
                pdf = write_report_pdf(report, Path(tmp) / "report.pdf")
                written = write_dicom_results(vol, results, folder, report_pdf=pdf, measurements=meas,
                                              warnings=notes, items=items, deidentify=opts)
        except UserError as e:
            if confirm:
                QMessageBox.warning(win, title, f"Nothing more was written: {e}")
            self.last_error = str(e)
            return []
        finally:
            QGuiApplication.restoreOverrideCursor()
        self.last_notes = notes
        win.statusBar().showMessage(f"{len(written)} DICOM object(s) written to {folder}", 8000)
        return written


def _plan(vol, results, meas) -> list[str]:
    from imaging_assist.export.dicom import plan_dicom_results

    return plan_dicom_results(vol, results, report_pdf="report.pdf", measurements=meas)


def export_dicom_action(win) -> QAction:
    """File → Export results (DICOM)…; sets ``win.dicom_exporter`` and ``win.a_export_dicom``."""
    win.dicom_exporter = DicomExporter(win)
    a = win._act("Export results (&DICOM)…", lambda: win.dicom_exporter.export(),
                 tip="Write SEG, Parametric Map, SR and the PDF report of the shown series as DICOM objects")
    win.a_export_dicom = a
    return a
