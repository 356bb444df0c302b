"""Helpers shared by the GUI tests (offscreen Qt)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QSettings, QTimer  # noqa: E402


def wait_until(cond, timeout=30.0) -> bool:
    """Run the Qt event loop until cond() is true or the timeout passes; return cond()."""
    loop = QEventLoop()
    t = QTimer()
    t.timeout.connect(lambda: cond() and loop.quit())
    t.start(10)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    loop.exec()
    t.stop()
    return cond()


def pump_until(cond, timeout=20.0) -> bool:
    """Process events (without a nested loop) until cond() is true; return cond()."""
    import time

    from PySide6.QtWidgets import QApplication
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            return False
        QApplication.processEvents()
        time.sleep(0.002)
    return True


def settle(view):
    """Wait until a slide view painted everything in view at the right level (and overlays)."""
    assert pump_until(lambda: (view.repaint() or True) and view.is_complete(), 30.0), view.last_paint
    view.repaint()


def open_window(tmp_path_factory, path: str, size=(1600, 1000)):
    """A shown MainWindow with its own settings file, after `path` has loaded."""
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg") / "s.ini"), QSettings.IniFormat))
    w.resize(*size)
    w.show()
    w.open_path(path)
    assert wait_until(lambda: w.load_state == "done"), w.last_error
    return w
