"""The viewer on a laptop screen (a clinic demo at 1280 x 720 or 1366 x 768): the window's
minimum width, with a study open in MPR, the studies on the left and the AI models on the right,
fits a 1280-px screen; the docks keep their workstation widths on a large screen; the slice
slider keeps a usable width, and the toolbar's » button (what does not fit) is seen.  Before:
1526 px minimum (docks fixed at 340-420 px and a thickness box shown for "Slice"), so the window
ran off a 1366-px screen, and the » button was drawn blank."""

import pytest
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QApplication, QToolButton

from _qt import open_window, wait_until
from conftest import SHARED, need

from imaging_assist_ui.shared.theme import DOCK_MIN_WIDTH

SLAB_DIR = SHARED / "ct" / "lidc_idri_0001_slab"


@pytest.fixture(scope="module")
def win(tmp_path_factory):
    w = open_window(tmp_path_factory, str(need(SLAB_DIR)), size=(1920, 1080))
    w.set_layout("mpr")
    w.show_model_panel()
    QApplication.processEvents()
    yield w
    w.close()


def test_a_large_screen_keeps_the_docks_workstation_widths(win):
    assert wait_until(lambda: win.width() == 1920, 5)
    assert abs(win.browser_dock.width() - 350) <= 12
    assert win.model_dock.width() >= 410  # the models table and results at their full width


def test_the_window_fits_a_1280_px_screen_with_a_study_open(win):
    docks = [d for d in (win.browser_dock, win.model_dock) if d.isVisible()]
    assert len(docks) == 2  # studies on the left, AI models on the right
    assert win.minimumSizeHint().width() <= 1240, win.minimumSizeHint()
    win.resize(1280, 720)
    assert wait_until(lambda: win.width() <= 1280, 5), win.width()
    QApplication.processEvents()
    for d in docks:
        assert d.width() >= DOCK_MIN_WIDTH
    slider = win.slice_bar.slider  # the slice slider of the bar under the views
    assert slider.isVisible()
    assert wait_until(lambda: slider.width() >= 60, 5), slider.width()
    assert win.slab_controls.combo.isVisible() and not win.slab_controls.thickness.isVisible()
    # the toolbar's last items go behind its » button, which must be seen (it was drawn blank)
    ext = win.toolbar.findChild(QToolButton, "qt_toolbar_ext_button")
    assert ext is not None and ext.isVisible()
    img = ext.grab().toImage()
    colours = {img.pixelColor(x, y).name() for x in range(img.width()) for y in range(img.height())}
    assert len(colours) > 2 and any(QColor(c).lightness() > 150 for c in colours), colours
    win.resize(1920, 1080)
    assert wait_until(lambda: not ext.isVisible(), 5)  # everything fits again


def test_a_nodule_list_does_not_widen_the_window_again(win):
    win.nodules.dock.show()
    QApplication.processEvents()
    assert win.minimumSizeHint().width() <= 1240, win.minimumSizeHint()
    win.nodules.dock.hide()


def test_view_screenshot_at_a_laptop_size(tmp_path):
    """`imaging-assist view PATH --screenshot OUT --size 1280x720`: the window at that size
    (how docs/screenshots/small_screen_1280.png is made); a bad size is one line."""
    import os
    import struct
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "small.png"
    cli = [sys.executable, "-c", "import sys; from imaging_assist_ui.launcher import main; sys.exit(main())"]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", IMAGING_ASSIST_SETTINGS=str(tmp_path / "s.ini"))
    p = subprocess.run(cli + ["view", str(need(SLAB_DIR)), "--layout", "mpr", "--screenshot", str(out),
                              "--size", "1280x720"], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 720)
    for bad in ("1280", "12x7", "big"):
        p = subprocess.run(cli + ["view", str(need(SLAB_DIR)), "--screenshot", str(out), "--size", bad],
                           capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--size" in p.stderr, p.stderr
    p = subprocess.run(cli + ["view", str(need(SLAB_DIR)), "--size", "1280x720"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert p.returncode == 2 and "--size is for --screenshot" in p.stderr
