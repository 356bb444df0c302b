"""A measurement SR the reader exported into the study folder, reopened beside the same
measurements (kept by the viewer): each measurement is drawn once, as the reader's editable one;
the exported copy comes back when the measurement is moved or deleted (imaging_assist.dicom.
sr_regions.own_measurement_regions; ResultLayers._hide_own)."""

import pytest
from PySide6.QtCore import Qt

from test_ui_annotations import grab
from test_ui_sr_regions import K, _green, open_with_sr

from imaging_assist.layers import ShapesLayer
from imaging_assist.measure import Measurement


@pytest.fixture(scope="module")
def win(tmp_path_factory, ct_volume):
    w, poly, ruler = open_with_sr(tmp_path_factory, ct_volume, "sr_own")
    yield w, poly, ruler
    w.close()


def _layer(w):
    return next(layer for layer in w.doc.layers if isinstance(layer, ShapesLayer))


def test_exported_copies_of_the_readers_own_measurements_are_drawn_once(win):
    w, poly, ruler = win
    layer, view = _layer(w), w.view_area.single
    assert all(s.visible for s in layer.shapes)  # nothing of the reader's yet: the SR's regions show
    # the reader's measurements come back (a new session: new ids, same places)
    mine = [Measurement(m.kind, m.points, index=m.index) for m in (poly, ruler)]
    for m in mine:
        w.doc.measurements.append(m)
    w.doc.measurementsChanged.emit()
    assert [s.visible for s in layer.shapes] == [False, False]
    assert any("2 regions are your own measurements, exported earlier: drawn once" in t for t in w.results.messages)
    w.doc.set_index(0, K)
    view.repaint()
    assert _green(grab(view)) == 0  # no dashed green copy over the reader's outline
    # the Overlays panel shows them unticked; a tick brings one back
    tree = w.layers_panel.tree
    top = next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount())
               if "regions" in tree.topLevelItem(i).text(0))
    assert [top.child(c).checkState(0) for c in range(top.childCount())] == [Qt.Unchecked, Qt.Unchecked]
    top.child(0).setCheckState(0, Qt.Checked)
    view.repaint()
    assert _green(grab(view)) > 200
    top.child(0).setCheckState(0, Qt.Unchecked)
    # the ruler moved since the export: its exported copy is drawn again beside it
    mine[1].points = [(210.0, 330.0), (340.0, 330.0)]
    w.doc.measurementsChanged.emit()
    assert [s.visible for s in layer.shapes] == [False, True]
    # the polygon deleted: its exported copy is back too
    w.doc.measurements.remove(mine[0])
    w.doc.measurementsChanged.emit()
    assert [s.visible for s in layer.shapes] == [True, True]
    view.repaint()
    assert _green(grab(view)) > 200
