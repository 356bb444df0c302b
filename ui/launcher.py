"""The ``imaging-assist`` console script: the engine's CLI with the desktop viewer plugged in.

The engine (``imaging_assist``) never imports this package; this launcher imports the
engine's CLI and hands it a runner for ``view``, ``demo`` and the no-argument case.  Qt is
imported only when a window is opened, so ``scan``/``info``/``analyze`` start fast.
"""

from __future__ import annotations

import sys


def run_gui(path=None, screenshot=None, series=None, layout=None, run_models=False, slab=None, size=None) -> int:
    from .app import run_gui as _run
    return _run(path, screenshot=screenshot, series=series, layout=layout, run_models=run_models, slab=slab,
                size=size)


def main(argv: list[str] | None = None) -> int:
    from imaging_assist.cli import main as cli_main
    code = cli_main(argv, run_gui=run_gui)
    exit_now_if_threads_left(code)
    return code


def exit_now_if_threads_left(code: int) -> None:
    """After a window: end the process at once when a worker thread is still running.

    ``app.wait_for_workers`` gives the app's threads a few seconds; one still inside a C
    extension after that (the model catalogue in torch on a busy machine) is ended by CPython's
    finalisation with pthread_exit when it next takes the GIL, and the unwind through torch's
    C++ frames aborts the process ("terminate called without an active exception", exit 134,
    seen here with `view --screenshot`).  Nothing is left to clean up by then (the window is
    closed, its settings written), so the streams are flushed and the process exits with its
    code, without finalisation.  Only the console script does this, never an in-process caller
    (tests), and only when a window ran."""
    import os
    import threading

    if "imaging_assist_ui.app" not in sys.modules:
        return
    if not any(t.is_alive() and t.daemon for t in threading.enumerate()):
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
