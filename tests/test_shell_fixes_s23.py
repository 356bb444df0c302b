"""Main-window fixes (audit s23, shell):

1. Backspace while a polygon was drawn deleted the selected measurement (the window's Delete
   action took the key): the view takes Backspace / Enter / Esc while it draws an outline;
2. File ▸ Save view as PNG replaced the files being read, wrote nothing for a ``.dcm`` name
   without a word, and a name without a type: the checks of ``view --screenshot``, ``.png``
   added, one message line; the saved view says "Not for clinical use" below the image;
3. Del in the Nodules list did nothing (its own shortcut and the window's Del were ambiguous);
4. a study folder whose name is no UTF-8 was stored as another path in the recent list;
5. ``view --screenshot --size`` smaller than the window can be wrote another size, rc 0;
6. closing the window left the plain-image thumbnails and the grid viewports loading;
7. Ctrl+W while a series loaded left ``load_state`` "loading" for good.

Small synthetic folders (tests/_synth.py), offscreen."""

from __future__ import annotations

import os
import time

import pytest
from PySide6.QtCore import QPoint, QSettings, Qt
from PySide6.QtGui import QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QFileDialog, QListWidgetItem, QMessageBox

from _qt import open_window, pump_until, wait_until
from _synth import write_ct_series

pytestmark = pytest.mark.gui


def _ct(folder, n=6, size=64, series_uid=None):
    write_ct_series(folder, [(0, 0, float(k)) for k in range(n)], rows=size, cols=size,
                    spacing=(1.0, 1.0), series_uid=series_uid)
    return folder


@pytest.fixture(scope="module")
def win(tmp_path_factory):
    ser = _ct(tmp_path_factory.mktemp("study") / "ser")
    w = open_window(tmp_path_factory, str(ser))
    w.activateWindow()
    QApplication.processEvents()
    yield w
    w.close()


@pytest.fixture
def messages(monkeypatch):
    got = []
    monkeypatch.setattr(QMessageBox, "warning",
                        staticmethod(lambda *a, **k: got.append(a[2]) or QMessageBox.Ok))
    return got


def _slow_loader(monkeypatch, seconds):
    from imaging_assist.dicom import loader as L

    real = L.SeriesLoader._run_unit

    def slow(self, unit, data=None):
        time.sleep(seconds)
        return real(self, unit, data)
    monkeypatch.setattr(L.SeriesLoader, "_run_unit", slow)


# --------------------------------------------------------------------------- 1. Backspace
def test_backspace_removes_the_last_polygon_corner_not_the_selected_measurement(win):
    from imaging_assist.measure import Measurement
    from imaging_assist_ui.radiology.annotation_tools import annotations_for

    v = win.view_area.single
    ruler = Measurement("ruler", [(5.0, 50.0), (30.0, 55.0)], 0, v.index)
    annotations_for(win.doc).add(ruler)
    win.doc.select(ruler)

    def at(u, vv):
        p = v.uv_to_screen(u, vv)
        return QPoint(round(p.x()), round(p.y()))

    win.set_tool("polygon")
    v.setFocus()
    for u, vv in ((10, 10), (40, 10), (40, 40)):
        QTest.mouseClick(v, Qt.LeftButton, Qt.NoModifier, at(u, vv))
    assert len(v._pending.points) == 3
    QTest.keyClick(v, Qt.Key_Backspace)
    assert len(v._pending.points) == 2  # docs/annotations.md: Backspace removes the last corner
    assert ruler in win.doc.measurements
    QTest.keyClick(v, Qt.Key_Escape)  # drops the outline; the tool stays, for the next one
    assert v._pending is None and win.tool_actions["polygon"].isChecked()
    QTest.keyClick(v, Qt.Key_Escape)  # nothing drawn: Esc is Navigate again
    assert win.tool_actions["navigate"].isChecked()
    win.doc.select(ruler)
    QTest.keyClick(v, Qt.Key_Delete)  # not drawing: Del deletes the selected measurement
    assert ruler not in win.doc.measurements


# --------------------------------------------------------------------------- 3. Del in the Nodules list
def test_del_in_the_nodule_list_removes_the_entry(win, monkeypatch):
    from imaging_assist_ui.radiology.nodules import ENTRY_ROLE

    nod = win.nodules
    nod.dock.show()
    entry = object()
    deleted = []
    monkeypatch.setattr(nod, "delete", lambda n: deleted.append(n))
    item = QListWidgetItem("nodule 1")
    item.setData(ENTRY_ROLE, entry)
    nod.list.addItem(item)
    nod.list.setCurrentRow(0)
    nod.list.setFocus()
    QApplication.processEvents()
    try:
        QTest.keyClick(nod.list, Qt.Key_Delete)
        assert deleted == [entry]
    finally:
        nod.list.clear()
        nod.dock.hide()


