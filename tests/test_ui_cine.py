"""Cine bar (offscreen): frame index advancing by timer ticks (fake timer: Cine.tick) and with
a real accelerated timer, loop vs bounce, frame step buttons and keys, frame rate from the
file (FrameTime, RecommendedDisplayFrameRate) or the default, +/- and [ ] rate keys, stop on a
series change; the frames on screen are the frames of the file (pixels)."""

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from _qt import pump_until  # noqa: E402

pytestmark = pytest.mark.gui

N = 12


def write_cine(path, n=N, frame_time=None, rate=None, series_uid=None, value0=0):
    """A US multi-frame file whose frame k is a flat image of value value0 + 20 k."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "CINE1", "CINE^TEST", "US"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20240101", 1, 1
    ds.SeriesDescription = os.path.basename(str(path))
    ds.Rows = ds.Columns = 32
    ds.NumberOfFrames = n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frame_time is not None:
        ds.FrameTime = frame_time
    if rate is not None:
        ds.RecommendedDisplayFrameRate = rate
    arr = (value0 + 20 * np.arange(n, dtype=np.uint16))[:, None, None] * np.ones((1, 32, 32), np.uint16)
    ds.PixelData = arr.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds.SeriesInstanceUID


@pytest.fixture(scope="module")
def cine_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cine")
    uids = {"ft": write_cine(root / "ft.dcm", frame_time=50.0),            # 20 fps from FrameTime
            "rdfr": write_cine(root / "rdfr.dcm", rate=24, value0=5),      # 24 fps, no FrameTime
            "none": write_cine(root / "none.dcm", n=5, value0=10)}         # no rate: default
    return root, uids


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, cine_dir):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg") / "s.ini"), QSettings.IniFormat))
    w.a_remember.setChecked(False)  # positions are tested in test_ui_hanging
    w.resize(1600, 1000)
    w.show()
    w.open_path(str(cine_dir[0]))
    assert pump_until(lambda: w.load_state == "done", 30), w.last_error
    yield w
    w.cine.pause()
    w.close()


def _load(win, uid):
    win.load_series(uid)
    assert pump_until(lambda: win.load_state == "done" and win.doc.series.uid == uid
                      and win.doc.volume.loaded.all(), 30), win.last_error


def _centre(win) -> int:
    v = win.view_area.active
    v.repaint()
    img = v.grab().toImage().convertToFormat(QImage.Format_Grayscale8)
    return img.pixelColor(img.width() // 2, img.height() // 2).red()


def test_rate_from_the_file_and_default(win, cine_dir):
    _, uids = cine_dir
    _load(win, uids["ft"])
    assert win.doc.volume.is_cine and win.doc.position[0] == 0  # a cine opens on frame 1
    assert win.cine.fps == pytest.approx(20.0) and win.cine.rate_source == "FrameTime"
    assert win.fps.value() == 20 and "FrameTime" in win.fps.toolTip()
    assert win.cine_bar.isVisible() and win.cine_bar.next_btn.isVisible()
    _load(win, uids["rdfr"])
    assert win.cine.fps == pytest.approx(24.0) and win.cine.rate_source == "RecommendedDisplayFrameRate"
    _load(win, uids["none"])
    assert win.cine.fps == pytest.approx(15.0) and win.cine.rate_source == "default"
    assert "default" in win.fps.toolTip()


def test_ticks_advance_loop_and_bounce(win, cine_dir):
    _, uids = cine_dir
    _load(win, uids["ft"])
    c = win.cine
    c.set_mode("loop")
    win.doc.set_index(0, 0)
    frames = []
    for _ in range(N + 2):
        c.tick()  # the fake timer: one step each
        frames.append(win.doc.position[0])
    assert frames == list(range(1, N)) + [0, 1, 2]  # loop: last -> first
    # the picture is the frame's (value 20 k: brighter with k under a fixed window)
    win.doc.set_window(128, 256)
    win.doc.set_index(0, 2)
    a = _centre(win)
    c.tick()
    assert win.doc.position[0] == 3 and _centre(win) > a
    win.cine_bar.mode.setCurrentIndex(1)
    win.cine_bar.mode.activated.emit(1)
    assert c.mode == "bounce"
    win.doc.set_index(0, N - 3)
    frames = []
    for _ in range(2 * N):
        c.tick()
        frames.append(win.doc.position[0])
    # up to the last frame, back down to the first, up again
    assert frames[:3] == [N - 2, N - 1, N - 2]
    assert frames[2:2 + N - 1] == list(range(N - 2, -1, -1)) and frames[N + 1] == 1
    assert max(frames) == N - 1 and min(frames) == 0
    c.set_mode("loop")


def test_real_timer_plays_and_pauses(win, cine_dir):
    _, uids = cine_dir
    _load(win, uids["ft"])
    win.doc.set_index(0, 0)
    win.fps.setValue(100)  # the reader's rate
    assert win.cine.fps == 100 and win.cine.rate_source == "user"
    win.play_btn.setChecked(True)
    assert win.cine.playing and win.cine_timer.isActive() and win.cine_timer.interval() == 10
    assert win.play_btn.text().startswith("❚❚")
    assert pump_until(lambda: win.doc.position[0] >= 4, 10)
    assert win.cine.fps == 100  # play does not put the file's rate back over the reader's
    win.a_play.trigger()  # Space
    assert not win.cine.playing and not win.play_btn.isChecked() and win.play_btn.text().startswith("▶")


def test_step_buttons_keys_and_rate_keys(win, cine_dir):
    _, uids = cine_dir
    _load(win, uids["ft"])
    v = win.view_area.active
    win.doc.set_index(0, 4)
    win.cine_bar.next_btn.click()
    assert win.doc.position[0] == 5
    win.cine_bar.prev_btn.click()
    win.cine_bar.prev_btn.click()
    assert win.doc.position[0] == 3
    win.doc.set_index(0, N - 1)
    win.cine_bar.next_btn.click()  # a step never wraps
    assert win.doc.position[0] == N - 1
    # while playing, → pauses and steps one frame
    win.doc.set_index(0, 2)
    assert win.cine.play()
    QTest.keyClick(v, Qt.Key_Right)
    assert not win.cine.playing and win.doc.position[0] == 3
    QTest.keyClick(v, Qt.Key_Left)
    assert win.doc.position[0] == 2
    # rate: ] faster, [ slower; + / - change it only while playing (they zoom otherwise)
    win.cine.set_fps(20, "FrameTime")
    QTest.keyClick(v, Qt.Key_BracketRight)
    assert win.cine.fps == 24 and win.fps.value() == 24
    QTest.keyClick(v, Qt.Key_BracketLeft)
    QTest.keyClick(v, Qt.Key_BracketLeft)
    assert win.cine.fps == 15
    zoom = v.zoom
    win.a_zoom_in.trigger()
    assert win.cine.fps == 15 and v.zoom > zoom
    win.cine.play()
    win.a_zoom_in.trigger()
    assert win.cine.fps == 20 and win.cine_timer.interval() == 50
    win.a_zoom_out.trigger()
    assert win.cine.fps == 15
    win.cine.pause()
    v.fit()


def test_playback_stops_when_the_series_changes(win, cine_dir):
    _, uids = cine_dir
    _load(win, uids["ft"])
    win.play_btn.setChecked(True)
    assert win.cine.playing
    _load(win, uids["rdfr"])
    assert not win.cine.playing and not win.play_btn.isChecked()
    assert win.cine.fps == pytest.approx(24.0)  # the new file's rate
    win.play_btn.setChecked(True)
    assert win.cine.playing
    win.set_layout("1x2")  # another layout: stops too
    assert not win.cine.playing
    win.set_layout("single")
