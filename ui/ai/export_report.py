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

from ..radiology.series_results import series_key as _series_key
from .session_runs import session_runs


SERIES_CHANGED = "the shown series changed while the dialog was open; export again"


class ReportExporter:
    """Writes the report of the shown series' study from the session's run log
    (:mod:`.session_runs`: the latest run of each model on each series, with its key views)."""

    def __init__(self, win):
        self.win = win
        self.log = session_runs(win)

    def snapshot(self) -> dict:
        """What the report of the shown series' study is made of, taken once: before a dialog,
        whose nested event loop may show another series or log a run that finishes meanwhile."""
        doc = self.win.doc
        vol = doc.volume
        if vol is None:
            raise UserError("open a series first: the report is of the shown series' study")
        meas = []
        for m in doc.measurements:
            if not m.result:
                continue
            row = m.to_dict()
            row["description"] = vol.description
            meas.append(row)
        return {"volume": vol, "key": _series_key(doc),  # this part and stack of the series, not its UID
                "runs": list(self.log.runs.items()), "measurements": meas}

    def still_shown(self, snap: dict) -> bool:
        """Whether the series of ``snap`` is still the one shown (not another, nor closed)."""
        doc = self.win.doc
        return doc.volume is snap["volume"] and _series_key(doc) == snap["key"]

    def build(self, deidentify: bool = False, snap: dict | None = None) -> dict:
        """The report data of the shown series' study (the engine's build_report); ``snap``: the
        :meth:`snapshot` to build from (taken now when None)."""
        from imaging_assist.export.report_pdf import build_report, study_header

        snap = snap or self.snapshot()
        vol, shown = snap["volume"], snap["key"]
        header = study_header(vol)
        study = (header or {}).get("study_uid") or ""
        items, captured, cards = [], {}, {}
        # the shown series first, then the other series of its study that were analysed
        for (series, _mid), run in sorted(snap["runs"], key=lambda kv: kv[0][0] != shown):
            d, card, cap = run.item, run.card, run.views
            same = series == shown or (study and ((cap.get("header") or {}).get("study_uid") == study))
            if not same:
                continue
            captured[len(items)] = cap
            cards[card.id] = card
            items.append(d)
        meas = snap["measurements"]
        doc = {"tool": "imaging-assist",
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "items": items,
               "notes": [] if items else ["no model was run on this study in this session"]}
        rep = build_report(doc, captured=captured, cards=cards, measurements=meas,
                           deidentify=deidentify, load_missing=False)
        if not items:  # the header of the shown series, even without a model run
            from imaging_assist.export.report_pdf import deidentify_header

            h = header or {"no_dicom": True}
            rep["studies"] = [{"header": deidentify_header(h) if deidentify and header else h,
                               "items": []}]
        if deidentify:
            _drop_key_images_that_may_show_text(vol, rep)
        return rep

    def export(self, path: str | None = None, open_after: bool = True,
               deidentify: bool = False) -> Path | None:
        from imaging_assist.export.report_pdf import write_report_pdf

        win = self.win
        if win.doc.volume is None:
            QMessageBox.information(win, "Export report", "Open a series first: the report is of "
                                                          "the shown series.")
            return None
        snap = self.snapshot()  # what the reader saw when choosing Export: the dialog runs an event loop
        if path is None:
            docs = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or str(Path.home())
            path, _ = QFileDialog.getSaveFileName(win, "Export report", str(Path(docs) / "report.pdf"),
                                                  "PDF (*.pdf)")
            if not path:
                return None
            if not self.still_shown(snap):
                QMessageBox.warning(win, "Export report", f"The report was not written: {SERIES_CHANGED}.")
                return None
        if not path.lower().endswith(".pdf"):
            path += ".pdf"
        QGuiApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            out = write_report_pdf(self.build(deidentify=deidentify, snap=snap), path)
        except UserError as e:
            QMessageBox.warning(win, "Export report", f"The report was not written: {e}")
            return None
        finally:
            QGuiApplication.restoreOverrideCursor()
        win.statusBar().showMessage(f"Report written to {out}", 8000)
        if open_after:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(out)))
        return out


def _drop_key_images_that_may_show_text(vol, report: dict) -> None:
    """A de-identified report must not show burned-in text: the viewer's pixels were never
    cleaned, so key images of a source that may carry text are left out (said in the report)."""
    from imaging_assist.export.dicom_common import source_datasets
    from imaging_assist.privacy.deid import may_carry_burned_in_text

    try:
        why = next((w for w in map(may_carry_burned_in_text, source_datasets(vol)) if w), None)
    except UserError:  # no DICOM source (a plain image): nothing in a header to say so
        why = "a plain image has no BurnedInAnnotation to say it carries no text"
    if why is None:
        return
    note = (f"key images left out of this de-identified report: the source may carry burned-in "
            f"text ({why}); use File → Export de-identified… (OCR clean-up) and analyse that copy")
    dropped = False
    for study in report.get("studies") or []:
        for item in study.get("items") or []:
            if item.get("views"):
                item["views"] = []
                item.setdefault("notes", []).append(note)
                dropped = True
    if dropped:
        report.setdefault("warnings", []).append(note)


def export_report_action(win) -> QAction:
    """File → Export report…; sets ``win.report_exporter`` and ``win.a_export_report``."""
    win.report_exporter = ReportExporter(win)
    a = win._act("Export &report…", lambda: win.report_exporter.export(),
                 tip="Write the PDF report of the shown series (models run, measurements) and open it")
    win.a_export_report = a
    return a


def export_report_deid_action(win) -> QAction:
    """File → Export report, de-identified… (issue 16): the same report under the PS3.15 basic
    profile (no name, ID, dates, descriptions, UIDs or paths); sets ``win.a_export_report_deid``."""
    a = win._act("Export report, de-&identified…",
                 lambda: win.report_exporter.export(deidentify=True),
                 tip="The PDF report without identifiers (PS3.15 basic profile)")
    win.a_export_report_deid = a
    return a
