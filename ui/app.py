"""Application entry points: ``run_gui`` (called by the CLI) and ``main(argv)``.

``run_gui(None)`` opens the empty main window; ``run_gui(PATH)`` opens a folder, zip,
DICOMDIR or file at once (a whole-slide image - SVS, tiled TIFF, DICOM WSI... - opens in the
slide view).  With ``screenshot=OUT.png`` the window loads, renders, saves a
PNG of the whole main window and exits (used by tests and the demo).

With no display (Linux: DISPLAY and WAYLAND_DISPLAY unset or naming a server that does not answer,
no QT_QPA_PLATFORM) a window cannot open:
one ``error:`` line, exit 2 (Qt would abort the process); ``--screenshot`` renders offscreen there.
Ctrl-C quits the event loop: "interrupted", exit 130, after the worker threads ended.

Environment hooks (for benchmarks): ``IMAGING_ASSIST_EXIT_AFTER_FIRST_IMAGE=1`` prints
``first_image_at <unix time>`` when the first slice has been painted and quits.
"""

from __future__ import annotations

import os
import sys
import time

_T0 = time.perf_counter()

from PySide6.QtCore import QLocale, QSettings, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

SCREENSHOT_SIZE = (1920, 1080)
SCREENSHOT_TIMEOUT_S = float(os.environ.get("IMAGING_ASSIST_SCREENSHOT_TIMEOUT", "120"))


def preload_engine(background: bool = True):
    """Import the DICOM engine (numpy, pydicom) - on a thread while the window is built.

    pydicom imports ``requests`` and ``tqdm`` only to download its own test files; keeping
    them out of that import saves about 0.1 s of start-up and changes nothing else (both
    import normally later if anything asks for them).
    """
    def work():
        blocked = [m for m in ("requests", "tqdm") if m not in sys.modules]
        for m in blocked:  # optional for pydicom: it falls back when they are missing
            sys.modules[m] = None  # type: ignore[assignment]
        try:
            import imaging_assist.dicom  # noqa: F401
        except Exception:  # noqa: BLE001 - the real import reports it later
            pass
        finally:
            for m in blocked:
                if m in sys.modules and sys.modules[m] is None:
                    del sys.modules[m]
    if not background:
        work()
        return None
    from .shared.workers import worker_thread
    t = worker_thread(work, "preload")
    t.start()
    return t


def make_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance()
    if app is None:
        QApplication.setAttribute(Qt.AA_ShareOpenGLContexts, True)
        app = QApplication(list(argv) if argv else [sys.argv[0] if sys.argv else "imaging-assist"])
        app.setApplicationName("Imaging Assist")
        app.setOrganizationName("ImagingAssist")
    from .shared.spinbox import number_locale
    from .shared.theme import apply_dark_theme
    # numbers in every box as everywhere else in the program (".", Western digits), not as
    # LANG says: under de_DE "2.5" typed into a box was 25 ("." a group separator)
    QLocale.setDefault(number_locale())
    if not getattr(app, "_ia_themed", False):
        apply_dark_theme(app)
        app._ia_themed = True
    return app


def _no_display() -> str | None:
    """Why a window cannot open (None where it can): a Linux/BSD machine (ssh session, server)
    with neither DISPLAY nor WAYLAND_DISPLAY, or with one naming a server that does not answer
    (a closed ``ssh -X`` session: Qt would abort the process), and no QT_QPA_PLATFORM naming
    another platform.  The test is :func:`imaging_assist.demo.display_problem` (a module that
    imports nothing heavy before it is used: numpy is left to the preload thread)."""
    if sys.platform in ("win32", "darwin") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    from imaging_assist.demo import display_problem

    return display_problem()


def _unwritable(path: str, sources=()) -> str | None:
    """Why the --screenshot target cannot be written, checked before the series loads: a name
    that is no image type Qt writes (Qt opened, and so emptied, a .dcm before finding no writer),
    a folder, or one of the files being opened (``sources``) or a file inside that folder."""
    from PySide6.QtGui import QImageWriter

    from imaging_assist.errors import UserError
    from imaging_assist.outputs import refuse_input_target

    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if os.path.isdir(full):
        return f"cannot write the screenshot {path}: it is a folder"
    kinds = sorted(bytes(f).decode() for f in QImageWriter.supportedImageFormats())
    if os.path.splitext(full)[1][1:].lower() not in kinds:
        common = [k for k in ("png", "jpg", "jpeg", "bmp", "tif", "webp") if k in kinds]
        return (f"cannot write the screenshot {path}: the name must end in an image type "
                f"({', '.join('.' + k for k in common)}, ...)")
    try:
        refuse_input_target(path, [s for s in sources if s], "--screenshot")
    except UserError as e:
        return str(e)
    if not os.path.isdir(folder):
        return f"cannot write the screenshot {path}: no such folder {folder}"
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(full) and not os.access(full, os.W_OK)):
        return f"cannot write the screenshot {path}: permission denied"
    return None


