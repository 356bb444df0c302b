"""Run engine calls off the GUI thread; results come back as queued Qt signals."""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject, Signal

from ..shared.text import reason_of
from ..shared.workers import worker_thread


class Job(QObject):
    """``Job(fn).start()``: ``fn(job)`` runs in a thread; ``done(result)`` or ``failed(line)``
    arrive in the GUI thread.  ``job.progress.emit(...)`` from ``fn`` reports progress;
    ``job.cancel`` (a threading.Event) is what the engine checks."""

    done = Signal(object)
    failed = Signal(str)
    progress = Signal(object)

    def __init__(self, fn, parent=None):
        super().__init__(parent)
        self.fn = fn
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> Job:
        self.thread = worker_thread(self._run, "pacs-gui-job")
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self.fn(self)
        except Exception as e:  # noqa: BLE001 - shown as one line in the window
            self.failed.emit(reason_of(e))
            return
        self.done.emit(result)

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()
