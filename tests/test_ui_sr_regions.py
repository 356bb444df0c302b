"""The viewer draws the regions of a study's measurement SR on the slices they were measured
on (a shapes layer in the Overlays panel: hidden and shown like the others, its regions
listed and jumped to), as OHIF and Weasis show a TID 1500 report over the image."""

import numpy as np
import pytest
from PySide6.QtCore import Qt

from _qt import open_window, wait_until
from conftest import link_ct_phantom
from test_ui_annotations import grab

from imaging_assist.export.sr_measurements import write_measurement_sr
from imaging_assist.layers import ShapesLayer
from imaging_assist.measure import Measurement

K = 70


def _green(img: np.ndarray) -> int:
    r, g, b = (img[..., c].astype(int) for c in range(3))
    return int(np.count_nonzero((g > 170) & (r > 70) & (r < 160) & (b > 90) & (b < 190) & (g - r > 60)))


def open_with_sr(tmp_path_factory, ct_volume, name: str = "sr_study"):
    """A window on a study folder (the CT phantom) holding a measurement SR of a polygon on
    image K + 1 and a ruler on image K + 2: (window, polygon, ruler)."""
    d = link_ct_phantom(tmp_path_factory.mktemp(name))
    poly = Measurement("polygon", [(150, 150), (300, 150), (300, 260), (150, 260)], index=K)
    ruler = Measurement("ruler", [(200, 330), (330, 330)], index=K + 1)
    for m in (poly, ruler):
        m.compute_on(ct_volume)
    write_measurement_sr(ct_volume, [poly, ruler], d / "measurements.dcm", warnings=[])
    w = open_window(tmp_path_factory, str(d))
    assert wait_until(lambda: any(isinstance(layer, ShapesLayer) for layer in w.doc.layers), 20)
    w.set_layout("single")
    w.set_tool("navigate")
    return w, poly, ruler


@pytest.fixture(scope="module")
def win(tmp_path_factory, ct_volume):
    w, poly, ruler = open_with_sr(tmp_path_factory, ct_volume)
    yield w, poly, ruler
    w.close()


def test_regions_are_drawn_on_their_own_slice(win):
    w, poly, ruler = win
    layer = next(layer for layer in w.doc.layers if isinstance(layer, ShapesLayer))
    assert len(layer.shapes) == 2
    view = w.view_area.single
    counts = {}
    for k in (K, K + 1, K + 3):
        w.doc.set_index(0, k)
        view.repaint()
        counts[k] = _green(grab(view))
    assert counts[K] > 200 and counts[K + 1] > 50 and counts[K + 3] == 0, counts
    # the outline runs where the polygon was drawn: its top edge's middle on screen
    w.doc.set_index(0, K)
    view.repaint()
    img = grab(view)
    p = view.uv_to_screen(225, 150)
    x, y = int(round(p.x())), int(round(p.y()))
    assert _green(img[y - 3:y + 4, x - 40:x + 40]) > 5
    p = view.uv_to_screen(225, 205)  # inside: no line
    x, y = int(round(p.x())), int(round(p.y()))
    assert _green(img[y - 3:y + 4, x - 40:x + 40]) == 0
    # hidden with its layer
    layer.visible = False
    view.repaint()
    assert _green(grab(view)) == 0
    layer.visible = True


def test_regions_are_listed_in_the_overlays_panel_and_jumped_to(win):
    w, poly, ruler = win
    tree = w.layers_panel.tree
    top = next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount())
               if "regions" in tree.topLevelItem(i).text(0))
    kids = [top.child(c).text(0) for c in range(top.childCount())]
    assert kids == [f"viewer polygon {poly.id}   (image {K + 1})", f"viewer ruler {ruler.id}   (image {K + 2})"]
    w.doc.set_index(0, 3)
    w.layers_panel._double_clicked(top.child(1), 0)
    assert w.doc.position[0] == K + 1
    # a region's own tick hides it alone
    top.child(0).setCheckState(0, Qt.Unchecked)
    layer = next(layer for layer in w.doc.layers if isinstance(layer, ShapesLayer))
    assert [s.visible for s in layer.shapes] == [False, True]
    top.child(0).setCheckState(0, Qt.Checked)
    assert all(s.visible for s in layer.shapes)