def _settings() -> QSettings:
    """IMAGING_ASSIST_SETTINGS names the file; else, where IMAGING_ASSIST_CONFIG_DIR moves the
    user's settings, ``gui.ini`` there (the recent list, which names study folders, no longer
    lands in ~/.config beside a relocated config); else Qt's own place, as before."""
    path = os.environ.get("IMAGING_ASSIST_SETTINGS")
    if path:
        return QSettings(path, QSettings.IniFormat)
    if os.environ.get("IMAGING_ASSIST_CONFIG_DIR"):
        from imaging_assist.userdirs import config_dir

        return QSettings(str(config_dir() / "gui.ini"), QSettings.IniFormat)
    return QSettings("ImagingAssist", "Imaging Assist")


def run_gui(path: str | None, screenshot: str | None = None, series: str | None = None,
            layout: str | None = None, run_models: bool = False, slab=None, size=None) -> int:
    """Open the main window (optionally a study).  Returns the process exit code.

    screenshot: save the whole window to this PNG once the series is loaded, then exit
    (exit code 0 on success, 1 when nothing could be shown, 2 on timeout, and 2 with nothing
    written for a size the window cannot take); 130 after Ctrl-C.
    series: a SeriesInstanceUID (or series key, or a file of the series) to show.
    layout: 'single' or 'mpr'.
    slab: an ``imaging_assist.slab.Slab`` (MIP / MinIP / average) for every view.
    size: (width, height) of the window for ``screenshot`` (default SCREENSHOT_SIZE).
    run_models: run every registered model that fits the shown series (the demo; ui/ai/demo_autorun.py).
    """
    if layout not in (None, "single", "mpr"):
        print(f"error: unknown layout {layout!r} (use 'single' or 'mpr')", file=sys.stderr)
        return 2
    if screenshot and not path:
        print("error: --screenshot needs a PATH to open", file=sys.stderr)
        return 2
    if path and not os.path.exists(path):
        print(f"error: no such file or folder: {path}", file=sys.stderr)
        return 2
    why = _unwritable(screenshot, path if isinstance(path, (list, tuple)) else [path]) if screenshot else None
    if why:  # before the series loads, not after it
        print(f"error: {why}", file=sys.stderr)
        return 2
    no_display = _no_display() if QApplication.instance() is None else None
    if no_display:
        if not screenshot:
            print(f"error: no display ({no_display}): open the viewer in a "
                  "desktop session, or save a picture with `view PATH --screenshot OUT.png`", file=sys.stderr)
            return 2
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
    import signal
    import threading

    flag = {"interrupted": False}
    old_sigint = old_sigterm = None
    main = threading.current_thread() is threading.main_thread()

    def note(signum, frame):
        flag["interrupted"] = True

    if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (nohup, &)
        # Ctrl-C: noted here, the event loop quits at its next timer tick (run_gui's _run), instead
        # of a KeyboardInterrupt raised inside whatever Qt slot or paint event is running
        old_sigint = signal.signal(signal.SIGINT, note)
    if main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        # SIGTERM (logout, kill, a supervisor) the same way: it ended the process at once, and a
        # DICOM export's temporary report (name, ID, pixels) stayed in the temporary folder
        old_sigterm = signal.signal(signal.SIGTERM, note)
    try:
        return _run(path, screenshot, series, layout, run_models, slab, size, flag)
    finally:
        if old_sigint is not None:
            signal.signal(signal.SIGINT, old_sigint)
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)


