"""The app's worker threads (model catalogue, loading, slide and nodule jobs, PACS jobs...).

Each is a daemon thread made by :func:`worker_thread`, which remembers it, so that the app can
let the running ones end before Python shuts down (:func:`imaging_assist_ui.app.wait_for_workers`):
a thread still inside a C extension (importing torch, reading a slide) while the interpreter
finalises can crash the process at exit.  Threads that wait for work forever (the slide tile
readers, thread pools) are not made here; they are stopped their own way.
"""

from __future__ import annotations

import threading
import weakref

_WORKERS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


def worker_thread(target, name: str, args: tuple = ()) -> threading.Thread:
    """A daemon thread for one bounded job (not started)."""
    t = threading.Thread(target=target, name=name, args=args, daemon=True)
    _WORKERS.add(t)
    return t


def running() -> list[threading.Thread]:
    return [t for t in list(_WORKERS) if t.is_alive()]
