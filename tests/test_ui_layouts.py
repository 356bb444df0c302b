"""Reading layouts on the real CT phantom (offscreen): 1×2 / 2×2 grids with a series per
viewport, a prior of the same patient opened beside the current study, linked scrolling by
position in mm across different slice spacings and offsets, reference lines where the planes
meet, the first image on opening, reading mode (F11).

The studies are built from the phantom's files in a temp folder: the "current" study is 60
slices 1 mm apart (InstanceNumbers reversed, as a chest CT scanned head first), the "prior" (an
older study of the same PatientID and Frame of Reference) every third slice from slice 5
(3 mm apart, 4 mm offset); the current study also has a series in another Frame of Reference
and a 4 mm series."""

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QMimeData, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QDropEvent, QImage  # noqa: E402

from _qt import open_window, pump_until  # noqa: E402
from conftest import CT_PHANTOM, need  # noqa: E402
from imaging_assist import viewing  # noqa: E402
from imaging_assist.volume import Volume  # noqa: E402

pytestmark = pytest.mark.gui

N_CUR = 60


def _write_studies(root):
    import pydicom
    from pydicom.uid import generate_uid
    files = sorted(need(CT_PHANTOM).glob("*.dcm"), key=lambda p: int(p.stem[1:]))[:N_CUR]
    study_cur, study_prior = generate_uid(), generate_uid()
    other_for = generate_uid()
    specs = [  # (folder, study, series number, description, files, FoR or None, study date, reverse numbers)
        ("cur", study_cur, 2, "CURRENT 1MM", files, None, "20240301", True),
        ("prior", study_prior, 2, "PRIOR 3MM", files[4::3], None, "20220115", False),
        ("otherfor", study_cur, 3, "OTHER FOR 2MM", files[1::2], other_for, "20240301", False),
        ("thick", study_cur, 4, "THICK 4MM", files[2::4], None, "20240301", False),
    ]
    keys = {}
    for folder, study, num, desc, fs, for_uid, date, reverse in specs:
        d = root / folder
        d.mkdir()
        series_uid = generate_uid()
        for n, f in enumerate(fs):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber, ds.SeriesDescription, ds.StudyDate = num, desc, date
            ds.StudyDescription = "PRIOR HEAD" if folder == "prior" else "CURRENT HEAD"
            ds.InstanceNumber = (len(fs) - n) if reverse else n + 1
            if for_uid:
                ds.FrameOfReferenceUID = for_uid
            ds.save_as(d / f"{n:03d}.dcm")
        keys[folder] = series_uid
    return keys


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("reading")
    return root, _write_studies(root)


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, studies):
    root, keys = studies
    w = open_window(tmp_path_factory, str(root), size=(1920, 1080))
    if w.doc.series.uid != keys["cur"]:
        w.load_series(keys["cur"])
        assert pump_until(lambda: w.load_state == "done" and w.doc.series.uid == keys["cur"], 30)
    assert pump_until(lambda: w.doc.volume.loaded.all(), 30)
    yield w
    w.close()


def _wait_cells(win, n):
    g = win.view_area.grid
    ok = pump_until(lambda: win.reading.loading_done() and all(
        c.doc.volume is not None and c.doc.volume.loaded.all() for c in g.visible_cells()[:n]), 60)
    assert ok, [c.doc.volume is not None for c in g.visible_cells()]


def grab(view) -> np.ndarray:
    img = view.grab().toImage().convertToFormat(QImage.Format_RGB888)
    w, h = img.width(), img.height()
    arr = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, :w * 3].reshape(h, w, 3).copy()


def test_series_opens_on_its_first_image(win, studies):
    # InstanceNumber 1 of the current series is its top (most superior) slice: k = 59
    assert int(win.doc.volume.headers[N_CUR - 1].get("InstanceNumber")) == 1
    assert win.doc.position[0] == N_CUR - 1
    # its place in the stack (position order) and its own number, as a PACS cites it
    assert win.view_area.single.annotation_text()["tr"][-1] == f"Im {N_CUR} / {N_CUR}  (Inst 1)"


