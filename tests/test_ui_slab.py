"""Thick slab in the viewer (ui/radiology/slab_controls.py, SliceView.set_slab): the active
view shows the projection the engine computes, says so in amber in its corner with the slices
taken, keeps its own slab per view, shows the centre and the projected value under the cursor,
points a click (crosshair, nodule pick) at the slice of the brightest voxel on a MIP, refuses
what cannot be projected in one line, and ``view --slab`` reaches every view."""

import numpy as np
import pytest

from _qt import open_window, wait_until
from conftest import SHARED, need
from test_ui_annotations import grab

from imaging_assist.slab import Slab, project
from imaging_assist.volume import Volume

SLAB_DIR = SHARED / "ct" / "lidc_idri_0001_slab"


def open_slab(tmp_path_factory, layout: str):
    """A window on the real LIDC-IDRI-0001 slab, every slice read, in ``layout``."""
    w = open_window(tmp_path_factory, str(need(SLAB_DIR)), size=(1600, 1000))
    assert wait_until(lambda: w.doc.volume.loaded is None or w.doc.volume.loaded.all(), 60)
    w.set_layout(layout)
    return w


@pytest.fixture(scope="module")
def win(tmp_path_factory):
    w = open_slab(tmp_path_factory, "mpr")
    yield w
    w.close()


def _views(w):
    return {v.plane.name: v for v in w.view_area.mpr_views}


def _off(w):
    for v in w.view_area.all_views():
        v.set_slab(None)


def test_mip_from_the_toolbar_shows_the_engines_projection_in_the_active_view(win):
    _off(win)
    ax = _views(win)["axial"]
    win.view_area._on_activated(ax)
    win.doc.set_index(0, 8)
    plain = ax.base_image()[1].copy()
    sc = win.slab_controls
    sc.thickness.setValue(10.0)
    sc.choose("mip")
    assert ax.slab == Slab("mip", 10.0)
    words = ax.base_image()[1]
    want = ax.doc.renderer.render32(project(ax.vol, ax.plane, 8, Slab("mip", 10.0)).array, ax.doc.window,
                                    ax.doc.invert)
    assert np.array_equal(words, want) and not np.array_equal(words, plain)
    bl = ax.annotation_text()["bl"]
    assert bl[0] == "MIP 10 mm: 5 slices -5.0 to +5.0 mm" and bl[1] == "Values and ROI statistics: centre slice"
    assert bl[0] in ax.annotation_text()["em"]  # drawn in amber
    img = grab(ax)
    r, g, b = (img[..., c].astype(int) for c in range(3))
    assert np.count_nonzero((r > 230) & (g > 170) & (g < 225) & (b < 130)) > 50, "no amber corner text"
    # the other planes keep their slices; the controls follow the active view
    cor = _views(win)["coronal"]
    assert cor.slab is None
    win.view_area._on_activated(cor)
    assert sc.combo.currentData() is None and sc.menu_actions[None].isChecked()
    win.view_area._on_activated(ax)
    assert sc.combo.currentData() == "mip" and sc.menu_actions["mip"].isChecked()
    # the thickness box changes the active view's slab at once
    sc.thickness.setValue(5.0)
    assert ax.slab == Slab("mip", 5.0) and ax.annotation_text()["bl"][0].startswith("MIP 5 mm: 3 slices")
    sc.choose(None)
    assert ax.slab is None and not ax.annotation_text()["em"]
    assert np.array_equal(ax.base_image()[1], plain)


def test_minip_and_average_from_the_menu_and_on_a_reformatted_plane(win):
    _off(win)
    sag = _views(win)["sagittal"]
    win.view_area._on_activated(sag)
    win.slab_controls.thickness.setValue(3.0)
    win.slab_controls.menu_actions["minip"].trigger()
    assert sag.slab == Slab("minip", 3.0)
    i = sag.index
    want = project(sag.vol, sag.plane, i, Slab("minip", 3.0))
    assert np.array_equal(sag.base_image()[1], sag.doc.renderer.render32(want.array, sag.doc.window, sag.doc.invert))
    assert sag.annotation_text()["bl"][0] == want.describe() and len(want.indices) == 5  # 0.7 mm columns
    win.slab_controls.menu_actions["avg"].trigger()
    assert sag.slab.mode == "avg"
    _off(win)


def _axial_mip(win):
    """The axial view as a 10 mm MIP at slice 8, and a pixel (r, c) where the MIP shows a vessel
    of another slice (over 200 HU above the centre slice)."""
    _off(win)
    ax = _views(win)["axial"]
    win.view_area._on_activated(ax)
    win.doc.set_index(0, 8)
    ax.set_slab(Slab("mip", 10.0))
    ax.base_image()
    mip, centre = ax._slab_image.array, ax.vol.array[8]
    r, c = np.argwhere(mip > centre + 200)[0]
    return ax, mip, centre, r, c


def test_cursor_shows_the_centre_and_the_projected_value(win):
    ax, mip, centre, r, c = _axial_mip(win)
    texts = []
    ax.cursorInfo.connect(texts.append)
    ax._update_cursor(ax.uv_to_screen(float(c), float(r)))
    ax.cursorInfo.disconnect(texts.append)
    assert f"value {int(centre[r, c])} HU  MIP {int(mip[r, c])} HU" in texts[-1]
    _off(win)