# --------------------------------------------------------------------------- 2. Save view as PNG
def _save_as(win, monkeypatch, target):
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "PNG (*.png)")))
    win.a_save.trigger()
    QApplication.processEvents()


def test_save_view_refuses_the_files_being_read(win, monkeypatch, messages, tmp_path):
    ser = win.root_paths[0]
    files = sorted(os.listdir(ser))
    _save_as(win, monkeypatch, os.path.join(ser, "shot.png"))  # a new file among those being read
    assert sorted(os.listdir(ser)) == files
    assert len(messages) == 1 and "inside the input" in messages[0] and "\n" not in messages[0], messages
    # a file of the shown series reached by another name (a hard link outside the folder)
    link = tmp_path / "link.png"
    os.link(os.path.join(ser, files[0]), link)
    before = link.read_bytes()
    _save_as(win, monkeypatch, link)
    assert link.read_bytes() == before and os.path.samefile(link, os.path.join(ser, files[0]))
    assert len(messages) == 2 and "one of the files being read" in messages[1], messages


def test_save_view_refuses_a_name_that_is_no_image_type(win, monkeypatch, messages, tmp_path):
    other = tmp_path / "notes.dcm"
    other.write_bytes(b"keep me")
    _save_as(win, monkeypatch, other)
    assert other.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.dcm"]
    assert len(messages) == 1 and "no image name" in messages[0] and ".png" in messages[0], messages


def test_save_view_adds_png_and_a_not_for_clinical_use_footer(win, monkeypatch, messages, tmp_path):
    on_screen = win.view_area.grab().toImage().convertToFormat(QImage.Format_RGB32)
    _save_as(win, monkeypatch, tmp_path / "myview")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myview.png"] and messages == []
    saved = QImage(str(tmp_path / "myview.png")).convertToFormat(QImage.Format_RGB32)
    w, h = on_screen.width(), on_screen.height()
    assert saved.width() == w and h < saved.height() <= h + 40  # one footer line below the view
    assert saved.copy(0, 0, w, h) == on_screen  # the view itself as on screen
    footer = saved.copy(0, h, w, saved.height() - h)
    colours = {footer.pixel(x, y) for x in range(w) for y in range(footer.height())}
    assert len(colours) > 2  # the text "Not for clinical use" is drawn there


def test_save_view_says_when_the_file_cannot_be_written(win, monkeypatch, messages, tmp_path):
    _save_as(win, monkeypatch, tmp_path / "no such folder" / "view.png")
    assert len(messages) == 1 and messages[0].startswith("The view was not saved: could not write "), messages


# --------------------------------------------------------------------------- 4. recent list
def test_a_folder_name_that_is_no_utf8_is_kept_exactly_in_the_recent_list(tmp_path):
    from imaging_assist_ui.main_window.recent import RecentStudies, WelcomePage

    path = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9"))
    os.mkdir(path)
    ini = str(tmp_path / "s.ini")
    welcome = WelcomePage()
    rec = RecentStudies(QSettings(ini, QSettings.IniFormat), welcome)
    from PySide6.QtWidgets import QMenu
    menu = QMenu()
    rec.set_menu(menu)
    rec.add(str(tmp_path))
    rec.add(path)
    assert rec.paths() == [path, str(tmp_path)]
    rec.settings.sync()
    again = RecentStudies(QSettings(ini, QSettings.IniFormat), WelcomePage())
    assert again.paths() == [path, str(tmp_path)]  # the same path after a restart
    opened = []
    rec.openPath.connect(opened.append)
    welcome.openPath.connect(opened.append)
    menu.actions()[0].trigger()
    welcome.recent_list.itemActivated.emit(welcome.recent_list.item(0))
    assert opened == [path, path]
    assert "(missing)" not in welcome.recent_list.item(0).text()
    rec.add(path)  # opened again: still one entry
    assert rec.paths() == [path, str(tmp_path)]


