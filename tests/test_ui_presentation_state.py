"""The viewer draws a study's softcopy presentation state (a reading workstation's arrows,
outlines and notes) on the images it names, lists them (click: go to the image) and says in
one line what it does not apply."""

import numpy as np
import pytest

from _qt import open_window, wait_until
from conftest import link_ct_phantom
from test_presentation_state import PIXEL, _gsps
from test_result_objects import _sources, hd
from test_ui_annotations import grab

from imaging_assist.layers import ShapesLayer

K = 50


def _red(img: np.ndarray) -> int:
    r, g, b = (img[..., c].astype(int) for c in range(3))
    return int(np.count_nonzero((r > 150) & (g < 80) & (b < 80)))


@pytest.fixture(scope="module")
def win(tmp_path_factory, ct_volume):
    d = link_ct_phantom(tmp_path_factory.mktemp("gsps_study"))
    src = _sources(ct_volume)
    layer = hd.pr.GraphicLayer(layer_name="READER", order=1)  # the presentation state's layer: CIELab red
    ann = hd.pr.GraphicAnnotation(
        referenced_images=[src[K]], graphic_layer=layer,
        graphic_objects=[hd.pr.GraphicObject("POLYLINE", np.array([[150.5, 150.5], [300.5, 150.5], [300.5, 260.5],
                                                                   [150.5, 150.5]]), PIXEL)],
        text_objects=[hd.pr.TextObject("see prior", PIXEL, anchor_point=(320.5, 300.5))])
    voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=40.0, window_width=400.0)]
    ds = _gsps(src, [], extra_annotations=[ann], voi=voi)
    ds.save_as(d / "gsps.dcm")
    w = open_window(tmp_path_factory, str(d))
    assert wait_until(lambda: any(isinstance(layer, ShapesLayer) for layer in w.doc.layers), 20)
    w.set_layout("single")
    w.set_tool("navigate")
    yield w
    w.close()


def test_annotations_are_drawn_on_their_image_and_listed(win):
    layer = next(layer for layer in win.doc.layers if isinstance(layer, ShapesLayer))
    assert [s.text() for s in layer.shapes] == ["polyline", "see prior"]
    view = win.view_area.single
    counts = {}
    for k in (K, K + 2):  # what the layer adds to the view (the view's own letters are yellow too)
        win.doc.set_index(0, k)
        layer.visible = True
        view.repaint()
        shown = grab(view)
        layer.visible = False
        view.repaint()
        hidden = grab(view)
        layer.visible = True
        diff = np.any(shown != hidden, axis=2)
        counts[k] = (_red(shown) - _red(hidden), int(diff.sum()))
    assert counts[K][0] > 150 and counts[K + 2] == (0, 0), counts  # in the layer's colour (red), on its image
    items = [win.results.list.item(i) for i in range(win.results.list.count())]
    texts = [it.text() for it in items]
    assert texts[0] == "READING (Presentation State): 2 annotations"
    assert layer.name == "READING: annotations"
    note = next(it for it in items if it.text() == f"[{K + 1}] see prior")
    win.doc.set_index(0, 0)
    win.results.list.itemClicked.emit(note)
    assert win.doc.position[0] == K
    # its window (not the file's): said, offered in the presets, applied from its Results entry
    assert any("its window is not applied" in m and "offered in Window presets" in m for m in win.results.messages)
    assert any(p.name == "READING window" and (p.center, p.width) == (40.0, 400.0) for p in win.doc.volume.window_presets)
    assert any("READING window" in win.presets.combo.itemText(i) for i in range(win.presets.combo.count()))
    entry = next(it for it in items if it.text().startswith("READING window: W 400 L 40"))
    assert (win.doc.window.center, win.doc.window.width) != (40.0, 400.0)
    win.results.list.itemClicked.emit(entry)
    assert (win.doc.window.center, win.doc.window.width) == (40.0, 400.0) and win.doc.window.name == "READING window"
