"""CT nodules in the viewer, session 22 fixes (real slab, real engine and models, offscreen Qt):

* a nodule whose analysis finishes after the reader left its series and came back (a new Volume
  of the same series) is shown at once: entry and label layer;
* two nodules whose masks overlap: both entries and the exports' warnings say so, as the CLI
  does, and deleting the later one gives the earlier one its whole outline back;
* a click in the air beside the chest is "No nodule found" (the body wall next to it is not a
  nodule), while a click in dark lung is not taken for air."""

import threading

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from _qt import wait_until
from test_nodule_workflow import slab  # noqa: F401
from test_ui_nodules import _analyse, _screen_point, _views, reader_centre, win  # noqa: F401

AIR_LPS = (-144.2, -45.4, -115.0)  # ~6 mm outside the skin of the slab (right side), -1024 HU


def _clear(w):
    for n in w.nodules.nodules():
        w.nodules.delete(n)


def _own(w, n) -> np.ndarray:
    full = np.zeros(w.doc.shape3(), bool)
    full[n.box] = n.mask
    return full


def test_result_arriving_after_the_series_was_read_again_is_shown(win, reader_centre, monkeypatch):  # noqa: F811
    import imaging_assist_ui.radiology.nodules as nod_mod

    _clear(win)
    gate = threading.Event()
    real = nod_mod.analyze

    def held(*a, **k):  # the real engine, its answer held back until the series was read again
        r = real(*a, **k)
        gate.wait(60)
        return r

    monkeypatch.setattr(nod_mod, "analyze", held)
    vol0 = win.doc.volume
    ax = _views(win)["axial"]
    try:
        QTest.mouseClick(ax, Qt.LeftButton, Qt.ShiftModifier, _screen_point(win, ax, reader_centre[0]))
        assert win.nodules.busy
        # the reader leaves the series and comes back once it left the cache of loaded series
        # (opening another folder empties it): the series is read again, a new Volume
        win.loading._cache.clear()
        win.load_series(win.current_key)
        assert wait_until(lambda: win.load_state == "done" and win.doc.volume is not vol0, 60)
        QTest.qWait(100)  # loadFinished: the nodules' refresh ran, without the running analysis
        assert win.nodules.busy and win.nodules.list.count() == 0
    finally:
        gate.set()
    assert wait_until(lambda: not win.nodules.busy, 120), win.nodules.last_line
    (n,) = win.nodules.nodules()
    assert win.nodules.last_line.startswith(f"{n.id} added"), win.nodules.last_line
    assert win.nodules.list.count() == 1 and win.nodules.entry_lines()[0].startswith(n.id)
    layer = win.nodules.mask_layer()
    assert layer is not None and layer.shape == win.doc.shape3()
    assert int((layer.array == n.number).sum()) == int(n.mask.sum()) > 0
    assert win.nodules.list.currentItem() is not None  # selected, as any new nodule


def _overlapping_pair(w, c):
    """The readers' nodule, then the body wall beside it: two nodules whose masks overlap."""
    _clear(w)
    ax = _views(w)["axial"]
    a = _analyse(w, ax, _screen_point(w, ax, c))
    b = _analyse(w, ax, _screen_point(w, ax, c + [20.0, 16.0, 0.0]))
    assert a is not None and b is not None and a.id != b.id, w.nodules.last_line
    ma, mb = _own(w, a), _own(w, b)
    shared = int((ma & mb).sum())
    assert shared > 0, "the two masks do not overlap: the test needs them to"
    lab = w.nodules.mask_layer().array
    assert int((lab == b.number).sum()) == int(mb.sum())  # the later one's voxels win, as in the CLI
    assert int((lab == a.number).sum()) == int(ma.sum()) - shared
    return a, b, ma


