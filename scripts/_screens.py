"""What the screenshot scripts share (``screenshot_*.py``): a 1920x1080 main window in a fresh
temporary home (no user settings, protocols, positions, logs), waiting on the event loop, and
small PNGs."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def wait(app, cond, timeout) -> bool:
    """Process events until ``cond()`` holds (True) or ``timeout`` seconds pass (False)."""
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            return False
        app.processEvents()
        time.sleep(0.005)
    return True


def small_png(img, path: Path) -> int:
    """Save a QImage as an optimised 256-colour PNG (Pillow); returns its size in bytes."""
    import io

    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice

    buf = QBuffer()
    buf.open(QIODevice.WriteOnly)
    img.save(buf, "PNG")
    im = Image.open(io.BytesIO(bytes(buf.data()))).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


def fresh_window(prefix: str = "ia-shot-"):
    """(app, main window shown at 1920x1080, temporary home folder): the app's config and data
    folders and its QSettings live in the home, so nothing of the user's shows."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["IMAGING_ASSIST_CONFIG_DIR"] = str(home / "config")
    os.environ["IMAGING_ASSIST_DATA_DIR"] = str(home / "data")
    from PySide6.QtCore import QSettings

    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow

    app = make_app()
    win = MainWindow(settings=QSettings(str(home / "s.ini"), QSettings.IniFormat))
    win.resize(1920, 1080)
    win.show()
    return app, win, home


def open_and_wait(app, w, folder) -> None:
    """Open ``folder`` in main window ``w`` and wait until its series is loaded and drawn."""
    w.open_path(str(folder))
    assert wait(app, lambda: w.load_state == "done" and w.doc.volume is not None
                and (w.doc.volume.loaded is None or w.doc.volume.loaded.all()), 60)  # a plain image: None
    wait(app, lambda: False, 1.5)


def panel_on_model(app, w, folder, model_id: str, file) -> object:
    """Copy ``file`` into ``folder``, open it, show the AI model panel with ``model_id`` selected
    (its active version); returns the panel."""
    import shutil

    folder.mkdir()
    shutil.copy(file, folder)
    open_and_wait(app, w, folder)
    w.show_model_panel()
    panel = w.model_panel
    wait(app, lambda: panel._catalog_loaded, 60)
    from imaging_assist_ui.ai.model_panel import FOLDER_ROLE

    for n in range(panel.tree.topLevelItemCount()):
        it = panel.tree.topLevelItem(n)
        e = panel._entry(it.data(0, FOLDER_ROLE))
        if e is not None and e.card is not None and e.card.id == model_id and not e.shadowed_by:
            panel.tree.setCurrentItem(it)
    return panel
