"""Run inference off the caller's thread, with progress callbacks and cancellation.

>>> job = submit(run_model, model, volume, options)   # returns at once
>>> job.on_progress(lambda fraction, message: ...)     # called from the worker thread
>>> job.cancel()                                       # cooperative: checked between windows
>>> result = job.result(timeout=None)                  # re-raises the worker's exception

The worker is a plain ``threading.Thread``: PyTorch releases the GIL inside its kernels,
so a GUI thread stays responsive.  Progress callbacks run on the worker thread; a GUI must
forward them to its own thread (e.g. with a Qt signal).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

ProgressFn = Callable[[float, str], None]


class Cancelled(Exception):
    """The job was cancelled by the user (not an error)."""


class Progress:
    """Progress reporting in [0, 1] with nested stages and a cancellation check.

    ``stage(a, b)`` returns a child that maps its own [0, 1] into [a, b] of the parent, so
    inner code (sliding windows, slices) reports without knowing the whole plan.
    """

    def __init__(self, callback: ProgressFn | None = None, cancel_event: threading.Event | None = None,
                 lo: float = 0.0, hi: float = 1.0, parent: "Progress | None" = None):
        self._cb = callback
        self.cancel_event = cancel_event or (parent.cancel_event if parent else threading.Event())
        self.lo, self.hi = lo, hi
        self._parent = parent
        self.messages: list[str] = []

    def stage(self, a: float, b: float) -> "Progress":
        return Progress(None, self.cancel_event, a, b, parent=self)

    def _emit(self, f: float, msg: str) -> None:
        if self._parent is not None:
            self._parent._emit(self.lo + (self.hi - self.lo) * f, msg)
        elif self._cb is not None:
            self._cb(min(1.0, max(0.0, self.lo + (self.hi - self.lo) * f)), msg)

    def __call__(self, fraction: float, message: str = "") -> None:
        self.check()
        self._emit(min(1.0, max(0.0, float(fraction))), message)

    def note(self, message: str) -> None:
        """A message at the current position (e.g. a fallback warning)."""
        root = self
        while root._parent is not None:
            root = root._parent
        root.messages.append(message)
        self._emit(0.0, message)

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("cancelled")

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


class Job:
    def __init__(self, fn: Callable[..., Any], *args, name: str = "inference", **kwargs):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._callbacks: list[ProgressFn] = []
        self._result: Any = None
        self._error: BaseException | None = None
        self.fraction = 0.0
        self.message = ""
        self.started = self.finished = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # The callable receives ``progress=`` (a :class:`Progress`) as a keyword argument.
    def start(self) -> "Job":
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def _progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = fraction, message
        for cb in list(self._callbacks):
            try:
                cb(fraction, message)
            except Exception:  # noqa: BLE001 - a broken observer must not kill the job
                pass

    def _run(self) -> None:
        try:
            prog = Progress(self._progress, self._cancel)
            self._result = self._fn(*self._args, progress=prog, **self._kwargs)
            if not self._cancel.is_set():
                self._progress(1.0, "done")
        except BaseException as e:  # noqa: BLE001 - handed to the caller in result()
            self._error = e
        finally:
            self.finished = time.perf_counter()
            self._done.set()

    def on_progress(self, cb: ProgressFn) -> "Job":
        self._callbacks.append(cb)
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None):
        if not self._done.wait(timeout):
            raise TimeoutError("the job is still running")
        if self._error is not None:
            raise self._error
        return self._result

    @property
    def status(self) -> str:
        if not self._done.is_set():
            return "cancelling" if self._cancel.is_set() else (
                "running" if self._thread.is_alive() else "pending")
        if isinstance(self._error, Cancelled):
            return "cancelled"
        return "failed" if self._error is not None else "done"


def submit(fn: Callable[..., Any], *args, on_progress: ProgressFn | None = None, **kwargs) -> Job:
    """Start ``fn(*args, progress=Progress, **kwargs)`` on a worker thread."""
    job = Job(fn, *args, **kwargs)
    if on_progress is not None:
        job.on_progress(on_progress)
    return job.start()
