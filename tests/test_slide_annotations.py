"""Slide annotations and regions (engine, no Qt): measurements against hand-computed values,
GeoJSON round trip, a QuPath-style file, the tile filter by region on the real SVS."""

import json

import numpy as np
import pytest

from conftest import SHARED, need

from imaging_assist.errors import UserError
from imaging_assist.slides.annotations import (Annotation, load_for_slide, point_counts,
                                               read_geojson, save_for_slide, slide_key, store_path,
                                               write_geojson)
from imaging_assist.slides.regions import filter_plan, inside_fraction, polygon_area, rect_polygon

SVS = SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
MPP = (0.499, 0.499)


def test_ruler_and_polygon_measurements_by_hand():
    # 3-4-5 triangle legs: a 300 x 400 px diagonal is 500 px = 249.5 µm at 0.499 µm/px
    r = Annotation("ruler", [(100, 100), (400, 500)])
    assert r.measurements(MPP)["Length µm"] == pytest.approx(500 * 0.499)
    # anisotropic pixels: 100 px in x at 0.5 and 100 px in y at 0.25 -> sqrt(50² + 25²)
    assert Annotation("ruler", [(0, 0), (100, 100)]).measurements((0.5, 0.25))["Length µm"] == \
        pytest.approx(np.hypot(50, 25))
    # 2000 x 1000 px rectangle = 998 µm x 499 µm = 0.498002 mm²
    sq = Annotation("rectangle", rect_polygon(0, 0, 2000, 1000).tolist())
    m = sq.measurements(MPP)
    assert m["Area mm^2"] == pytest.approx(2000 * 0.499 * 1000 * 0.499 / 1e6)
    assert m["Perimeter µm"] == pytest.approx(2 * (2000 + 1000) * 0.499)
    # an L-shaped polygon: 3 unit squares of 100 px
    L = [(0, 0), (200, 0), (200, 100), (100, 100), (100, 200), (0, 200)]
    assert polygon_area(L) == pytest.approx(30000)
    # no MPP: pixels, named as pixels (never µm)
    assert Annotation("ruler", [(0, 0), (3, 4)]).measurements(None) == {"Length px": 5.0}
    assert "no MPP" in Annotation("polygon", L).describe(None)


def test_point_counts_per_class():
    a = [Annotation("points", [(1, 1), (2, 2), (3, 3)], "Tumor"), Annotation("points", [(5, 5)], "Immune cells"),
         Annotation("points", [(9, 9)], "Tumor"), Annotation("ruler", [(0, 0), (1, 1)], "Tumor")]
    assert point_counts(a) == {"Tumor": 4, "Immune cells": 1}


def test_geojson_round_trip_and_store(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGING_ASSIST_DATA_DIR", str(tmp_path / "data"))
    anns = [Annotation("ruler", [(10, 20), (110, 20)], "Region"),
            Annotation("polygon", [(0, 0), (50, 0), (50, 40)], "Tumor", label="nest 1"),
            Annotation("rectangle", rect_polygon(5, 5, 10, 20).tolist(), "Stroma"),
            Annotation("points", [(7, 8), (9, 10)], "Immune cells")]
    key = slide_key(need(SVS))
    assert len(key) == 32 and key == slide_key(SVS)
    p = save_for_slide(key, anns, MPP, {"name": SVS.name})
    assert p == store_path(key) and p.parent == tmp_path / "data" / "slide_annotations"
    doc = json.loads(p.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 4
    f = doc["features"][1]
    assert f["geometry"]["type"] == "Polygon" and f["geometry"]["coordinates"][0][0] == f["geometry"]["coordinates"][0][-1]
    assert f["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert f["properties"]["measurements"]["Area mm^2"] == pytest.approx(1000 * 0.499 ** 2 / 1e6, abs=1e-6)
    back, notes = load_for_slide(key)
    assert not notes
    assert [(a.kind, a.name, a.points, a.id, a.label) for a in back] == \
        [(a.kind, a.name, a.points, a.id, a.label) for a in anns]
    save_for_slide(key, [], MPP)  # nothing left: the file goes
    assert not p.exists() and load_for_slide(key) == ([], [])


def test_reads_a_qupath_export(tmp_path):
    # As QuPath 0.4 writes "Export objects as GeoJSON" (FeatureCollection, pretty) plus the
    # older variants: measurements as a list, a packed colour, a MultiPolygon, a hole.
    qp = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "7f1c6a0e-1c1e-4a4b-9a59-8f2f9f0b7a11",
         "geometry": {"type": "Polygon", "coordinates": [[[100, 100], [300, 100], [300, 250], [100, 250], [100, 100]],
                                                          [[150, 150], [160, 150], [160, 160], [150, 150]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "isLocked": False}},
        {"type": "Feature", "id": "b2", "geometry": {"type": "MultiPoint", "coordinates": [[10, 10], [20, 20], [30, 30]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Immune cells", "colorRGB": -6946648}}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [0, 1000]]},
         "properties": {"objectType": "annotation", "measurements": [{"name": "Length µm", "value": 499.0}],
                        "color": -16776961}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [10, 0], [10, 10], [0, 0]]], [[[20, 20], [30, 20], [30, 30], [20, 20]]]]},
         "properties": {"classification": {"name": "Stroma", "color": [150, 200, 150]}}},
        {"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": []}, "properties": {}},
    ]}
    f = tmp_path / "qupath.geojson"
    f.write_text(json.dumps(qp, indent=2))
    anns, notes = read_geojson(f)
    kinds = [(a.kind, a.name) for a in anns]
    assert kinds == [("polygon", "Tumor"), ("points", "Immune cells"), ("ruler", "Region"),
                     ("polygon", "Stroma"), ("polygon", "Stroma")]
    assert anns[0].id == "7f1c6a0e-1c1e-4a4b-9a59-8f2f9f0b7a11" and anns[0].color == (200, 0, 0)
    assert anns[0].measurements(MPP)["Area mm^2"] == pytest.approx(200 * 150 * 0.499 ** 2 / 1e6)
    assert anns[2].color == (0, 0, 255)  # packed 0xFF0000FF
    assert anns[2].measurements(MPP)["Length µm"] == pytest.approx(499.0)
    assert any("holes" in n for n in notes) and any("GeometryCollection" in n for n in notes)
    # our own export reads back the same (QuPath round trip of what we write)
    out = write_geojson(tmp_path / "ours.geojson", anns, MPP)
    again, _ = read_geojson(out)
    assert [(a.kind, a.name, a.points) for a in again] == [(a.kind, a.name, a.points) for a in anns]