def test_prior_listed_opened_beside_and_scrolls_by_mm(win, studies):
    root, keys = studies
    r = win.reading
    assert r.priors_dock.isVisible()
    assert r.priors.list.count() == 1 and "2022-01-15" in r.priors.list.item(0).text()
    r.priors.button.click()
    assert win.view_area.layout_mode == "1x2"
    _wait_cells(win, 2)
    g = win.view_area.grid
    cur, prior = g.cells[0], g.cells[1]
    assert prior.doc.series.uid == keys["prior"] and prior.doc.volume.n_slices == 19
    # each viewport its own corner text (study date, series)
    tl0, tl1 = cur.view.annotation_text()["tl"], prior.view.annotation_text()["tl"]
    assert any("2024-03-01" in s for s in tl0) and any("2022-01-15" in s for s in tl1)
    assert "PRIOR 3MM" in prior.view.annotation_text()["tr"][0]
    pos_c, pos_p = win.doc.volume.slice_positions, prior.doc.volume.slice_positions
    assert np.allclose(np.diff(pos_p), 3.0) and pos_p[0] - pos_c[0] == pytest.approx(4.0)
    # scroll the current with the keyboard: the prior lands on the slice nearest in mm
    cur.view.setFocus()
    for k in (10, 11, 12, 30, 45):
        win.doc.set_index(0, k - 1)
        from PySide6.QtTest import QTest
        QTest.keyClick(cur.view, Qt.Key_Down)
        assert win.doc.position[0] == k
        kp = prior.doc.position[0]
        assert kp == int(np.argmin(np.abs(pos_p - pos_c[k])))
        assert abs(pos_p[kp] - pos_c[k]) <= 1.5 + 1e-6
        assert prior.view.annotation_text()["bl"][0] == f"Pos {pos_p[kp]:.1f} mm"
        assert prior.gap_note == ""  # within half the prior's 3 mm step of its slice
    # below the prior's first slice (4 mm in): it shows its nearest slice and says how far it is
    win.doc.set_index(0, 0)
    assert prior.doc.position[0] == 0
    assert prior.gap_note == "no slice at this position: the nearest shown, 4.0 mm away"
    assert cur.gap_note == ""
    win.doc.set_index(0, 4)
    assert prior.gap_note == ""
    # and the other way round: scrolling the prior moves the current to the same mm
    prior.doc.set_index(0, 7)
    assert prior.gap_note == "" and cur.gap_note == ""
    assert pos_c[win.doc.position[0]] == pytest.approx(pos_p[7], abs=0.5)
    # parallel axial planes: no reference line between them
    assert g.reference_segments(prior.view) == []


def test_drag_a_series_into_a_viewport(win, studies):
    root, keys = studies
    win.set_layout("1x2")
    g = win.view_area.grid
    md = QMimeData()
    from imaging_assist_ui.radiology.layouts import SERIES_MIME as MIME
    # the browser tree puts the series key on a drag
    tree = win.browser.tree
    from imaging_assist_ui.radiology.browser import SERIES_ROLE
    items = [it for it in _items(tree) if it.data(0, SERIES_ROLE) == keys["thick"]]
    assert items and bytes(tree.mimeData(items).data(MIME)).decode() == keys["thick"]
    md.setData(MIME, keys["thick"].encode())
    cell = g.cells[1]
    ev = QDropEvent(QPointF(20, 20), Qt.CopyAction, md, Qt.LeftButton, Qt.NoModifier)
    cell.dropEvent(ev)
    assert ev.isAccepted()
    _wait_cells(win, 2)
    assert cell.doc.series.uid == keys["thick"] and "THICK 4MM" in cell.view.annotation_text()["tr"][0]
    # put the prior back for the next tests
    win.reading.load_into(1, keys["prior"])
    _wait_cells(win, 2)


def _items(tree):
    out = []
    stack = [tree.topLevelItem(i) for i in range(tree.topLevelItemCount())]
    while stack:
        it = stack.pop()
        out.append(it)
        stack.extend(it.child(i) for i in range(it.childCount()))
    return out


