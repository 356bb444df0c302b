"""File → Export report…: the PDF report of the current study, from the GUI (issue 13).

What goes in: the study of the shown series, with every model run in this session on its
series (the latest run of each model on each series, as the AI panel showed it:
probabilities, decisions, label maps, heat maps, explanation region; key views are taken when
the run finishes, so series no longer loaded still have them), and the measurements on screen.  The engine lays it out
(:mod:`imaging_assist.export.report_pdf`); the finished PDF opens in the system viewer
(``QDesktopServices.openUrl``)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QFileDialog, QMessageBox

from imaging_assist.errors import UserError

from .session_runs import series_key as _series_key
from .session_runs import session_runs


class ReportExporter:
    """Writes the report of the shown series' study from the session's run log
    (:mod:`.session_runs`: the latest run of each model on each series, with its key views)."""

    def __init__(self, win):
        self.win = win
        self.log = session_runs(win)

    def build(self, deidentify: bool = False) -> dict:
        """The report data of the shown series' study (the engine's build_report)."""
        from imaging_assist.export.report_pdf import build_report, study_header

        vol = self.win.doc.volume
        if vol is None:
            raise UserError("open a series first: the report is of the shown series' study")
        header = study_header(vol)
        study = (header or {}).get("study_uid") or ""
        shown = _series_key(vol)
        items, captured, cards = [], {}, {}
        # the shown series first, then the other series of its study that were analysed
        for (series, _mid), run in sorted(self.log.runs.items(), key=lambda kv: kv[0][0] != shown):
            d, card, cap = run.item, run.card, run.views
            same = series == shown or (study and ((cap.get("header") or {}).get("study_uid") == study))
            if not same:
                continue
            captured[len(items)] = cap
            cards[card.id] = card
            items.append(d)
        meas = []
        for m in self.win.doc.measurements:
            if not m.result:
                continue
            row = m.to_dict()
            row["description"] = vol.description
            meas.append(row)
        doc = {"tool": "imaging-assist",
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "items": items,
               "notes": [] if items else ["no model was run on this study in this session"]}
        rep = build_report(doc, captured=captured, cards=cards, measurements=meas,
                           deidentify=deidentify, load_missing=False)
        if not items:  # the header of the shown series, even without a model run
            rep["studies"] = [{"header": header or {"no_dicom": True}, "items": []}]
        return rep

    def export(self, path: str | None = None, open_after: bool = True) -> Path | None:
        from imaging_assist.export.report_pdf import write_report_pdf

        win = self.win
        if win.doc.volume is None:
            QMessageBox.information(win, "Export report", "Open a series first: the report is of "
                                                          "the shown series.")
            return None
        if path is None:
            docs = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or str(Path.home())
            path, _ = QFileDialog.getSaveFileName(win, "Export report", str(Path(docs) / "report.pdf"),
                                                  "PDF (*.pdf)")
            if not path:
                return None
        if not path.lower().endswith(".pdf"):
            path += ".pdf"
        QGuiApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            out = write_report_pdf(self.build(), path)
        except UserError as e:
            QMessageBox.warning(win, "Export report", f"The report was not written: {e}")
            return None
        finally:
            QGuiApplication.restoreOverrideCursor()
        win.statusBar().showMessage(f"Report written to {out}", 8000)
        if open_after:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(out)))
        return out


def export_report_action(win) -> QAction:
    """File → Export report…; sets ``win.report_exporter`` and ``win.a_export_report``."""
    win.report_exporter = ReportExporter(win)
    a = win._act("Export &report…", lambda: win.report_exporter.export(),
                 tip="Write the PDF report of the shown series (models run, measurements) and open it")
    win.a_export_report = a
    return a
