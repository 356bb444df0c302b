"""Hanging protocols never leave another study's or patient's series in a viewport (session 22).

Studies written from four CT phantom slices per series: patient PA has an MR study of 4 series
(2023-01) and a later MR study of 3 series (2023-06); patient PB has an MR study of 3 series, a
CR chest film (no prior film), a CT and a US image.  Checked: a 2×2 of three series says that
its fourth viewport stays empty and empties it (after another patient's 4-series study, and
after the same patient's); with the protocols off, another patient's series empties the
viewports showing the first patient's; a CR / CT / US study of another patient hung 1×1 or MPR
keeps none of the first patient's series in its hidden viewports (a later 2×2 shows only its
own); a series of another patient dropped beside the current one by the reader stays with its
note while that patient's other series are opened."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings  # noqa: E402

from _qt import pump_until  # noqa: E402
from conftest import CT_PHANTOM, need  # noqa: E402
from imaging_assist import hanging  # noqa: E402
from imaging_assist.dicom.index import PatientInfo, StudyIndex, StudyInfo  # noqa: E402
from test_hanging import _ser, store  # noqa: E402, F401

SOP = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2", "CR": "1.2.840.10008.5.1.4.1.1.1",
       "US": "1.2.840.10008.5.1.4.1.1.6.1"}
# (folder prefix, patient ID, name, study date, modality, body part, series, slices per series)
STUDIES = [("PA_mr", "PA", "ALPHA^ANN", "20230101", "MR", "HEAD", 4, 4),
           ("PA_mr2", "PA", "ALPHA^ANN", "20230601", "MR", "HEAD", 3, 4),
           ("PB_mr", "PB", "BETA^BOB", "20230202", "MR", "HEAD", 3, 4),
           ("PB_cr", "PB", "BETA^BOB", "20230203", "CR", "CHEST", 1, 1),
           ("PB_ct", "PB", "BETA^BOB", "20230204", "CT", "HEAD", 1, 4),
           ("PB_us", "PB", "BETA^BOB", "20230205", "US", "", 1, 1)]


def test_a_2x2_of_three_series_says_its_last_viewport_stays_empty(store):  # noqa: F811
    mr = [_ser(f"mr{i}", "MR", f"T{i}", 20, "BRAIN") for i in range(3)]
    idx = StudyIndex("/", patients=[PatientInfo("P2", "C^D", studies=[StudyInfo("mr", date="20240101", series=mr)])])
    h = hanging.plan(store.match("MR", "BRAIN"), idx, mr[1])
    assert h.layout == "2x2" and h.keys == ["mr1", "mr0", "mr2"]
    assert "only 3 series to show: viewport 4 stays empty" in h.notes
    mr.append(_ser("mr3", "MR", "T3", 20, "BRAIN"))  # four series fill the grid: nothing to say
    assert not hanging.plan(store.match("MR", "BRAIN"), idx, mr[1]).notes


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    import pydicom
    from pydicom.uid import generate_uid
    root = tmp_path_factory.mktemp("hang22")
    files = sorted(need(CT_PHANTOM).glob("*.dcm"), key=lambda p: int(p.stem[1:]))[60:64]
    for prefix, pid, name, date, mod, bp, nser, nsl in STUDIES:
        study = generate_uid()
        for s in range(nser):
            series, d = generate_uid(), root / f"{prefix}_s{s + 1}"
            d.mkdir()
            for n, f in enumerate(files[:nsl]):
                ds = pydicom.dcmread(f)
                ds.Modality, ds.SOPClassUID = mod, SOP[mod]
                ds.file_meta.MediaStorageSOPClassUID = SOP[mod]
                if mod != "CT":
                    for kw in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
                        if kw in ds:
                            delattr(ds, kw)
                ds.PatientID, ds.PatientName, ds.BodyPartExamined, ds.StudyDate = pid, name, bp, date
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.SeriesNumber, ds.InstanceNumber = s + 1, n + 1
                ds.SeriesDescription = f"{prefix} {s + 1}"
                ds.save_as(d / f"{n}.dcm")
    return root


@pytest.fixture(scope="module")
def window(studies, tmp_path_factory):
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow
    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("s") / "s.ini"), QSettings.IniFormat))
    w.resize(1600, 1000)
    w.show()
    w.open_path(str(studies))
    assert pump_until(lambda: w.load_state == "done" and w.doc.volume is not None, 60), w.last_error
    yield w
    w.close()


@pytest.fixture()
def win(window):
    """The window with the protocols on, hanging the next series shown as a study opened anew."""
    window.a_hang_on.setChecked(True)
    window.hanging.last = None
    return window


def _key(w, desc):
    return next(s.key for s in w.loading.index.image_series() if s.description == desc)


def _show(w, desc):
    """Open series ``desc`` in the first viewport, as a click in the browser; wait for all."""
    key = _key(w, desc)
    w.load_series(key)
    assert pump_until(lambda: w.load_state == "done" and w.current_key == key and w.doc.volume is not None
                      and w.doc.volume.loaded.all(), 60), w.last_error
    assert pump_until(lambda: w.reading.loading_done(), 60)


def _shown(w, visible=True):
    """The series description per grid viewport after the first ('' when empty)."""
    g = w.view_area.grid
    cells = g.visible_cells() if visible else g.cells
    return [c.doc.series.description if c.doc.volume is not None else "" for c in cells[1:]]


def test_another_patients_study_of_three_series_empties_the_fourth_viewport(win):
    _show(win, "PA_mr 1")
    assert win.view_area.layout_mode == "2x2" and _shown(win) == ["PA_mr 2", "PA_mr 3", "PA_mr 4"]
    _show(win, "PB_mr 1")
    assert win.view_area.layout_mode == "2x2" and _shown(win) == ["PB_mr 2", "PB_mr 3", ""]
    msg = win.statusBar().currentMessage()
    assert msg.startswith("Hanging protocol: MR") and "only 3 series to show" in msg, msg
    assert not any("another patient" in c.link_note for c in win.view_area.grid.cells)


def test_the_same_patients_next_study_of_three_series_empties_the_fourth_viewport(win):
    _show(win, "PA_mr 1")
    assert _shown(win) == ["PA_mr 2", "PA_mr 3", "PA_mr 4"]
    _show(win, "PA_mr2 1")  # a later study of the same patient: the first study's series 4 must go
    assert win.view_area.layout_mode == "2x2" and _shown(win) == ["PA_mr2 2", "PA_mr2 3", ""]
    assert "only 3 series to show" in win.statusBar().currentMessage()


def test_without_hanging_protocols_another_patient_empties_the_viewports(win):
    _show(win, "PA_mr 1")
    win.a_hang_on.setChecked(False)
    assert _shown(win) == ["PA_mr 2", "PA_mr 3", "PA_mr 4"]
    _show(win, "PB_mr 1")
    assert win.view_area.layout_mode == "2x2" and _shown(win, visible=False) == ["", "", ""]


@pytest.mark.parametrize("desc, layout", [("PB_cr 1", "single"), ("PB_ct 1", "mpr"), ("PB_us 1", "single")])
def test_a_study_hung_1x1_or_mpr_keeps_no_series_of_another_patient(win, desc, layout):
    _show(win, "PA_mr 1")
    assert _shown(win) == ["PA_mr 2", "PA_mr 3", "PA_mr 4"]
    _show(win, desc)
    assert win.view_area.layout_mode == layout and _shown(win, visible=False) == ["", "", ""]
    win.set_layout("2x2")  # the reader's grid is filled from this patient's studies, never PA's
    assert pump_until(lambda: win.reading.loading_done(), 60)
    shown = _shown(win)
    assert shown and not any(d.startswith("PA") for d in shown), shown
    assert not any("another patient" in c.link_note for c in win.view_area.grid.visible_cells())


def test_a_series_of_another_patient_dropped_by_the_reader_stays_with_its_note(win):
    _show(win, "PB_mr 1")
    g = win.view_area.grid
    assert _shown(win) == ["PB_mr 2", "PB_mr 3", ""]
    g.seriesDropped.emit(3, _key(win, "PA_mr 4"))  # the reader drags PA's series into viewport 4
    assert pump_until(lambda: win.reading.loading_done() and g.cells[3].doc.volume is not None, 60)
    assert g.cells[3].link_note.startswith("another patient (ID PA)"), g.cells[3].link_note
    _show(win, "PB_mr 2")  # another series of the same patient (and study) in the first viewport
    assert _shown(win)[2] == "PA_mr 4" and g.cells[3].link_note.startswith("another patient (ID PA)")


@pytest.mark.parametrize("desc", ["PB_cr 1", "PB_ct 1", "PB_us 1"])
def test_the_status_bar_never_names_the_previous_studys_protocol(win, desc):
    """A study hung plainly 1×1 says nothing, and must not leave the previous study's
    "Hanging protocol: MR ..." in the status bar (the US screenshot showed "CT: axial + MPR")."""
    _show(win, "PB_mr 1")
    assert win.statusBar().currentMessage().startswith("Hanging protocol: MR")
    _show(win, desc)
    msg = win.statusBar().currentMessage()
    applied = win.hanging.applied
    assert msg == "" or (applied is not None and msg.startswith(f"Hanging protocol: {applied.protocol.name}")), msg