def test_2x2_shows_four_series_and_other_frames_are_not_linked(win, studies):
    root, keys = studies
    assert [a.shortcut().toString() for a in (win.a_single, win.a_1x2, win.a_2x2, win.a_mpr)] == \
        ["Ctrl+1", "Ctrl+2", "Ctrl+4", "Ctrl+3"]
    assert win.reading.layout_button.menu().actions()[:4] == [win.a_single, win.a_1x2, win.a_2x2, win.a_mpr]
    assert win.a_hang_save in win.reading.layout_button.menu().actions()  # save as hanging protocol
    win.a_2x2.trigger()
    assert win.view_area.layout_mode == "2x2" and win.a_2x2.isChecked()
    assert win.reading.layout_button.text() == "Layout 2×2"
    _wait_cells(win, 4)
    g = win.view_area.grid
    uids = [c.doc.series.uid for c in g.visible_cells()]
    assert len(set(uids)) == 4 and set(uids) == set(keys.values())
    for c in g.visible_cells():
        c.view.repaint()
        img = grab(c.view)
        h, w = img.shape[:2]
        assert img[h // 3: 2 * h // 3, w // 3: 2 * w // 3].max() > 60  # an image, not an empty black cell
        assert c.doc.series.description in c.view.annotation_text()["tr"][0]
    other = next(c for c in g.visible_cells() if c.doc.series.uid == keys["otherfor"])
    thick = next(c for c in g.visible_cells() if c.doc.series.uid == keys["thick"])
    assert "different frames of reference: not linked" in other.link_note
    before = other.doc.position[0]
    win.doc.set_index(0, 20)
    win.doc.set_index(0, 40)
    assert other.doc.position[0] == before  # no automatic linking across frames of reference
    pos_c, pos_t = win.doc.volume.slice_positions, thick.doc.volume.slice_positions
    assert abs(pos_t[thick.doc.position[0]] - pos_c[40]) <= 2.0 + 1e-6
    # linked by hand: follows, keeping its offset, and says why it may mislead
    g._on_activated(other.view)
    win.reading.toggle_manual_link(True)
    assert "need not be the same anatomy" in other.link_note
    pos_o = other.doc.volume.slice_positions
    start_gap = pos_o[other.doc.position[0]] - pos_c[win.doc.position[0]]
    g._on_activated(g.cells[0].view)
    k = 50 if start_gap < 0 else 5  # stays inside the other series
    win.doc.set_index(0, k)
    assert pos_o[other.doc.position[0]] - pos_c[k] == pytest.approx(start_gap, abs=1.0 + 1e-6)
    # the series linked by hand scrolls: the current follows with the same gap (each keeps its
    # own distance along its own normal: tests/test_viewing.py checks a feet-first prior)
    ko = other.doc.position[0] + (-2 if other.doc.position[0] >= 2 else 2)
    other.doc.set_index(0, ko)
    assert pos_o[ko] - pos_c[win.doc.position[0]] == pytest.approx(start_gap, abs=1.0 + 1e-6)
    g.set_manual_link(other.number, False)


def _sagittal_from(vol: Volume) -> Volume:
    """The current volume resampled (transposed) into sagittal slices, same patient space."""
    a = vol.array
    nk, nj, ni = a.shape
    sag = np.ascontiguousarray(a[::-1, :, ::-1].transpose(2, 0, 1))  # [s, r, c] = a[nk-1-r, c, ni-1-s]
    sag = np.ascontiguousarray(sag.transpose(0, 1, 2))
    dx, dy, dz = vol.spacing
    direction = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)  # columns: +y (P), -z (I), -x (R)
    origin = vol.index_to_lps(ni - 1, 0, nk - 1)
    out = Volume(sag, spacing=(dy, dz, dx), origin=tuple(origin), direction=direction, modality="CT", units="HU")
    out.slice_positions = np.array([float(np.asarray(origin) @ out.normal) + s * dx for s in range(ni)])
    for_uid = viewing.frame_of_reference(vol)
    out.headers = [{"FrameOfReferenceUID": for_uid, "SeriesNumber": 90, "InstanceNumber": s + 1}
                   for s in range(ni)]
    out.description = "SAGITTAL (resampled in the test)"
    return out


def test_reference_line_where_the_planes_intersect(win, studies):
    win.set_layout("2x2")
    _wait_cells(win, 4)
    g = win.view_area.grid
    vol = win.doc.volume
    sag = _sagittal_from(vol)
    cell = g.cells[3]
    cell.doc.set_volume(sag)
    # the sagittal voxel grid really is the same patient space
    s, r, c = 100, 7, 200
    assert np.allclose(sag.index_to_lps(c, r, s), vol.index_to_lps(vol.array.shape[2] - 1 - s, c, N_CUR - 1 - r))
    assert sag.array[s, r, c] == vol.array[N_CUR - 1 - r, c, vol.array.shape[2] - 1 - s]
    g._on_activated(g.cells[0].view)
    k = 21
    win.doc.set_index(0, k)
    (u0, v0), (u1, v1) = g.reference_segments(cell.view)[0]
    assert v0 == pytest.approx(N_CUR - 1 - k) and v1 == pytest.approx(N_CUR - 1 - k)  # the row at z of slice k
    assert sorted((u0, u1)) == pytest.approx([-0.5, sag.array.shape[2] - 0.5])
    # drawn there: reference colour on that row of the rendered view, not 12 px away
    cell.view.repaint()
    img = grab(cell.view).astype(int)
    y = int(round(cell.view.uv_to_screen(0, N_CUR - 1 - k).y()))
    xs = [int(cell.view.uv_to_screen(u, 0).x()) for u in (60, 200, 400)]

    def yellow(yy):
        return sum(1 for x in xs if any(img[yy + d, x, 0] > 200 and img[yy + d, x, 1] > 150 and img[yy + d, x, 2] < 150
                                        for d in (-1, 0, 1)))
    assert yellow(y) == 3 and yellow(y + 12) == 0 and yellow(y - 12) == 0
    # the other way: the sagittal slice s cuts the axial view along the column x = ni-1-s
    g._on_activated(cell.view)
    cell.doc.set_index(0, 300)
    (u0, v0), (u1, v1) = g.reference_segments(g.cells[0].view)[0]
    assert u0 == pytest.approx(vol.array.shape[2] - 1 - 300) and u1 == pytest.approx(u0)
    g._on_activated(g.cells[0].view)