@pytest.mark.parametrize("text,msg", [("{", "not readable JSON"), ('{"type": "Topology"}', "not GeoJSON"),
                                      ('{"type":"Feature","geometry":{"type":"LineString","coordinates":[[0,"x"]]}}',
                                       "not a number"),
                                      ('[{"type":"Feature","geometry":{"type":"Point","coordinates":[1e999, 0]}}]',
                                       "not finite")])
def test_bad_geojson_is_one_line(tmp_path, text, msg):
    f = tmp_path / "bad.geojson"
    f.write_text(text)
    with pytest.raises(UserError, match=msg):
        read_geojson(f)


def test_tile_filter_by_region_on_the_svs():
    from imaging_assist.slides import open_slide, plan_tiles
    from imaging_assist.slides.regions import run_region

    tri = [(200.0, 200.0), (1400.0, 300.0), (500.0, 1500.0)]
    with open_slide(need(SVS)) as s:
        plan = plan_tiles(s, 112, 1.0, tissue_mask=None)
        n_all = len(plan)
        filter_plan(plan, tri)
        assert 0 < len(plan) < n_all
        # every kept tile is at least half inside; every tile left out is less than half inside
        assert (inside_fraction(plan.rects0(), np.array(tri)) >= 0.5).all()
        seen = []

        def model(x):
            seen.append(len(x))
            p = np.full(len(x), 0.7, np.float32)
            return np.stack([p, 1 - p], 1)

        res = run_region(s, model, tri, 112, 1.0, tissue_mask=None, class_names=["a", "b"], batch_size=16)
        assert sum(seen) == res.n_tiles == len(plan)
        cx = res.coords[:, 0] + 112 * res.plan.downsample[0] / 2
        cy = res.coords[:, 1] + 112 * res.plan.downsample[1] / 2
        from imaging_assist.slides.regions import points_in_polygon
        assert points_in_polygon(cx, cy, np.array(tri)).mean() > 0.9
        assert res.origin[0] >= 200 and res.origin[1] >= 200  # the grid starts at the region
        with pytest.raises(UserError, match="outside the slide"):
            run_region(s, model, [(5000, 5000), (6000, 5000), (6000, 6000)], 112, 1.0, tissue_mask=None)


def test_polygon_that_crosses_itself_is_measured_as_drawn_and_said(tmp_path):
    """A QuPath-style polygon drawn as a figure eight: its area is that of the two filled lobes
    (the shoelace formula gave 0), the list line and the import notes say it crosses itself."""
    bow = [[0, 0], [2000, 1000], [2000, 0], [0, 1000], [0, 0]]
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [bow]},
         "properties": {"classification": {"name": "Tumor"}}}]}
    p = tmp_path / "bow.geojson"
    p.write_text(json.dumps(doc))
    anns, notes = read_geojson(p)
    assert len(anns) == 1 and anns[0].crosses_itself()
    assert polygon_area(anns[0].points) == pytest.approx(2 * 1000 * 1000 / 2)
    assert anns[0].measurements(MPP)["Area mm^2"] == pytest.approx(1e6 * 0.499 ** 2 / 1e6)
    assert notes == ["feature 1: the outline crosses itself; its area counts the filled parts "
                     "(even-odd, as drawn)"]
    assert anns[0].describe(MPP).endswith("mm², perimeter 3230 µm, outline crosses itself")
    sq = Annotation("polygon", rect_polygon(0, 0, 10, 10).tolist())
    assert not sq.crosses_itself() and "crosses" not in sq.describe(MPP)
    # the measured outline is kept between paints, and measured again when a point is added
    tri = Annotation("polygon", [(0, 0), (10, 0), (10, 10)])
    assert tri.measurements(None)["Area px^2"] == 50
    tri.points.extend([(0, 10)])
    assert tri.measurements(None)["Area px^2"] == 100 and not tri.crosses_itself()
