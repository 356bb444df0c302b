"""Help → Audit trail…: a read-only window over the audit trail (issue 16).

Shows whether the trail holds (:func:`imaging_assist.privacy.audit.verify`: chain, seals, head
record) and the most recent events, newest first.  Nothing here writes to the trail or the
key; reading and verifying run on a worker thread so a long trail never freezes the viewer.
Identifiers are the keyed pseudonyms the log holds; "Find patient…" recomputes a Patient ID's
pseudonym (with this site's key) to filter its events, the ID itself is never stored.
"""

from __future__ import annotations

import json

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction, QColor, QGuiApplication
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout)

from .theme import ERROR_BG, ERROR_FG, MUTED, PANEL, TEXT
from .workers import worker_thread

MAX_ROWS = 2000  # the newest events shown; `imaging-assist audit show` lists them all
OK_BG, OK_FG = "#1f3d26", "#b6f0c2"
COLUMNS = ("#", "Time (UTC)", "User@host", "Event", "Details")


def _details(fields: dict) -> str:
    def fmt(v):
        return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return "  ".join(f"{k}={fmt(v)}" for k, v in fields.items() if v not in (None, "", [], {}))


def read_trail() -> dict:
    """Verify and read the trail (engine calls only; runs on a worker thread)."""
    from collections import deque

    from imaging_assist.privacy import audit

    n = 0
    try:
        ok, line, reason = audit.verify(require_key=True)  # a sealed trail without its key is not "OK"
        newest: deque = deque(maxlen=MAX_ROWS)  # streamed: memory stays bounded however long the trail
        for n, e in enumerate(audit.iter_entries(), 1):
            newest.append((n, e))
        entries, err = list(newest), None
    except Exception as e:  # noqa: BLE001 - shown in the window, never a traceback
        ok, line, reason, entries, err = False, None, "", [], f"{type(e).__name__}: {e}"
    return {"ok": ok, "line": line, "reason": reason, "entries": entries, "n": n, "error": err,
            "path": str(audit.log_path()), "parts": len(audit.parts())}


class _Reader(QObject):
    done = Signal(object)

    def start(self) -> None:
        def run():
            r = read_trail()
            try:
                self.done.emit(r)
            except RuntimeError:  # the window was closed and deleted meanwhile
                pass
        worker_thread(run, "audit-read").start()