def test_another_patient_beside_is_flagged(win):
    from types import SimpleNamespace
    win.set_layout("1x2")
    g = win.view_area.grid
    c = g.cells[1]
    assert c.doc.volume is not None and "another patient" not in c.link_note
    keep = c.doc.patient
    c.doc.patient = SimpleNamespace(id="SOMEONE-ELSE", name="X^Y", sex="", birth_date="")
    g._relink()
    assert c.link_note.startswith("another patient (ID SOMEONE-ELSE)")
    c.doc.patient = keep
    g._relink()
    assert "another patient" not in c.link_note
    # window presets act on the active viewport's series only
    g._on_activated(c.view)
    w_main = win.doc.window
    assert win.apply_preset_name("Bone")
    assert c.doc.window.name == "Bone" and win.doc.window is w_main
    assert win.preset_combo.currentText().startswith("Custom") or "Bone" in win.preset_combo.currentText()
    g._on_activated(g.cells[0].view)
    assert win.view_area.active is g.cells[0].view and win.presets.doc is win.doc
    # T (annotations off) holds for every viewport
    win.a_annot.setChecked(False)
    assert not c.doc.show_annotations and not win.doc.show_annotations
    win.a_annot.setChecked(True)
    assert c.doc.show_annotations


def test_reading_mode_leaves_only_images(win):
    win.set_layout("1x2")
    win.reading.priors_dock.show()
    assert not win.toolbar.isHidden() and win.a_full.shortcut().toString() == "F11"
    win.a_full.trigger()  # F11
    assert win.reading.reading_mode
    for d in (win.browser_dock, win.layers_dock, win.measure_dock, win.tags_dock, win.reading.priors_dock):
        assert d.isHidden()
    assert win.toolbar.isHidden() and win.menuBar().isHidden() and win.statusBar().isHidden()
    assert win.slider_bar.isHidden()
    # the status bar's "Not for clinical use" stays on screen, one line under the images (session 23)
    assert win.reading_note.isVisible() and win.reading_note.text() == "Not for clinical use"
    v = win.view_area.grid.cells[0].view
    assert v.isVisible() and v.annotation_text()["tl"]  # the corner text stays
    win.a_full.trigger()
    assert not win.reading.reading_mode and win.reading_note.isHidden()
    assert not win.browser_dock.isHidden() and not win.toolbar.isHidden() and not win.reading.priors_dock.isHidden()


def test_empty_docks_hide_themselves(win, studies):
    root, keys = studies
    win.layers_dock.show()
    win.measure_dock.show()
    win.load_series(keys["thick"])
    assert pump_until(lambda: win.load_state == "done" and win.doc.series.uid == keys["thick"], 30)
    assert pump_until(lambda: win.layers_dock.isHidden() and win.measure_dock.isHidden(), 5)


def test_other_folder_empties_the_other_viewports(win, studies):
    root, keys = studies
    win.set_layout("1x2")
    g = win.view_area.grid
    assert g.cells[1].doc.volume is not None
    win.open_path(str(need(CT_PHANTOM)))  # another index: nothing of the old one may stay beside it
    assert pump_until(lambda: win.load_state == "done" and win.doc.volume is not None
                      and win.doc.series.uid not in keys.values(), 30)
    pump_until(lambda: win.reading.loading_done(), 30)
    for c in g.cells[1:]:
        assert c.doc.series is None or win.loading.index.find_series(c.doc.series.key) is c.doc.series
