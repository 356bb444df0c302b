"""Reader feedback next to the AI results (issue 18), attached to the model panel by one call.

:func:`attach_monitoring` (the model panel's only hook) adds, under the results:

* a :class:`FeedbackBox`: per finding Agree / Disagree / Unsure and the correct label, the
  verdict shown next to the finding afterwards; keyboard: Ctrl+Shift+A / D / U on the
  selected finding (Ctrl+Shift+Up/Down selects), so the eyes stay on the image;
* "Correct labels…" for segmentations (:mod:`.label_editor`);
* "Monitor…" (:mod:`.monitor_panel`);

and checks the drift monitor once at start (worker thread), showing any alert in the main
window's banner.  Everything is written to the local prediction log; nothing leaves the machine.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QPushButton, QVBoxLayout)

from ..shared.workers import worker_thread

VERDICT_TEXT = {"agree": "✓ agreed", "disagree": "✗ disagreed", "unsure": "? unsure"}


class FeedbackBox(QGroupBox):
    """Verdicts on the findings of one logged run."""

    feedbackSaved = Signal(str, str)  # finding, verdict

    def __init__(self, parent=None):
        super().__init__("Reader feedback (kept on this computer)", parent)
        self.run_id: int | None = None
        self.run_ref: dict | None = None
        self.result = None
        self.card = None
        self.volume = None
        self.doc = None  # the document whose shown volume the verdicts must be about (attach_monitoring)
        self.rows: dict[str, dict] = {}
        self._groups: list = []  # this result's button groups (children of the box: deleted per result)
        self.current = 0
        self._grid = QGridLayout()
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(4)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setTextFormat(Qt.PlainText)  # error lines: never markup
        self.note.setObjectName("Muted")
        self.edit_btn = QPushButton("Correct labels…")
        self.edit_btn.setToolTip("Brush, eraser and fill on the model's label map; saved with this run")
        self.edit_btn.clicked.connect(self.open_editor)
        self.monitor_btn = QPushButton("Monitor…")
        self.monitor_btn.setToolTip("Drift of inputs and outputs, agreement with readers, per window")
        self.monitor_btn.clicked.connect(self.open_monitor)
        btns = QHBoxLayout()
        btns.addWidget(self.edit_btn)
        btns.addStretch(1)
        btns.addWidget(self.monitor_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(self._grid)
        lay.addWidget(self.note)
        lay.addLayout(btns)
        self.editor = None
        self.monitor_dialog = None
        self.set_result(None)

    # ------------------------------------------------------------------ content
    def set_result(self, res, card=None, volume=None) -> None:
        for g in self._groups:  # else three per study stay until the window closes
            g.deleteLater()
        self._groups = []
        while self._grid.count():
            w = self._grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.rows = {}
        self.result, self.card, self.volume = res, card, volume
        from imaging_assist.errors import UserError
        from imaging_assist.monitoring.feedback import latest_feedback, run_matches

        self.run_id = getattr(res, "prediction_log_id", None) if res is not None else None
        self.run_ref = getattr(res, "prediction_log_ref", None) if res is not None else None
        moved = self.run_id is not None and not run_matches(self.run_id, self.run_ref)
        if moved:
            self.run_id = None
        self.edit_btn.setVisible(res is not None and getattr(res, "label_map", None) is not None)
        self.edit_btn.setEnabled(self.run_id is not None)
        if res is None:
            self.note.setText("Run a model to give feedback on its findings.")
            return
        if self.run_id is None:
            self.note.setText("This run is no longer in the prediction log (moved aside or replaced since): "
                              "run the model again to give feedback." if moved else
                              "This run is not in the prediction log (switched off or not writable): "
                              "feedback cannot be linked to it.")
            return
        findings = self._findings(res, card)
        try:
            given = latest_feedback(self.run_id)
        except UserError as e:  # a damaged log (LogError): said in the box, never out of the run's slot
            given = {}
            unreadable = f"Earlier feedback cannot be shown: {str(e).splitlines()[0]}"
        else:
            unreadable = None
        labels = list(getattr(res, "labels", []) or [])
        for r, (name, text) in enumerate(findings):
            lab = QLabel(text)
            lab.setTextFormat(Qt.PlainText)  # the labels of a model card: never markup
            lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
            group = QButtonGroup(self)
            self._groups.append(group)
            group.setExclusive(True)
            btns = {}
            for c, (v, t) in enumerate((("agree", "Agree"), ("disagree", "Disagree"), ("unsure", "Unsure"))):
                b = QPushButton(t)
                b.setCheckable(True)
                b.setToolTip(f"{t} with this finding (Ctrl+Shift+{t[0]} on the selected finding)")
                b.clicked.connect(lambda _=False, n=name, vv=v: self.give(n, vv))
                group.addButton(b)
                btns[v] = b
                self._grid.addWidget(b, r, 1 + c)
            combo = QComboBox()
            combo.addItem("correct label…", None)
            seg = getattr(res, "label_map", None) is not None
            for lbl in ([] if seg else labels):
                combo.addItem(lbl, lbl)
            combo.setToolTip("The label the image really shows (filled in for two-label models)")
            combo.setVisible(not seg)
            combo.setEnabled(len(labels) > 2)
            status = QLabel("")
            status.setTextFormat(Qt.PlainText)  # names the reader's label
            self._grid.addWidget(lab, r, 0)
            self._grid.addWidget(combo, r, 4)
            self._grid.addWidget(status, r, 5)
            self.rows[name] = {"label": lab, "buttons": btns, "combo": combo, "status": status, "text": text}
            if name in given:
                self._show_given(name, given[name])
        self._grid.setColumnStretch(0, 1)
        self.select(0)
        self.note.setText(unreadable or
                          "Ctrl+Shift+A agree · D disagree · U unsure (selected finding; Ctrl+Shift+↑/↓ selects)")

    @staticmethod
    def _findings(res, card) -> list[tuple[str, str]]:
        """(finding, text): each label with a decision; else the top label; segmenters: each structure."""
        probs = getattr(res, "probabilities", None)
        if isinstance(probs, dict) and probs:
            decs = getattr(res, "decisions", None) or {}
            out = []
            top = max(probs, key=probs.get)
            for lab, d in decs.items():
                if isinstance(d, dict) and lab in probs:
                    pos = d.get("positive")
                    # the engine's states (models.operating_point.decide_item): above a rule-out
                    # threshold while another class is more likely is "review", not positive
                    word = ("withheld" if pos is None else "negative" if not pos
                            else "POSITIVE" if lab == top else f"review (most likely: {top})")
                    out.append((lab, f"{lab}: {word} ({probs[lab]:.2f})"))
            if not out:
                out.append((top, f"{top} (most likely, {probs[top]:.2f})"))
            return out
        counts = getattr(res, "voxel_counts", None) or {}
        return [(lab, f"{lab}: {n:,} px") for lab, n in counts.items()]

    def select(self, i: int) -> None:
        names = list(self.rows)
        if not names:
            return
        self.current = max(0, min(i, len(names) - 1))
        for j, n in enumerate(names):
            lab = self.rows[n]["label"]
            lab.setText(("▶ " if j == self.current else "") + self.rows[n]["text"])

    def give(self, finding: str, verdict: str) -> bool:
        from imaging_assist.errors import UserError
        from imaging_assist.monitoring.feedback import add_feedback, latest_feedback

        row = self.rows.get(finding)
        if row is None or self.run_id is None:
            return False
        if self.doc is not None and self.volume is not self.doc.volume:  # the keys work window-wide
            self.note.setText("not saved: these findings are of a run on another series than the one "
                              "shown; run the model on this series to give feedback on it.")
            row["buttons"][verdict].setChecked(False)
            return False
        # two labels: the verdict implies the correct label (the combo only shows it);
        # more labels: only a disagreement carries the reader's choice (a choice left in the combo
        # from an earlier disagreement must not be saved with a later agree or unsure)
        multi = row["combo"].count() > 3
        correct = row["combo"].currentData() if multi and verdict == "disagree" else None
        if multi and verdict != "disagree":
            row["combo"].setCurrentIndex(0)
        try:
            add_feedback(self.run_id, finding, verdict, correct_label=correct, expect=self.run_ref)
        except UserError as e:  # LogError too: the log busy or damaged
            row["status"].setText("")
            self.note.setText(f"not saved: {str(e).splitlines()[0]}")
            row["buttons"][verdict].setChecked(False)
            return False
        try:
            self._show_given(finding, latest_feedback(self.run_id)[finding])
        except UserError as e:
            self.note.setText("Saved to the local prediction log, but it cannot be read back: "
                              + str(e).splitlines()[0])
            self.feedbackSaved.emit(finding, verdict)
            return True
        self.note.setText("Saved to the local prediction log.")
        self.feedbackSaved.emit(finding, verdict)
        return True

    def _show_given(self, finding: str, g: dict) -> None:
        row = self.rows[finding]
        row["buttons"][g["verdict"]].setChecked(True)
        extra = f" → {g['correct_label']}" if g.get("correct_label") and g["correct_label"] != finding else ""
        row["status"].setText(VERDICT_TEXT[g["verdict"]] + extra)
        # more than two labels: the combo holds the reader's choice of a disagreement only
        i = row["combo"].findData(g.get("correct_label"))
        if row["combo"].count() > 3 and g["verdict"] != "disagree":
            i = 0
        if i >= 0:
            row["combo"].setCurrentIndex(i)

    def give_current(self, verdict: str) -> bool:
        names = list(self.rows)
        return bool(names) and self.give(names[self.current], verdict)

    def status_of(self, finding: str) -> str:
        return self.rows[finding]["status"].text() if finding in self.rows else ""

    # ------------------------------------------------------------------ dialogs
    def open_editor(self):
        from .label_editor import LabelEditorDialog

        res = self.result
        if res is None or getattr(res, "label_map", None) is None:
            return None
        self.editor = LabelEditorDialog(self.run_id, res.label_map, res.labels, volume=self.volume, parent=self,
                                        run_ref=self.run_ref)
        self.editor.saved.connect(lambda d: self.note.setText(
            f"Correction saved ({d['changed_voxels']:,} pixels changed"
            + (", DICOM SEG written" if d.get("seg_file") else "") + ")."))
        self.editor.show()
        return self.editor

    def open_monitor(self):
        from .monitor_panel import MonitorDialog

        mid = self.card.id if self.card is not None else None
        self.monitor_dialog = MonitorDialog(model_id=mid, parent=self.window())
        self.monitor_dialog.show()
        return self.monitor_dialog


class _AlertBridge(QObject):
    done = Signal(object)


def _start_alert_check(panel) -> None:
    """The drift monitor once at start, off the GUI thread; alerts go to the window's banner."""
    from imaging_assist.monitoring.log import db_path

    if not db_path().exists():
        return
    bridge = _AlertBridge(panel)
    panel._monitor_bridge = bridge

    def work():
        try:
            from imaging_assist.monitoring.drift import monitor

            rep = monitor()
            bridge.done.emit(rep.get("alerts") or [])
        except Exception as e:  # noqa: BLE001 - a monitor failure is a note, never a crash at start
            bridge.done.emit(f"drift monitor not run: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def show(alerts):
        panel.monitor_alerts = alerts
        win = panel.window()
        if isinstance(alerts, list) and alerts and hasattr(win, "show_banner"):
            more = f" (+{len(alerts) - 1} more: AI models → Monitor…)" if len(alerts) > 1 else ""
            win.show_banner("Drift monitor: " + alerts[-1]["text"] + more)

    bridge.done.connect(show, Qt.QueuedConnection)
    worker_thread(work, "drift-monitor").start()


def attach_monitoring(panel) -> FeedbackBox:
    """The model panel's hook: the feedback box under the results, updated after every run."""
    box = FeedbackBox(panel)
    box.doc = panel.doc
    panel.feedback_box = box
    panel.monitor_alerts = None
    panel.layout().addWidget(box)

    def on_run(status):
        ctx = panel._run_ctx or {}
        # a run that ended after the series changed is not offered: the box follows the shown
        # series (ModelPanel._on_volume)
        if status == "done" and panel.last_result is not None and ctx.get("volume") is panel.doc.volume:
            box.set_result(panel.last_result, ctx.get("card"), ctx.get("volume"))
        elif status != "done":
            box.set_result(None)

    panel.runFinished.connect(on_run)
    win_keys = (("Ctrl+Shift+A", lambda: box.give_current("agree")),
                ("Ctrl+Shift+D", lambda: box.give_current("disagree")),
                ("Ctrl+Shift+U", lambda: box.give_current("unsure")),
                ("Ctrl+Shift+Up", lambda: box.select(box.current - 1)),
                ("Ctrl+Shift+Down", lambda: box.select(box.current + 1)))
    box.shortcuts = []
    for key, fn in win_keys:
        sc = QShortcut(QKeySequence(key), panel)
        sc.setContext(Qt.WindowShortcut)  # anywhere in the main window (image view included), not only the dock
        sc.activated.connect(fn)
        box.shortcuts.append(sc)
    QTimer.singleShot(0, lambda: _start_alert_check(panel))
    return box


__all__ = ["FeedbackBox", "attach_monitoring"]