class AuditWindow(QDialog):
    """The trail, newest first, with the verification result on top."""

    loaded = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Audit trail")
        self.resize(1100, 620)
        self.result: dict | None = None
        self._wanted: list[str] | None = None
        lay = QVBoxLayout(self)
        self.status = QLabel("Checking the audit trail…")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.status.setStyleSheet(f"background: {PANEL}; color: {TEXT}; padding: 8px 10px; border-radius: 4px;")
        lay.addWidget(self.status)
        self.path_label = QLabel("")
        self.path_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.path_label.setStyleSheet(f"color: {MUTED};")
        lay.addWidget(self.path_label)
        row = QHBoxLayout()
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter shown rows (event, user, any text)…")
        self.filter.textChanged.connect(self._apply_filter)
        row.addWidget(self.filter, 1)
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("Find a Patient ID (matched by its keyed pseudonym)")
        self.patient.returnPressed.connect(self._find_patient)
        row.addWidget(self.patient, 1)
        lay.addLayout(row)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)  # read-only
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        hh = self.table.horizontalHeader()
        for c in range(len(COLUMNS) - 1):
            hh.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.Stretch)
        lay.addWidget(self.table, 1)
        self.note = QLabel("")
        self.note.setStyleSheet(f"color: {MUTED};")
        lay.addWidget(self.note)
        buttons = QHBoxLayout()
        self.copy_btn = QPushButton("Copy head (to keep elsewhere)")
        self.copy_btn.setToolTip("The line count and last line's sha256: kept outside this computer, "
                                 "`imaging-assist audit verify --anchor` later proves nothing was rewritten")
        self.copy_btn.clicked.connect(self._copy_head)
        self.copy_btn.setEnabled(False)
        self.refresh_btn = QPushButton("Verify again")
        self.refresh_btn.clicked.connect(self.refresh)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons.addWidget(self.copy_btn)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_btn)
        buttons.addWidget(close)
        lay.addLayout(buttons)
        self._reader = _Reader(self)
        self._reader.done.connect(self._show, Qt.QueuedConnection)
        self.refresh()

    # ------------------------------------------------------------------ loading
    def refresh(self) -> None:
        self.refresh_btn.setEnabled(False)
        self.status.setText("Checking the audit trail…")
        self._reader.start()

    def _show(self, r: dict) -> None:
        self.result = r
        self.refresh_btn.setEnabled(True)
        n_parts = r.get("parts", 0)
        self.path_label.setText(f"Log: {r['path']}" + (
            f"  (and {n_parts} closed part{'s' if n_parts != 1 else ''} beside it, read first)" if n_parts else ""))
        if r["error"]:
            self._set_status(False, f"The audit trail could not be read: {r['error']}")
        elif r["ok"]:
            self._set_status(True, f"The trail holds: {r['reason']}")
        else:
            where = f" at line {r['line']}" if r["line"] else ""
            self._set_status(False, f"The trail is BROKEN{where}: {r['reason']}")
        self.copy_btn.setEnabled(bool(r["ok"] and "head " in r["reason"]))
        shown = r["entries"][::-1]  # (line number, entry): the newest MAX_ROWS, newest first
        self.table.setRowCount(len(shown))
        bad = r["line"] if not r["ok"] else None
        for row, (n, e) in enumerate(shown):
            if e is None:
                cells = (str(n), "", "", "(not an audit record)", "")
            else:
                fields = e.get("fields") if isinstance(e.get("fields"), dict) else {}
                cells = (str(e.get("seq", n)), str(e.get("time", ""))[:19].replace("T", " "),
                         f"{e.get('user', '?')}@{e.get('host', '?')}", str(e.get("event", "?")), _details(fields))
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                it.setData(Qt.UserRole, n)
                if c == len(cells) - 1:
                    it.setToolTip(text)
                if bad is not None and n >= bad:  # from the first broken line on, nothing is proven
                    it.setForeground(QColor(ERROR_FG))
                    it.setToolTip("not proven: at or after the first broken line")
                self.table.setItem(row, c, it)
        self._apply_filter()
        self.loaded.emit()

    def _set_status(self, ok: bool, text: str) -> None:
        bg, fg = (OK_BG, OK_FG) if ok else (ERROR_BG, ERROR_FG)
        self.status.setText(text)
        self.status.setStyleSheet(f"background: {bg}; color: {fg}; padding: 8px 10px; border-radius: 4px;")

    # ------------------------------------------------------------------ filtering
    def _find_patient(self) -> None:
        from imaging_assist.privacy import audit

        text = self.patient.text().strip()
        # the Patient ID's pseudonym and that of its de-identified copy (analyze/batch --deidentify)
        self._wanted = [w for w in audit.patient_pseudonyms(text) if w] if text else None
        self._apply_filter()

    def _apply_filter(self) -> None:
        needle = self.filter.text().strip().lower()
        for row in range(self.table.rowCount()):
            cells = [self.table.item(row, c).text() for c in range(self.table.columnCount())
                     if self.table.item(row, c) is not None]
            line = " ".join(cells)
            hide = bool(needle) and needle not in line.lower()
            if self._wanted and not any(w in line for w in self._wanted):
                hide = True
            self.table.setRowHidden(row, hide)
        self._update_note()

    def _update_note(self) -> None:
        n = self.result["n"] if self.result else 0
        rows = self.table.rowCount()
        visible = sum(not self.table.isRowHidden(r) for r in range(rows))
        parts = [f"{n} event(s), newest first"]
        if rows < n:
            parts.append(f"the newest {rows} listed (`imaging-assist audit show` lists all)")
        if visible < rows:
            parts.append(f"{visible} match the filter")
        self.note.setText("; ".join(parts) + ". Patient IDs, UIDs and paths are keyed pseudonyms. "
                          "Not for clinical use.")

    def visible_rows(self) -> list[list[str]]:
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount()) if not self.table.isRowHidden(r)]

    def _copy_head(self) -> None:
        if self.result and "head " in self.result["reason"]:
            QGuiApplication.clipboard().setText(self.result["reason"].rsplit("head ", 1)[1].strip())


def show_audit_window(parent) -> AuditWindow:
    """Open (or raise) the parent's one audit window."""
    w = getattr(parent, "_audit_window", None)
    if w is None:
        w = AuditWindow(parent)
        parent._audit_window = w
    else:
        w.refresh()
    w.show()
    w.raise_()
    w.activateWindow()
    return w


def audit_action(parent) -> QAction:
    """Help → Audit trail… for a main window."""
    a = QAction("Audit &trail…", parent)
    a.setStatusTip("Who opened, ran, exported and sent what on this computer, and whether the log is intact")
    a.triggered.connect(lambda: show_audit_window(parent))
    return a
