"""CT lung nodules in the viewer (issue 21): Shift+click / N in any plane of the real LIDC slab runs
the engine's analyze_at on a worker and shows the mask on all three planes, a list entry that jumps,
and "no nodule found" for a click outside the body.  Real data, real engine, real models."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtTest import QTest

from _qt import open_window, wait_until
from conftest import SHARED, need

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"
XML = SLAB / "annotations_69.xml"


@pytest.fixture(scope="module")
def win(tmp_path_factory):
    need(XML)
    w = open_window(tmp_path_factory, str(SLAB), size=(1600, 1000))
    w.set_layout("mpr")
    assert w.view_area.layout_mode == "mpr"
    yield w
    w.close()


@pytest.fixture(scope="module")
def reader_centre(win):
    """The LIDC-IDRI-0001 nodule's centre (LPS mm) from the readers' contours (>= 2 of 4)."""
    from imaging_assist.nodules import lidc_xml

    vol = win.doc.volume
    nods = lidc_xml.load_for_volume(XML, vol)
    masks = [lidc_xml.consensus_mask(n) for n in nods]
    big = masks[int(np.argmax([m.sum() for m in masks]))]
    assert big.sum() > 500, "the slab's large nodule is not in the readers' XML"
    return np.asarray(lidc_xml.centre_lps(big, vol), float), big


def _views(w):
    return {v.plane.name: v for v in w.view_area.mpr_views}


def _screen_point(w, view, lps) -> QPoint:
    """Put the view on the point's slice (as a reader scrolling there) and return the widget
    point over it."""
    kji = w.nodules.lps_to_kji(lps)
    w.doc.set_position(kji)
    QTest.qWait(20)
    u, v, _ = view.plane.from_voxel(kji, w.doc.shape3())
    return view.uv_to_screen(u, v).toPoint()


def _analyse(w, view, pos, key=False):
    n0 = len(w.nodules.history)
    done = []
    w.nodules.noneFound.connect(done.append)
    w.nodules.failed.connect(done.append)
    try:
        if key:
            QTest.mouseMove(view, pos)
            QTest.keyClick(view, Qt.Key_N)
        else:
            QTest.mouseClick(view, Qt.LeftButton, Qt.ShiftModifier, pos)
        assert w.nodules.busy or len(w.nodules.history) > n0 or done, "the click started nothing"
        assert wait_until(lambda: not w.nodules.busy, 120), "the analysis did not finish"
    finally:
        w.nodules.noneFound.disconnect(done.append)
        w.nodules.failed.disconnect(done.append)
    assert not any(t.startswith("Nodule analysis failed") for t in done), done
    return w.nodules.history[-1] if len(w.nodules.history) > n0 else None


def test_click_in_axial_and_coronal_gives_the_same_nodule_without_blocking(win, reader_centre, monkeypatch):
    import imaging_assist_ui.radiology.nodules as nod_mod

    c, _ = reader_centre
    views = _views(win)
    threads, spans = [], []
    real = nod_mod.analyze

    def recorded(*a, **k):  # wraps the real engine call: which thread runs it, and when
        threads.append(threading.current_thread())
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spans.append((t, time.perf_counter()))

    monkeypatch.setattr(nod_mod, "analyze", recorded)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    a = _analyse(win, views["axial"], _screen_point(win, views["axial"], c))
    timer.stop()
    assert a is not None, win.nodules.last_line
    assert threads and threads[0] is not threading.main_thread(), "analyze_at ran on the GUI thread"
    # the event loop kept turning while the engine ran (a GUI-thread run would let no tick through;
    # counted, not timed, so that a loaded machine does not make it flaky)
    t0, t1 = spans[0]
    during = [t for t in ticks if t0 < t < t1]
    assert len(during) >= 3, f"only {len(during)} timer ticks during a {t1 - t0:.2f} s analysis"

    b = _analyse(win, views["coronal"], _screen_point(win, views["coronal"], c))
    assert b is not None, win.nodules.last_line
    assert b.id == a.id and len(win.nodules.nodules()) == 1, "a second click on it must not add a nodule"
    sp = np.asarray(win.doc.volume.spacing, float)[::-1]  # (k, j, i) voxel size in mm
    # each click reached the engine as the patient point under the mouse, whichever plane
    # (screen-pixel rounding in plane and the shown slice through it stay within a voxel)
    for r in (a, b):
        err = np.abs(np.asarray(r.result.point_lps, float) - c)
        assert np.all(err <= np.asarray(win.doc.volume.spacing, float)), (r.result.point_lps, c)
    d = np.abs(np.subtract(a.center_kji, b.center_kji)) * sp
    assert np.all(d <= sp + 1e-6), f"centres differ by {d} mm (voxel {sp})"
    # the centre is the readers' nodule
    rc = np.asarray(win.nodules.lps_to_kji(c))
    assert np.all(np.abs(rc - np.asarray(b.center_kji)) * sp <= 5.0), (rc, b.center_kji)
    lines = win.nodules.entry_lines()
    text = "\n".join(lines)
    assert lines[0].startswith(b.id) and "mm³" in lines[0] and "×" in lines[0], lines
    assert "HU" in text and "malignancy likelihood" in text, lines
    assert ("→" in text) or ("decision withheld: outside what this model was trained on" in text), lines
    assert "not for clinical use" in win.nodules.panel.disclaimer.text().lower()


def _grab(view) -> np.ndarray:
    view.repaint()
    img = view.grab().toImage().convertToFormat(view.grab().toImage().Format.Format_RGB32)
    a = np.frombuffer(img.constBits(), np.uint8, img.sizeInBytes()).reshape(img.height(), img.bytesPerLine())
    return a[:, : img.width() * 4].reshape(img.height(), img.width(), 4)[..., :3].copy()


def test_mask_is_drawn_on_all_three_planes(win, reader_centre):
    c, _ = reader_centre
    if not win.nodules.nodules():
        _analyse(win, _views(win)["axial"], _screen_point(win, _views(win)["axial"], c))
    n = win.nodules.nodules()[0]
    layer = win.nodules.mask_layer()
    assert layer is not None and layer.kind == "label" and layer.visible
    assert int((layer.array == n.number).sum()) == int(n.mask.sum()) > 0
    heat = win.nodules.heat_layer()
    if heat is not None:
        heat.visible = False  # look at the mask alone
    win.nodules.jump_to(n)
    QTest.qWait(30)
    shape3 = win.doc.shape3()
    for name, view in _views(win).items():
        layer.visible = True
        with_mask = _grab(view)
        layer.visible = False
        without = _grab(view)
        layer.visible = True
        diff = np.any(with_mask != without, axis=2)
        assert diff.sum() > 20, f"{name}: the nodule's mask is not drawn"
        # and it is drawn where the nodule is on that plane
        kk, jj, ii = np.nonzero(layer.array == n.number)
        on = np.round([n.center_kji[view.plane.axis]]).astype(int)[0]
        sel = (kk, jj, ii)[view.plane.axis] == on
        pts = [view.plane.from_voxel((k, j, i), shape3) for k, j, i in zip(kk[sel], jj[sel], ii[sel])]
        scr = np.array([[view.uv_to_screen(u, v).x(), view.uv_to_screen(u, v).y()] for u, v, _ in pts])
        ys, xs = np.nonzero(diff)
        pad = 3 * view.zoom * max(view.spacing2d()) + 3
        assert xs.min() >= scr[:, 0].min() - pad and xs.max() <= scr[:, 0].max() + pad, name
        assert ys.min() >= scr[:, 1].min() - pad and ys.max() <= scr[:, 1].max() + pad, name
    if heat is not None and not getattr(heat, "flag", ""):
        heat.visible = True
    # only the nodule's bounding box is kept (no full-grid mask or heat map per nodule)
    assert n.result.mask is None and n.result.heatmap is None
    assert n.mask.shape == tuple(s.stop - s.start for s in n.box) and n.mask.size < np.prod(shape3) / 100


def _axes_layer(w):
    return next((l for l in w.doc.layers if getattr(l, "nodule_layer", "") == "axes"), None)


def test_diameters_are_drawn_where_they_were_measured(win, reader_centre):
    """The long and short axis as lines on the slice of largest area (the calipers a reader
    checks a Lung-RADS size by), as long as the numbers the list gives."""
    c, _ = reader_centre
    if not win.nodules.nodules():
        _analyse(win, _views(win)["axial"], _screen_point(win, _views(win)["axial"], c))
    n = win.nodules.nodules()[0]
    layer = _axes_layer(win)
    assert layer is not None and layer.name == "Nodule diameters" and len(layer.shapes) == 2
    vol = win.doc.volume
    k = n.result.measurements["largest_slice"]
    sx, sy = vol.spacing[0], vol.spacing[1]
    for shape, want in zip(layer.shapes, (n.result.long_axis_mm, n.result.short_axis_mm)):
        assert np.allclose(shape.points[:, 0], k, atol=1e-6)  # on the slice of largest area
        d = shape.points[1] - shape.points[0]
        assert np.hypot(d[1] * sy, d[2] * sx) == pytest.approx(want, abs=0.01)
    assert layer.shapes[0].label == [f"{n.id}  {n.result.long_axis_mm:.1f} × {n.result.short_axis_mm:.1f} mm"]
    assert [s.text() for s in layer.shapes] == [f"{n.id} long axis {n.result.long_axis_mm:.1f} mm",
                                                f"{n.id} short axis {n.result.short_axis_mm:.1f} mm"]
    tree = win.layers_panel.tree
    top = next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount())
               if tree.topLevelItem(i).text(0).startswith("Nodule diameters"))
    assert [top.child(i).text(0) for i in range(top.childCount())] == \
        [f"{s.text()}   (image {k + 1})" for s in layer.shapes]
    # perpendicular, as measured
    a, b = (s.points[1] - s.points[0] for s in layer.shapes)
    assert abs(a[1] * sy * b[1] * sy + a[2] * sx * b[2] * sx) < 1e-3 * np.hypot(a[1] * sy, a[2] * sx) * np.hypot(b[1] * sy, b[2] * sx) + 1e-6
    ax = _views(win)["axial"]
    win.doc.set_position((k, int(n.center_kji[1]), int(n.center_kji[2])))
    QTest.qWait(20)
    drawn = _grab(ax)
    layer.visible = False
    hidden = _grab(ax)
    layer.visible = True
    diff = np.any(drawn != hidden, axis=2)
    assert diff.sum() > 20
    ends = np.array([[ax.uv_to_screen(p[2], p[1]).x(), ax.uv_to_screen(p[2], p[1]).y()]
                     for s in layer.shapes for p in s.points])
    ys, xs = np.nonzero(diff)
    near = (xs >= ends[:, 0].min() - 4) & (xs <= ends[:, 0].max() + 4) & (ys >= ends[:, 1].min() - 4) & (ys <= ends[:, 1].max() + 4)
    assert near.sum() > 20  # the lines where the ends are (the label box lies beside them)


def test_list_entry_jumps_every_plane_to_the_centre(win, reader_centre):
    c, _ = reader_centre
    if not win.nodules.nodules():
        _analyse(win, _views(win)["axial"], _screen_point(win, _views(win)["axial"], c))
    n = win.nodules.nodules()[0]
    win.doc.set_position((0, 0, 0))
    lst = win.nodules.list
    win.nodules.dock.show()
    win.nodules.dock.raise_()
    QTest.qWait(20)
    item = lst.item(0)
    rect = lst.visualItemRect(item)
    QTest.mouseClick(lst.viewport(), Qt.LeftButton, Qt.NoModifier, rect.center())
    want = [int(round(x)) for x in n.center_kji]
    assert wait_until(lambda: list(win.doc.position) == want, 5), (win.doc.position, want)
    for v in _views(win).values():
        assert v.index == want[v.plane.axis]


def test_n_key_over_the_sagittal_view_finds_the_same_nodule(win, reader_centre):
    c, _ = reader_centre
    sag = _views(win)["sagittal"]
    r = _analyse(win, sag, _screen_point(win, sag, c), key=True)
    assert r is not None, win.nodules.last_line
    assert len(win.nodules.nodules()) == 1 and r.number == win.nodules.nodules()[0].number


def test_click_outside_the_body_says_no_nodule_found_and_adds_no_layer(win, reader_centre):
    vol = win.doc.volume
    ax = _views(win)["axial"]
    k = int(round(win.nodules.lps_to_kji(reader_centre[0])[0]))
    # air in front of the chest, inside the scanner's field of view
    j = 40
    assert vol.array[k, j, 256] < -900, vol.array[k, j, 256]
    lps = vol.index_to_lps(256, j, k)
    before = [(id(l), l._version) for l in win.doc.layers]
    n_before = len(win.nodules.nodules())
    r = _analyse(win, ax, _screen_point(win, ax, lps))
    assert r is None
    assert win.nodules.last_line.startswith("No nodule found"), win.nodules.last_line
    assert "\n" not in win.nodules.last_line
    assert [(id(l), l._version) for l in win.doc.layers] == before, "a layer was added or changed"
    assert len(win.nodules.nodules()) == n_before


def test_nodules_come_back_with_their_series_and_delete_removes_them(win, reader_centre):
    c, _ = reader_centre
    if not win.nodules.nodules():
        _analyse(win, _views(win)["axial"], _screen_point(win, _views(win)["axial"], c))
    n = win.nodules.nodules()[0]
    key = win.current_key
    win.load_series(key)  # the reader leaves the series and comes back
    assert wait_until(lambda: win.load_state == "done" and win.nodules.mask_layer() is not None, 60)
    assert win.nodules.nodules()[0] is n and win.nodules.list.count() == 1
    assert len([l for l in win.doc.layers if getattr(l, "nodule_layer", "") == "axes"]) == 1
    win.nodules.list.setCurrentRow(0)
    win.nodules.delete_selected()
    assert win.nodules.nodules() == [] and win.nodules.list.count() == 0
    assert win.nodules.mask_layer() is None and win.nodules.heat_layer() is None
    assert _axes_layer(win) is None


def test_heat_map_failing_its_sanity_check_is_flagged():
    from imaging_assist_ui.radiology.nodules import heat_flag

    class R:
        warnings = ["gradcam failed the weight-randomisation sanity check on model x (Spearman 0.9 ...)"]

    assert "sanity check" in heat_flag(R()) and heat_flag(type("S", (), {"warnings": []})()) == ""


def test_nodules_flow_into_the_report_and_the_dicom_export(win, reader_centre, tmp_path):
    import pydicom

    c, _ = reader_centre
    if not win.nodules.nodules():
        _analyse(win, _views(win)["axial"], _screen_point(win, _views(win)["axial"], c))
    n = win.nodules.nodules()[0]
    rep = win.report_exporter.build()
    entries = [e for st in rep["studies"] for e in st["items"] if e.get("nodules")]
    assert len(entries) == 1, rep["studies"]
    row = entries[0]["nodules"][0]
    assert row["id"] == n.id and row["found"] and row["volume"] == f"{n.result.volume_mm3:,.0f}"
    assert any(v.get("title", "").startswith(f"Nodule {n.id}") for v in entries[0]["views"]), \
        [v.get("title") for v in entries[0]["views"]]
    plan = win.dicom_exporter.plan()
    assert any(p.startswith("SEG:") and "nodules" in p for p in plan), plan
    written = win.dicom_exporter.export(str(tmp_path / "dicom"), confirm=False)
    assert written, win.dicom_exporter.last_error
    seg = next(w for w in written if w.kind == "SEG")
    ds = pydicom.dcmread(seg.path)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [f"nodule {n.id}"]
    assert any(w.kind == "SR" for w in written)


def test_shift_click_on_a_non_ct_series_is_one_line_and_starts_nothing(win, reader_centre, monkeypatch):
    ax = _views(win)["axial"]
    pos = _screen_point(win, ax, reader_centre[0])
    monkeypatch.setattr(win.doc.volume, "modality", "MR")
    n0, layers = len(win.nodules.history), [id(l) for l in win.doc.layers]
    QTest.mouseClick(ax, Qt.LeftButton, Qt.ShiftModifier, pos)
    assert not win.nodules.busy
    assert win.nodules.last_line == "Nodule: nodule analysis is for CT series; this one is MR."
    assert len(win.nodules.history) == n0 and [id(l) for l in win.doc.layers] == layers


def test_heat_map_is_hidden_and_flagged_when_its_sanity_check_failed(win, reader_centre, monkeypatch):
    """The card's recorded Grad-CAM randomisation check says failed: the heat-map layer comes
    hidden and named so, the entry says why (the record is replaced, the engine runs for real)."""
    import imaging_assist.explain.sanity as sanity

    for n in win.nodules.nodules():
        win.nodules.delete(n)
    monkeypatch.setattr(sanity, "recorded_sanity",
                        lambda card: {"gradcam": {"passed": False, "final_spearman": 0.93, "threshold": 0.5}})
    ax = _views(win)["axial"]
    r = _analyse(win, ax, _screen_point(win, ax, reader_centre[0]))
    assert r is not None and r.heat_flag, win.nodules.last_line
    heat = win.nodules.heat_layer()
    assert heat is not None and not heat.visible and "sanity check failed" in heat.name
    assert any("sanity check" in ln and "hidden" in ln for ln in win.nodules.entry_lines()), \
        win.nodules.entry_lines()
    win.nodules.delete(r)
    assert win.nodules.heat_layer() is None


def test_ai_panel_does_not_run_a_nodule_model_on_the_whole_series(win):
    """ct-nodule-* fit any CT by their cards, but run on a whole series (instead of the window
    around a nodule) they would answer nonsense: the panel refuses with the way to use them."""
    p = win.model_panel
    win.show_model_panel()
    assert wait_until(lambda: p._catalog_loaded, 60)
    started = []
    p.runFinished.connect(started.append)
    for mid in ("ct-nodule-malignancy", "ct-nodule-seg"):
        assert p.select_model(mid), [e.id for e in p.entries]
        assert p.run() is False and not p.running
        assert "Shift+click" in p.error_text(), p.error_text()
    QTest.qWait(50)
    assert started == []
    from imaging_assist_ui.ai.demo_autorun import AutoRun

    auto = AutoRun.__new__(AutoRun)  # the demo's plan, on this panel
    auto.panel = p
    p._rematch(select_best=False)
    assert not any(e.id.startswith("ct-nodule") for e in auto._plan())


def test_gui_demo_analyses_the_demo_ct_nodule(tmp_path_factory):
    """``imaging-assist demo`` with a display (win.autorun set): the demo CT's nodule, from the
    readers' XML (imaging_assist.demo.nodule_points), is analysed once its series is shown."""
    from PySide6.QtCore import QSettings

    from imaging_assist.demo import demo_root, nodule_points
    from imaging_assist_ui.app import make_app
    from imaging_assist_ui.main_window import MainWindow

    make_app()
    w = MainWindow(settings=QSettings(str(tmp_path_factory.mktemp("cfg") / "s.ini"), QSettings.IniFormat))
    w.autorun = object()  # what app.run sets in demo mode (the AI panel's auto-run is not needed here)
    w.show()
    try:
        w.open_path(str(need(Path(demo_root()) / "ct_chest_nodule")))
        assert wait_until(lambda: w.load_state == "done"), w.last_error
        (pt,) = nodule_points()[w.doc.volume.series_uid]
        assert wait_until(lambda: not w.nodules.busy and w.nodules.history, 120), w.nodules.last_line
        n = w.nodules.nodules()[0]
        assert np.allclose(n.result.point_lps, pt["point_lps"], atol=1e-3)
        assert w.nodules.mask_layer() is not None and n.result.found
    finally:
        w.close()
