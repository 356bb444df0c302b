"""Demo mode of the viewer (``imaging-assist demo`` with a display): every registered model
whose card fits the shown series is run on it from the AI model panel, one after the other
(segmenters first), as soon as the series is loaded and the model list is read.

Classifiers get a Grad-CAM heat map; segmenters run without one (faster).  Each model's
outcome - overlays, scores, or a one-line error - is what the panel shows for a run started by
hand.  Only models that are ``ModelEntry.runnable_without_prompt`` run on their own: the
auto-run waits for each model's sha256 check, and a model whose check failed ("error") or a
bundle with code the user has not trusted ("skipped") is never run; a note says why.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer


class AutoRun(QObject):
    def __init__(self, window, parent=None):
        super().__init__(parent or window)
        self.window = window
        self.panel = window.model_panel
        self.doc = self.panel.doc
        self.queue: list | None = None  # None: not planned for the shown series yet
        self.started: list[str] = []  # model ids started on the shown series
        self.finished: list[tuple[str, str]] = []  # (model id, status)
        self.notes: list[str] = []  # one line per model not run, and why
        self._current: str | None = None
        self.panel.catalogReady.connect(self._kick)
        self.panel.runFinished.connect(self._on_finished)
        self.doc.volumeChanged.connect(self._on_series)
        self.doc.loadFinished.connect(self._kick)
        self._timer = QTimer(self)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._kick)
        self._timer.start()

    def _on_series(self):
        self.queue = None
        self.started = []
        self.finished = []
        self.notes = []
        self._current = None

    def _plan(self) -> list:
        p = self.panel
        from imaging_assist.nodules.run import is_nodule_model

        # the CT nodule models run at the demo's nodule through the viewer (ui/radiology/nodules.py)
        fits = [e for e in p.entries if p._usable(e) and p.matches.get(str(e.folder)) is not None
                and p.matches[str(e.folder)].ok and not is_nodule_model(e.card)]
        return sorted(fits, key=lambda e: (e.card.task != "segmentation", e.card.id))

    def _kick(self, *_):
        p = self.panel
        if not p._catalog_loaded:
            if p.state != "listing":
                p.refresh()
            return
        if self.doc.volume is None or not p._volume_ready() or p.running:
            return
        if self.queue is None:
            p._rematch(select_best=True)  # the matches of the series now shown
            self.queue = self._plan()
            self._next()
        elif self.queue and self._current is None:
            self._next()  # e.g. the next model's sha256 check has come in

    def _on_finished(self, status):
        if self._current is not None:
            self.finished.append((self._current, status))
            self._current = None
            QTimer.singleShot(0, self._next)

    def _next(self):
        p = self.panel
        if not self.queue or p.running or self._current is not None:
            return
        e = self.queue[0]
        checked = p.verify_state.get(str(e.folder), (None, ""))[0]
        if checked is None:
            return  # its sha256 check is still running: the timer comes back
        self.queue.pop(0)
        why = self._not_runnable(e, checked)
        if why:
            self.finished.append((e.card.id, "error" if checked is False else "skipped"))
            self.notes.append(f"{e.card.id}: not run automatically: {why}")
            self._say(self.notes[-1])
            QTimer.singleShot(0, self._next)
            return
        if not p.select_model(e.card.id):
            QTimer.singleShot(0, self._next)
            return
        p.set_method("gradcam" if e.card.task == "classification" and p._gradcam_possible(e.card) else None)
        self._current = e.card.id
        if p.run():
            self.started.append(e.card.id)
        else:
            self.finished.append((e.card.id, "error"))
            self._current = None
            QTimer.singleShot(0, self._next)

    @staticmethod
    def _not_runnable(e, checked) -> str:
        """Why the entry must not run without asking ("" when it may)."""
        if checked is False or getattr(e, "verified", None) is False:
            return "its weights failed the sha256 check"
        if getattr(e, "contains_code", False) and not getattr(e, "trusted", False):
            return (f"it contains code and is not trusted (`imaging-assist models trust {e.card.id}` "
                    "after reading it)")
        if not getattr(e, "runnable_without_prompt", False):
            return "it is not verified"
        return ""

    def _say(self, text: str) -> None:
        try:
            self.window.statusBar().showMessage(text, 8000)
        except Exception:  # noqa: BLE001 - a status line is a courtesy; the note is kept
            pass

    @property
    def idle(self) -> bool:
        """Every planned model of the shown series has finished."""
        return self.queue is not None and not self.queue and self._current is None and not self.panel.running