def test_overlapping_nodules_are_said_as_the_cli_says_them(win, reader_centre):  # noqa: F811
    from imaging_assist.nodules.analysis import MALIGNANCY_MODEL
    from imaging_assist_ui.ai.session_runs import session_runs

    a, b, ma = _overlapping_pair(win, reader_centre[0])
    # said in both entries, and in the run the report, SR and SEG are made from
    lines = win.nodules.entry_lines()
    assert any(f"overlaps nodule {b.id}" in x and "labelled " + b.id in x for x in lines), lines
    assert any(f"overlaps nodule {a.id}" in x for x in lines), lines
    run = session_runs(win).runs[(a.series, MALIGNANCY_MODEL)]
    warn = {nd["id"]: nd["warnings"] for nd in run.item["nodules"]}
    assert any(f"overlaps nodule {b.id}" in w and "the SEG" in w for w in warn[a.id]), warn[a.id]
    assert any(f"overlaps nodule {a.id}" in w for w in warn[b.id]), warn[b.id]
    assert not any("overlaps" in w for w in a.result.warnings)  # the engine's result is left as it was
    win.nodules.delete(b)  # no overlap left: nothing said any more
    assert not any("overlaps" in x for x in win.nodules.entry_lines()), win.nodules.entry_lines()
    run = session_runs(win).runs[(a.series, MALIGNANCY_MODEL)]
    assert not any("overlaps" in w for nd in run.item["nodules"] for w in nd["warnings"])
    _clear(win)


def test_deleting_the_later_of_two_overlapping_nodules_leaves_no_hole(win, reader_centre):  # noqa: F811
    a, b, ma = _overlapping_pair(win, reader_centre[0])
    win.nodules.delete(b)
    lab = win.nodules.mask_layer().array
    assert int((lab == a.number).sum()) == int(ma.sum()), "deleting the later nodule left a hole"
    assert not lab[~ma].any()
    _clear(win)


def test_click_in_the_air_beside_the_chest_finds_no_nodule(win):  # noqa: F811
    vol = win.doc.volume
    i, j, k = (int(round(x)) for x in vol.lps_to_index(AIR_LPS))
    assert vol.array[k, j, i] < -900 and (vol.array[k, j, i:i + 12] > -300).any()  # tissue ~6 mm away
    ax = _views(win)["axial"]
    before = [(id(l), l._version) for l in win.doc.layers]
    n_before = len(win.nodules.nodules())
    r = _analyse(win, ax, _screen_point(win, ax, AIR_LPS))
    assert r is None, f"{r.id}: {r.result.volume_mm3} mm³ found in the air"
    line = win.nodules.last_line
    assert line.startswith("No nodule found at") and "in air outside the body" in line, line
    assert [(id(l), l._version) for l in win.doc.layers] == before
    assert len(win.nodules.nodules()) == n_before


def test_dark_lung_is_not_taken_for_air(slab):  # noqa: F811
    """The air rule needs the point outside the body outline: lung parenchyma darker than
    -900 HU all around the point (emphysema, a well-aerated lung) is inside it."""
    from scipy import ndimage

    from imaging_assist.nodules.analysis import outside_air
    from imaging_assist.nodules.window import cut_window

    a = np.asarray(slab.array, np.float32)
    body = np.stack([ndimage.binary_fill_holes(x > -500) for x in a])
    dark = ndimage.minimum_filter(a < -900, size=(3, 9, 9)) & body  # 3 slices x 6 mm all below -900
    off = np.arange(32) - 15.5  # the window's voxel centres around the point (mm)
    ball = off[:, None, None] ** 2 + off[None, :, None] ** 2 + off[None, None, :] ** 2 <= 4.0
    none = np.zeros((32, 32, 32), bool)
    tried = 0
    for k, j, i in np.argwhere(dark)[::7]:
        w = cut_window(slab, slab.index_to_lps(i, j, k))
        if (w.image[ball & w.valid] < -900).all():  # dark as air all around the point, in the lung
            tried += 1
            assert not outside_air(slab, w, none), (k, j, i)
    assert tried >= 3, "too little dark lung on the slab for the test"
    assert outside_air(slab, cut_window(slab, AIR_LPS), none)
