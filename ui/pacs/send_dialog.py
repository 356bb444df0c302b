"""Send to PACS…: the shown study, or files / a folder (e.g. the exported SEG, SR, Parametric
Map and PDF), by C-STORE or STOW-RS in a worker, then a read-back query; each failure is one
line in the list; nothing leaves the machine until the user presses Send."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDialog, QFileDialog, QHBoxLayout, QLabel, QListWidget,
                               QProgressBar, QPushButton, QVBoxLayout)

from imaging_assist.pacs.nodes import PacsError, load_settings

from ..shared.text import reason_of
from ..shared.theme import ERROR_FG
from .worker import Job


class SendDialog(QDialog):
    def __init__(self, parent=None, paths: list[str] | None = None):
        super().__init__(parent)
        self.setWindowTitle("Send to PACS")
        self.resize(760, 420)
        self.paths: list[str] = list(paths or [])
        self.job: Job | None = None
        self.result = None
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("To"))
        self.node_box = QComboBox()
        top.addWidget(self.node_box, 1)
        lay.addLayout(top)
        try:
            self.settings = load_settings()
        except PacsError as e:
            self.settings = None
            lay.addWidget(QLabel(reason_of(e)))
        for name, n in sorted((self.settings.nodes if self.settings else {}).items()):
            self.node_box.addItem(n.label(), name)
        pick = QHBoxLayout()
        self.what = QLabel()
        pick.addWidget(self.what, 1)
        b_files = QPushButton("Files…")
        b_files.clicked.connect(self._pick_files)
        b_dir = QPushButton("Folder…")
        b_dir.clicked.connect(self._pick_folder)
        pick.addWidget(b_files)
        pick.addWidget(b_dir)
        lay.addLayout(pick)
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m")
        lay.addWidget(self.bar)
        self.failures = QListWidget()
        self.failures.setWordWrap(True)  # each line whole: the reason is at its end
        self.failures.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        lay.addWidget(self.failures, 1)
        self.status = QLabel("")
        self.status.setTextFormat(Qt.PlainText)  # error texts quote the server and file names: shown as written
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.status)
        row = QHBoxLayout()
        self.b_send = QPushButton("Send")
        self.b_send.clicked.connect(self.send)
        self.b_cancel = QPushButton("Cancel")
        self.b_cancel.setEnabled(False)
        self.b_cancel.clicked.connect(lambda: self.job and self.job.cancel.set())
        b_close = QPushButton("Close")
        b_close.clicked.connect(self.close)
        row.addStretch(1)
        row.addWidget(self.b_send)
        row.addWidget(self.b_cancel)
        row.addWidget(b_close)
        lay.addLayout(row)
        self._update_what()

    def _update_what(self) -> None:
        n = len(self.paths)
        self.what.setText("Nothing chosen: the shown study, or Files… / Folder…" if not n else
                          (self.paths[0] if n == 1 else f"{n} files/folders (the shown study or "
                                                        f"your choice)"))
        self.b_send.setEnabled(bool(n) and self.node_box.count() > 0)

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "DICOM files to send")
        if files:
            self.paths = files
            self._update_what()

    def _pick_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder to send (e.g. exported results)")
        if d:
            self.paths = [d]
            self._update_what()

    def say(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(f"color: {ERROR_FG};" if error else "")

    def send(self) -> None:
        from imaging_assist.pacs import send as sendmod
        name = self.node_box.currentData()
        if not name or not self.paths:
            return
        node, s, paths = self.settings.nodes[name], self.settings, list(self.paths)
        self.failures.clear()
        self.job = Job(lambda j: sendmod.send(node, paths, settings=s, cancel=j.cancel,
                                              progress=lambda d, t: j.progress.emit((d, t))), self)
        self.job.progress.connect(lambda p: (self.bar.setMaximum(p[1]), self.bar.setValue(p[0])))
        self.job.done.connect(self._done)
        self.job.failed.connect(self._failed)
        self.b_send.setEnabled(False)
        self.b_cancel.setEnabled(True)
        self.say(f"sending to {node.label()}…")
        self.job.start()

    def _failed(self, msg: str) -> None:
        self.b_send.setEnabled(True)
        self.b_cancel.setEnabled(False)
        self.say(msg, error=True)

    def _done(self, res) -> None:
        self.result = res
        self.b_send.setEnabled(True)
        self.b_cancel.setEnabled(False)
        for p, r in res.failures:
            self.failures.addItem(f"failed: {p}: {r}")
        for p, r in res.skipped:
            self.failures.addItem(f"skipped: {p}: {r}")
        for p, r in res.warnings:
            self.failures.addItem(f"warning: {p}: {r}")
        unconfirmed = (f", {res.unconfirmed} sent but NOT confirmed ({res.readback_error})"
                       if res.unconfirmed else "")
        self.say(f"{res.confirmed} instances sent and confirmed by a query{unconfirmed}, "
                 f"{len(res.failures)} failed, {len(res.skipped)} skipped"
                 + (" — cancelled" if res.cancelled else ""),
                 error=bool(res.failures or res.unconfirmed))