# --------------------------------------------------------------------------- 5. --screenshot --size
def test_a_screenshot_size_the_window_cannot_take_is_refused(tmp_path, monkeypatch, capsys):
    from imaging_assist_ui.app import run_gui

    ser = _ct(tmp_path / "ser", n=3, size=16)
    monkeypatch.setenv("IMAGING_ASSIST_SETTINGS", str(tmp_path / "s.ini"))
    out = tmp_path / "shot.png"
    assert run_gui(str(ser), screenshot=str(out), size=(640, 480)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --size 640x480 is smaller than the window can be here"), err
    assert "at least " in err and "\n" not in err and not out.exists()


# --------------------------------------------------------------------------- 6. close stops the workers
def test_closing_the_window_stops_the_plain_image_thumbnails(tmp_path, tmp_path_factory, monkeypatch):
    from imaging_assist_ui.radiology import loading

    films = tmp_path / "films"
    films.mkdir()
    for n in range(12):
        img = QImage(32, 32, QImage.Format_RGB32)
        img.fill(0x101010 * (n + 1))
        img.save(str(films / f"film{n:02d}.png"))
    real = loading.thumbnail_array

    def slow(series, *a, **k):
        time.sleep(0.3)
        return real(series, *a, **k)
    monkeypatch.setattr(loading, "thumbnail_array", slow)
    w = open_window(tmp_path_factory, str(films))
    job = w.loading._plain_thumbs
    assert job is not None and job._thread.is_alive()
    w.close()
    assert job.cancelled
    job._thread.join(5)
    assert not job._thread.is_alive()


def test_closing_the_window_stops_the_grid_viewports_loading(tmp_path, tmp_path_factory, monkeypatch):
    study = tmp_path / "study"
    _ct(study / "a", n=20, size=16)
    _ct(study / "b", n=20, size=16)
    w = open_window(tmp_path_factory, str(study), size=(1400, 900))
    try:
        _slow_loader(monkeypatch, 0.1)
        key = next(s.key for s in w.index.image_series() if s.key != w.current_key)
        w.reading.load_into(1, key)
        job = w.reading._jobs[1]
        assert pump_until(lambda: job.loader is not None, 10)
    finally:
        w.close()
    assert job.cancelled and not w.reading._jobs
    job._thread.join(5)
    assert not job._thread.is_alive()


# --------------------------------------------------------------------------- 7. Ctrl+W while loading
def test_closing_the_study_while_a_series_loads_ends_the_loading_state(tmp_path, tmp_path_factory, monkeypatch):
    ser = _ct(tmp_path / "ser", n=3, size=16)
    w = open_window(tmp_path_factory, str(ser))
    try:
        big = _ct(tmp_path / "big", n=40, size=16)
        _slow_loader(monkeypatch, 0.05)
        w.open_path(str(big))
        assert wait_until(lambda: w.load_state == "loading", 20)
        w.a_close.trigger()  # Ctrl+W
        assert w.load_state == "idle" and w.doc.volume is None
        pump_until(lambda: False, 0.5)
        assert w.load_state == "idle" and not w.progress.isVisible()
    finally:
        w.close()


def test_opening_a_folder_that_is_gone_says_so_and_keeps_the_study(win, tmp_path):
    """A recent entry whose folder was deleted or moved: "no such file or folder", not "1 file(s)
    could not be read; the reasons are listed under Studies", and the study shown stays."""
    shown = win.current_key
    gone = tmp_path / "moved_away"
    win.open_path(str(gone))
    QApplication.processEvents()
    assert win.banner_text().startswith(f"Could not open {gone}: no such file or folder"), win.banner_text()
    assert "no such file or folder" in win.last_error
    assert win.current_key == shown and win.load_state == "done"


def test_save_view_asks_before_replacing_the_png_it_adds_the_suffix_for(win, monkeypatch, messages, tmp_path):
    """The dialog asks about the name typed ("myview"), not the one written ("myview.png"): an
    existing myview.png was replaced without a question."""
    old = tmp_path / "myview.png"
    old.write_bytes(b"the reader's earlier picture")
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        staticmethod(lambda *a, **k: asked.append(a[2]) or QMessageBox.No))
    _save_as(win, monkeypatch, tmp_path / "myview")
    assert asked and "myview.png already exists" in asked[0]
    assert old.read_bytes() == b"the reader's earlier picture" and messages == []
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.Yes))
    _save_as(win, monkeypatch, tmp_path / "myview")
    assert old.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # replaced when the reader says so


def test_recent_tooltip_shows_a_folder_name_as_written(qapp, tmp_path):
    from PySide6.QtGui import QTextDocument

    from imaging_assist_ui.main_window.recent import RecentStudies, WelcomePage

    d = tmp_path / "<img src='x.png' width=400><b>Study 2024 & more"
    d.mkdir()
    welcome = WelcomePage()
    rec = RecentStudies(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat), welcome)
    rec.add(str(d))
    rec.refresh_list()
    tip = welcome.recent_list.item(0).toolTip()
    doc = QTextDocument()
    doc.setHtml(tip) if tip.startswith("<qt") else doc.setPlainText(tip)
    assert "<" not in tip or tip.startswith("<qt")  # else Qt would take it for markup
    assert doc.toPlainText() == str(d), (tip, doc.toPlainText())