def _run(path, screenshot, series, layout, run_models, slab, size, flag) -> int:
    preload = preload_engine(background=True) if path else None
    app = make_app()
    from .main_window import MainWindow
    win = MainWindow(settings=_settings())
    win.recent.remember = not screenshot  # a one-off picture is not a study the user opened
    result = {"code": 0}
    # Python runs a signal handler only when the interpreter gets control: a timer brings the
    # event loop back to Python now and then, and quits it (from the loop, not from inside
    # whatever slot the handler ran in: quit() closes the window) once Ctrl-C came.
    tick = QTimer()
    tick.timeout.connect(lambda: flag["interrupted"] and app.quit())
    tick.start(100)

    exit_first = os.environ.get("IMAGING_ASSIST_EXIT_AFTER_FIRST_IMAGE") == "1"
    if exit_first:
        def first(t):
            print(f"first_image_at {time.time():.6f} since_import_s {t - _T0:.4f}", flush=True)
            QTimer.singleShot(0, app.quit)
        win.firstImageShown.connect(first)

    if screenshot:
        want = tuple(size or SCREENSHOT_SIZE)
        win.resize(*want)
        state = {"loaded": None, "thumbs": False, "saved": False}

        def save(code):
            if state["saved"] or flag["interrupted"]:
                return
            state["saved"] = True
            app.processEvents()
            why = _size_problem(win, want)  # what the series brought (a stack selector) may widen it
            if why:
                print(f"error: {why}", file=sys.stderr)
                result["code"] = 2
                app.quit()
                return
            for v in win.view_area.views():
                v.repaint()
            ok = win.save_screenshot(screenshot)
            if not ok:
                print(f"error: could not write {screenshot}", file=sys.stderr)
                code = 1
            elif code == 1:
                print(f"error: {win.last_error or 'nothing to show'}; screenshot saved to {screenshot}",
                      file=sys.stderr)
            result["code"] = code
            app.quit()

        def maybe_save():
            if state["loaded"] is not None and state["thumbs"]:
                QTimer.singleShot(150, lambda: save(0 if state["loaded"] else 1))

        def on_loaded(ok):
            state["loaded"] = ok
            if not ok:
                state["thumbs"] = True
            maybe_save()

        def on_thumbs():
            state["thumbs"] = True
            maybe_save()

        win.loadFinished.connect(on_loaded)
        win.thumbnailsDone.connect(on_thumbs)

        def timeout():
            print(f"error: timed out after {SCREENSHOT_TIMEOUT_S:.0f} s; saving what is shown",
                  file=sys.stderr)
            save(2)
        QTimer.singleShot(int(SCREENSHOT_TIMEOUT_S * 1000), timeout)

    try:
        if screenshot:
            win.show()
            why = _size_problem(win, want)  # the window's minimum size won over --size
            if why:
                print(f"error: {why}", file=sys.stderr)
                win.close()
                return 2
        else:
            win.showMaximized() if not exit_first else win.show()
        if path:
            if preload is not None:
                preload.join()
            win.open_path(path, series=series, layout=layout)
        if slab is not None:
            win.slab_controls.apply_all(slab, explicit=True)
        if run_models:
            from .ai.demo_autorun import AutoRun
            win.autorun = AutoRun(win)
            win.show_model_panel()
        app.exec()  # after a Ctrl-C that came first, the timer quits it at once
    finally:
        tick.stop()
        win.cancel_loading(quiet=True)
        win.settings.sync()  # written now: the launcher may end the process without destructors
        wait_for_workers()  # a worker still in a C extension at interpreter exit can crash it
    if flag["interrupted"]:
        print("interrupted", file=sys.stderr)
        return 130
    return result["code"]


def _size_problem(win, want) -> str | None:
    """Why the shown window is not ``want`` (width, height) pixels, in one line; None when it is.
    Its menus, toolbar and docks at the screen's fonts set the smallest size it can take."""
    got = win.size().toTuple()
    if got == tuple(want):
        return None
    asked = f"--size {want[0]}x{want[1]}"
    if got[0] >= want[0] and got[1] >= want[1]:
        least = win.minimumSize()
        return (f"{asked} is smaller than the window can be here (its menus, toolbar and docks): "
                f"at least {least.width()}x{least.height()}; no screenshot written")
    return f"{asked}: the window came out {got[0]}x{got[1]}; no screenshot written"


def wait_for_workers(timeout: float = 10.0) -> list[str]:
    """After the event loop: stop the slide tile readers and let the app's worker threads
    (:mod:`.shared.workers`) end (at most ``timeout`` s in all) before Python shuts down.

    They are daemon threads doing bounded jobs (the model catalogue imports torch and hashes
    weights, the drift monitor reads its database, a loader finishes a file).  One still inside
    a C extension while the interpreter finalises can crash the process at exit: ``view
    --screenshot`` of a slide exited with SIGSEGV once in a test run here, with the catalogue
    and drift threads still running.  Returns the names of the threads still running after
    the wait."""
    import threading

    from .shared.workers import running
    from .slides.slide_tiles import _stop_all_loaders

    _stop_all_loaders()
    deadline = time.monotonic() + timeout
    for t in running():
        if t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in running()]


def main(argv: list[str] | None = None) -> int:
    """Minimal stand-alone entry (the project CLI is ``imaging-assist``):
    ``python -m imaging_assist_ui.app [view] [PATH] [--screenshot OUT] [--series UID] [--layout mpr]``."""
    import argparse
    ap = argparse.ArgumentParser(prog="imaging-assist-ui")
    ap.add_argument("args", nargs="*", help="[view] PATH")
    ap.add_argument("--screenshot")
    ap.add_argument("--series")
    ap.add_argument("--layout", choices=["single", "mpr"])
    ap.add_argument("--slab", help="MODE:MM thick slab in every view, e.g. mip:10 (mip, minip, avg)")
    ns = ap.parse_args(argv)
    rest = [a for a in ns.args if a != "view"] if ns.args[:1] == ["view"] else ns.args
    from imaging_assist.slab import Slab
    try:
        slab = Slab.parse(ns.slab) if ns.slab else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_gui(rest[0] if rest else None, ns.screenshot, ns.series, ns.layout, slab=slab)


if __name__ == "__main__":
    sys.exit(main())
