"""File → Export de-identified…: the open study (or any folder) de-identified into a new folder
(issue 16), the same engine call as ``imaging-assist anonymize``
(:func:`imaging_assist.privacy.deid.deidentify_tree`).

The dialog names the PS3.15 options as the standard does, runs on a worker thread (OCR of
burned-in text can take seconds a file; the viewer stays responsive), and then shows the
summary: files written, files left out and why, options, the site key's fingerprint.
Nothing is written into the source folder; the output folder must be new or empty.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (QCheckBox, QDialog, QFileDialog, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout)

from .workers import worker_thread

OPTION_BOXES = (
    ("modified_dates", "Retain Longitudinal Temporal Information with Modified Dates",
     "every date moved by one keyed offset per patient: intervals between studies kept"),
    ("patient_characteristics", "Retain Patient Characteristics",
     "sex, age, size, weight, smoking, pregnancy... (needed for fairness analysis)"),
    ("device_identity", "Retain Device Identity", "station name, serial numbers, device UIDs"),
    ("clean_descriptors", "Clean Descriptors",
     "keep descriptions and comments with identifying values cut out (default: removed)"),
)


class _Runner(QObject):
    progress = Signal(int, int)
    done = Signal(object, str)  # (Summary or None, error line)

    def start(self, src: str, out: str, opts, keep_names: bool = False) -> None:
        def work():
            from imaging_assist.errors import UserError
            from imaging_assist.privacy.deid import deidentify_tree

            try:
                s = deidentify_tree(src, out, opts, progress=lambda d, t: self.progress.emit(d, t),
                                    keep_names=keep_names)
                self.done.emit(s, "")
            except UserError as e:
                self.done.emit(None, str(e))
            except Exception as e:  # noqa: BLE001 - shown as one line in the dialog
                self.done.emit(None, f"{type(e).__name__}: {e}")

        worker_thread(work, "deidentify").start()


class DeidDialog(QDialog):
    finished_run = Signal()

    def __init__(self, parent=None, source: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Export de-identified")
        self.summary = None
        self.error = ""
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("DICOM PS3.15 Basic Application Level Confidentiality Profile "
                             "(whole of Table E.1-1). Sources are only read."))
        grid = QGridLayout()
        self.src = QLineEdit(source)
        # the default output name does not repeat the source's (it may be a patient's name)
        self.out = QLineEdit(str(Path(source).parent / "deidentified") if source else "")
        for row, (label, edit, pick) in enumerate((("Input", self.src, self._pick_src),
                                                  ("Output (new or empty)", self.out, self._pick_out))):
            grid.addWidget(QLabel(label), row, 0)
            grid.addWidget(edit, row, 1)
            b = QPushButton("…")
            b.clicked.connect(pick)
            grid.addWidget(b, row, 2)
        lay.addLayout(grid)
        self.boxes = {}
        for key, name, tip in OPTION_BOXES:
            cb = QCheckBox(name)
            cb.setToolTip(tip)
            self.boxes[key] = cb
            lay.addWidget(cb)
        self.ocr = QCheckBox("Clean burned-in text (OCR; US, XA, secondary captures, "
                             "BurnedInAnnotation YES)")
        self.ocr.setChecked(True)
        self.ocr.setToolTip("off: files that may carry text in their pixels are left out")
        lay.addWidget(self.ocr)
        self.keep_names = QCheckBox("Keep file and folder names (only when they name no patient)")
        self.keep_names.setToolTip("off: every file and folder gets a keyed pseudonym; the tree's "
                                   "shape is kept")
        lay.addWidget(self.keep_names)
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        lay.addWidget(self.bar)
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setPlaceholderText("The summary appears here.")
        lay.addWidget(self.report, 1)
        row = QHBoxLayout()
        row.addStretch(1)
        self.run_btn = QPushButton("De-identify")
        self.run_btn.setDefault(True)
        self.run_btn.clicked.connect(self.run)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        row.addWidget(self.run_btn)
        row.addWidget(close)
        lay.addLayout(row)
        self.resize(720, 520)
        self._runner = _Runner()
        self._runner.progress.connect(self._progress, Qt.QueuedConnection)
        self._runner.done.connect(self._done, Qt.QueuedConnection)

    def _pick_src(self):
        d = QFileDialog.getExistingDirectory(self, "Input folder", self.src.text())
        if d:
            self.src.setText(d)

    def _pick_out(self):
        d = QFileDialog.getExistingDirectory(self, "Output folder (new or empty)", self.out.text())
        if d:
            self.out.setText(d)

    def options(self):
        from imaging_assist.privacy.deid import Options

        return Options(clean_pixels=self.ocr.isChecked(),
                       **{k: cb.isChecked() for k, cb in self.boxes.items()})

    def run(self) -> None:
        src, out = self.src.text().strip(), self.out.text().strip()
        if not src or not out:
            self.report.setPlainText("error: choose an input and an output folder")
            return
        self.run_btn.setEnabled(False)
        self.bar.setVisible(True)
        self.bar.setRange(0, 0)
        self.report.setPlainText("De-identifying…")
        self._runner.start(src, out, self.options(), keep_names=self.keep_names.isChecked())

    def _progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)

    def _done(self, summary, error: str) -> None:
        self.summary, self.error = summary, error
        self.bar.setVisible(False)
        self.run_btn.setEnabled(True)
        if summary is None:
            self.report.setPlainText(f"error: {error}")
        else:
            self.report.setPlainText("\n".join(summary.lines()))
        self.finished_run.emit()


def deid_action(win) -> QAction:
    """File → Export de-identified…, opening the dialog on the folder shown (if any)."""
    act = QAction("Export de-identified…", win)

    def open_dialog():
        paths = list(getattr(getattr(win, "loading", None), "root_paths", None) or [])
        dlg = DeidDialog(win, paths[0] if len(paths) == 1 else "")
        win._deid_dialog = dlg
        dlg.show()

    act.triggered.connect(open_dialog)
    return act