def test_a_click_on_a_mip_points_at_the_slice_of_the_brightest_voxel(win):
    ax, mip, centre, r, c = _axial_mip(win)
    vol = ax.vol
    k_max = [k for k in ax._slab_image.indices if vol.array[k, r, c] == mip[r, c]][0]
    assert k_max != 8
    pos = ax.uv_to_screen(float(c), float(r))
    kji = ax.point_kji(pos)  # what Shift+click / N hands the nodule tool
    assert (round(kji[0]), round(kji[1]), round(kji[2])) == (k_max, r, c)
    ax._set_crosshair(ax.screen_to_uv(pos))  # MPR click: the other planes go to that voxel
    assert tuple(win.doc.position) == (k_max, r, c)
    ax.set_slab(Slab("avg", 10.0))  # an average has no depth: the shown slice
    win.doc.set_index(0, 8)
    assert round(ax.point_kji(pos)[0]) == 8
    _off(win)


def test_slab_controls_show_for_a_volume_only(win):
    sc = win.slab_controls
    sc.choose("mip")
    assert sc.combo.isVisibleTo(win) and sc.thickness.isVisibleTo(win)  # the 16-slice CT
    sc.set_available(Volume(array=np.zeros((1, 8, 8), np.int16)))  # one radiograph
    assert not sc.combo.isVisibleTo(win) and not sc.thickness.isVisibleTo(win)
    sc.set_available(win.doc.volume)
    assert sc.combo.isVisibleTo(win) and sc.thickness.isVisibleTo(win)
    sc.choose(None)  # the slice: no thickness to set
    assert sc.combo.isVisibleTo(win) and not sc.thickness.isVisibleTo(win)
    win.active_view().set_slab(Slab("minip", 5.0))  # a view with a slab made active (sync)
    sc.sync(win.active_view())
    assert sc.thickness.isVisibleTo(win) and sc.thickness.value() == 5.0
    _off(win)


def test_a_colour_image_refuses_a_slab_in_one_line(win):
    _off(win)
    rgb = Volume(array=np.zeros((3, 32, 32, 3), np.uint8), has_geometry=False, photometric="RGB")
    view = win.view_area.grid.cells[1].view
    view.doc.set_volume(rgb)
    view.set_slab(Slab("mip", 10.0))
    assert view.annotation_text()["bl"][0] == "No MIP: a colour image has no intensity to project"
    assert view.base_image()[1].shape == (32, 32)  # the image itself, nothing projected
    assert not view.slab_active() and view.slab_depth((3.0, 4.0)) == view.index
    view.set_slab(None)


def test_view_command_hands_the_slab_to_the_viewer_and_refuses_a_bad_one(capsys):
    from imaging_assist.cli import main

    got = {}

    def runner(path, **kw):
        got.update(kw, path=path)
        return 0

    assert main(["view", str(SLAB_DIR), "--slab", "MinIP:7.5"], run_gui=runner) == 0
    assert got["slab"] == Slab("minip", 7.5) and got["path"] == str(SLAB_DIR)
    assert main(["view", str(SLAB_DIR)], run_gui=runner) == 0 and got["slab"] is None
    got.clear()
    assert main(["view", str(SLAB_DIR), "--slab", "max:10"], run_gui=runner) != 0
    err = capsys.readouterr().err.strip()
    assert not got and len(err.splitlines()) == 1 and "slab mode is one of mip, minip, avg" in err


def test_apply_all_gives_every_view_the_slab(win):
    win.slab_controls.apply_all(Slab("mip", 8.0))
    assert all(v.slab == Slab("mip", 8.0) for v in win.view_area.all_views())
    assert win.slab_controls.combo.currentData() == "mip" and win.slab_controls.thickness.value() == 8.0
    win.slab_controls.apply_all(None)
    assert all(v.slab is None for v in win.view_area.all_views())


def test_mpr_views_draw_the_slab_bounds_of_the_axial_mip(win):
    """The coronal and sagittal views draw dashed lines in the axial colour at the first and last
    slice of the axial slab (OHIF's slab lines): none without a slab."""
    from PySide6.QtGui import QColor

    from imaging_assist_ui.shared.theme import PLANE_COLORS

    _off(win)
    ax, cor = _views(win)["axial"], _views(win)["coronal"]
    win.view_area._on_activated(ax)
    win.doc.set_position((8, 256, 256))
    red = QColor(PLANE_COLORS["axial"])
    assert red.red() - max(red.green(), red.blue()) > 100

    def red_rows():  # rows with a reddish line (blended over the grey image)
        img = grab(cor).astype(int)
        hit = (img[..., 0] - img[..., 1] > 40) & (img[..., 0] - img[..., 2] > 40)
        return {y for y in range(img.shape[0]) if hit[y].sum() > 20}

    def row_of(k):
        u, v, _ = cor.plane.from_voxel((k, 256, 256), win.doc.shape3())
        return int(round(cor.uv_to_screen(u, v).y()))

    before = red_rows()
    assert not any(abs(y - row_of(k)) <= 1 for y in before for k in (6, 10))
    ax.set_slab(Slab("mip", 10.0))  # slices 6-10
    assert ax.slab_bounds() == (6, 10)
    after = red_rows()
    for k in (6, 10):
        assert any(abs(y - row_of(k)) <= 1 for y in after), (k, row_of(k), sorted(after))
    _off(win)
