"""Fuzzing the slide annotation reader (imaging_assist.slides.annotations.read_geojson /
from_geojson) with structurally mutated copies of a file written by ``write_geojson``
(tests/_fuzz_json.py) and with hand-made hostile documents: each reads into finite, typed
annotations (with a note for what was left out or replaced) or gives one ``UserError`` line;
never another exception, a traceback, a hang or a runaway allocation."""

from __future__ import annotations

import json
import math
import time

import pytest

from _fuzz_json import check_reader, mutations, one_line_problem
from imaging_assist.errors import UserError
from imaging_assist.slides.annotations import (KINDS, MAX_VERTICES, Annotation, from_geojson,
                                               read_geojson, write_geojson)
from imaging_assist.slides.regions import rect_polygon

MPP = (0.499, 0.499)


def _annotations():
    return [Annotation("ruler", [(10, 20), (110, 20)], "Region"),
            Annotation("polygon", [(0, 0), (50, 0), (50, 40)], "Tumor", label="nest 1"),
            Annotation("rectangle", rect_polygon(5, 5, 10, 20).tolist(), "Stroma"),
            Annotation("points", [(7, 8), (9, 10)], "Immune cells")]


@pytest.fixture
def written(tmp_path):
    """(path, document) of a valid file as the app writes it (all four kinds, MPP, slide)."""
    p = write_geojson(tmp_path / "a.geojson", _annotations(), MPP, {"name": "slide.svs"})
    return p, json.loads(p.read_text(encoding="utf-8"))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def sane(result) -> str | None:
    """Why a reader result is not finite and typed (None when it is)."""
    anns, notes = result
    if not isinstance(anns, list) or not isinstance(notes, list):
        return f"result types {type(anns).__name__}, {type(notes).__name__}"
    for n in notes:
        if not isinstance(n, str) or not n.strip() or "\n" in n or len(n) > 300:
            return f"note {str(n)[:80]!r}"
    for a in anns:
        if not isinstance(a, Annotation) or a.kind not in KINDS:
            return f"annotation {a!r}"[:200]
        for field in (a.name, a.label, a.id):
            if not isinstance(field, str) or "\n" in field or "\r" in field or len(field) > 1024:
                return f"text field {str(field)[:80]!r}"
        if not a.name.strip() or not a.id.strip():
            return "empty class name or id"
        if not (isinstance(a.color, tuple) and len(a.color) == 3
                and all(type(c) is int and 0 <= c <= 255 for c in a.color)):
            return f"colour {a.color!r}"
        if not a.points or not all(isinstance(p, tuple) and len(p) == 2 and all(type(v) is float and math.isfinite(v)
                                                                              for v in p) for p in a.points):
            return f"points of {a.kind}: {a.points[:3]!r}"
        if a.kind in ("polygon", "rectangle") and len(set(a.points)) < 3:
            return f"{a.kind} with {len(set(a.points))} distinct vertices"
        if a.kind == "ruler" and len(a.points) < 2:
            return "ruler with one point"
        for mpp in (MPP, None):
            m = a.measurements(mpp)
            if not all(_finite(v) for v in m.values()):
                return f"measurements {m}"
            d = a.describe(mpp)
            if "\n" in d or "nan" in d.lower() or "inf" in d.lower():
                return f"description {d!r}"
        json.dumps(a.to_feature(MPP), allow_nan=False)  # what we write back is valid JSON
    return None


def _report(bad: list[str]):
    assert not bad, f"{len(bad)} mutation(s) escaped:\n" + "\n".join(bad[:40])


def test_the_written_file_reads_back_exactly(tmp_path):
    anns = _annotations()
    p = write_geojson(tmp_path / "a.geojson", anns, MPP, {"name": "slide.svs"})
    back, notes = read_geojson(p)
    assert not notes and sane((back, notes)) is None
    assert [(a.kind, a.name, a.points, a.color, a.label, a.id) for a in back] == \
        [(a.kind, a.name, a.points, a.color, a.label, a.id) for a in anns]


def test_structural_mutations_of_a_written_file(written):
    p, doc = written
    docs = list(mutations(doc, cap=None))  # every path (lists at both ends), every replacement
    assert len(docs) > 500
    t = time.monotonic()
    bad = check_reader(docs, p.write_bytes, lambda: read_geojson(p), (UserError,), sane)
    _report(bad)
    assert time.monotonic() - t < 15


def test_the_same_mutations_through_from_geojson(written):
    """from_geojson on the parsed documents (what a caller holding JSON already uses)."""
    _, doc = written
    bad = []
    for name, data in mutations(doc, cap=60):
        try:
            parsed = json.loads(data.decode("utf-8-sig"))
        except (ValueError, RecursionError):
            continue  # not JSON: read_geojson's part, tested above
        try:
            why = sane(from_geojson(parsed))
        except Exception as e:  # noqa: BLE001 - what escapes is the finding
            why = one_line_problem(e, (UserError,))
        if why:
            bad.append(f"{name}: {why}")
    _report(bad)


def _feature(geometry, properties=None, **kw):
    f = {"type": "Feature", "geometry": geometry,
         "properties": properties if properties is not None else {"classification": {"name": "Tumor"}}}
    f.update(kw)
    return f


def _fc(*features):
    return {"type": "FeatureCollection", "features": list(features)}


SQ = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
NAN, INF = float("nan"), float("inf")


def _poly(ring, **props):
    return _fc(_feature({"type": "Polygon", "coordinates": [ring]}, props or None))


# name -> (document or bytes, expected): "error:<text>", or ("ok", [kinds], <text in a note or None>)
CASES = {
    "coordinate NaN": (_poly([[NAN, 0], [1, 0], [1, 1]]), "error:not finite"),
    "coordinate inf": (_fc(_feature({"type": "LineString", "coordinates": [[0, 0], [INF, 0]]})), "error:not finite"),
    "coordinate 1e300": (_poly([[1e300, 0], [1e300, 1e300], [0, 1e300]]), "error:out of range"),
    "coordinate -1e300 on a ruler": (_fc(_feature({"type": "LineString", "coordinates": [[-1e300, 0], [1e300, 0]]})),
                                     "error:out of range"),
    "coordinate 10**400": (b'{"type":"Feature","geometry":{"type":"Point","coordinates":[1' + b"0" * 400 + b', 0]}}',
                           "error:not finite"),
    "coordinate strings": (_fc(_feature({"type": "LineString", "coordinates": [["1", "2"], ["3", "4"]]})),
                           "error:not a number"),
    "coordinate booleans": (_fc(_feature({"type": "LineString", "coordinates": [[True, False], [3, 4]]})),
                            "error:not a number"),
    "coordinate null": (_fc(_feature({"type": "Point", "coordinates": [None, 1]})), "error:not a number"),
    "a position nested too deep": (_fc(_feature({"type": "LineString", "coordinates": [[[1, 2]], [[3, 4]]]})),
                                   "error:not [x, y]"),
    "3D positions": (_fc(_feature({"type": "LineString", "coordinates": [[1, 2, 3], [3, 4, 5]]})), ("ok", ["ruler"], None)),
    "polygon of 0 points": (_poly([]), ("ok", [], "fewer than 3 vertices")),
    "polygon of 1 point": (_poly([[1, 1]]), ("ok", [], "fewer than 3 vertices")),
    "polygon of 2 points": (_poly([[1, 1], [2, 2], [1, 1]]), ("ok", [], "fewer than 3 vertices")),
    "polygon without rings": (_fc(_feature({"type": "Polygon", "coordinates": []})), "error:without rings"),
    "polygon ring not a list": (_fc(_feature({"type": "Polygon", "coordinates": [5]})), "error:not a list"),
    # a self-intersecting ring reads as drawn (QuPath does the same); its area is the ring's
    "self-intersecting polygon": (_poly([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]), ("ok", ["polygon"], None)),
    "line of 1 point": (_fc(_feature({"type": "LineString", "coordinates": [[1, 1]]})), ("ok", [], "fewer than 2")),
    "point without coordinates": (_fc(_feature({"type": "Point", "coordinates": []})), "error:not [x, y]"),
    "multipoint without points": (_fc(_feature({"type": "MultiPoint", "coordinates": []})), ("ok", [], "no points")),
    "multipolygon with a hole": (_fc(_feature({"type": "MultiPolygon", "coordinates": [
        [SQ, [[2, 2], [4, 2], [4, 4], [2, 2]]], [[[20, 20], [30, 20], [30, 30], [20, 20]]]]})),
        ("ok", ["polygon", "polygon"], "holes of the polygon left out")),
    "multipolygon with an empty member": (_fc(_feature({"type": "MultiPolygon", "coordinates": [5, [], [SQ]]})),
                                          ("ok", ["polygon"], "without rings")),
    "multipolygon not a list": (_fc(_feature({"type": "MultiPolygon", "coordinates": {"a": 1}})),
                                "error:without polygons"),
    "nested GeometryCollection": (_fc(_feature({"type": "GeometryCollection", "geometries": [
        {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [SQ]}]}]})),
        ("ok", [], "'GeometryCollection' not supported")),
    "geometry type a long list": (_fc(_feature({"type": ["Polygon"] * 10_000, "coordinates": [SQ]})),
                                  ("ok", [], "of JSON type list not supported")),
    "geometry type a long string": (_fc(_feature({"type": "x\n" * 50_000, "coordinates": [SQ]})),
                                    ("ok", [], "not supported")),
    "class name a list": (_poly(SQ, classification={"name": ["a", "b"]}), ("ok", ["polygon"], "class name is not text")),
    "class name an object": (_poly(SQ, classification={"name": {"a": 1}}), ("ok", ["polygon"], "class name is not text")),
    "class name true": (_poly(SQ, classification={"name": True}), ("ok", ["polygon"], "class name is not text")),
    "class name a number": (_poly(SQ, classification={"name": 5}), ("ok", ["polygon"], None)),
    "class name on two lines": (_poly(SQ, classification={"name": "Tu\nmor"}), ("ok", ["polygon"], None)),
    "class name of a megabyte": (_poly(SQ, classification={"name": "T" * 1_000_000}), ("ok", ["polygon"], None)),
    "classification a string": (_poly(SQ, classification="Tumor"), ("ok", ["polygon"], None)),
    "classification a list": (_poly(SQ, classification=[1, 2]), ("ok", ["polygon"], "classification is not understood")),
    "colour a word": (_poly(SQ, classification={"name": "a", "color": "red"}), ("ok", ["polygon"], "colour not understood")),
    "colour NaN": (_poly(SQ, classification={"name": "a", "color": [NAN, 0, 0]}), ("ok", ["polygon"], "colour not understood")),
    "colour booleans": (_poly(SQ, classification={"name": "a", "color": [True, False, True]}),
                        ("ok", ["polygon"], "colour not understood")),
    "colour strings": (_poly(SQ, classification={"name": "a", "color": ["1", "2", "3"]}),
                       ("ok", ["polygon"], "colour not understood")),
    "colour out of range": (_poly(SQ, classification={"name": "a", "color": [-5, 300, 1e300]}), ("ok", ["polygon"], None)),
    "colour packed inf": (b'{"type":"Feature","geometry":{"type":"Point","coordinates":[1,1]},'
                          b'"properties":{"color":Infinity}}', ("ok", ["points"], "colour not understood")),
    "colour packed 10**30": (_poly(SQ, classification={"name": "a", "color": 10**30}), ("ok", ["polygon"], None)),
    "name a list": (_poly(SQ, name=[1, 2]), ("ok", ["polygon"], "name is not text")),
    "name on two lines": (_poly(SQ, name="a\nb"), ("ok", ["polygon"], None)),
    "id a list": (_fc(_feature({"type": "Polygon", "coordinates": [SQ]}, id=[1, 2])), ("ok", ["polygon"], None)),
    "id of a megabyte": (_fc(_feature({"type": "Polygon", "coordinates": [SQ]}, id="i" * 1_000_000)), ("ok", ["polygon"], None)),
    "measurements not an object": (_poly(SQ, measurements="x"), ("ok", ["polygon"], None)),
    "properties a list": (_fc(_feature({"type": "Polygon", "coordinates": [SQ]}, [1, 2])), ("ok", ["polygon"], None)),
    "features an object": ({"type": "FeatureCollection", "features": {"a": 1}}, "error:no feature list"),
    "a list of lists": ([[1, 2]], ("ok", [], "no geometry")),
    "a Topology": ({"type": "Topology"}, "error:not GeoJSON"),
    "invalid UTF-8": (b'{"type":"Feature","geometry":{"type":"Point","coordinates":[1,1]},"properties":{"name":"\xff"}}',
                      "error:not readable JSON"),
    "a BOM": (b"\xef\xbb\xbf" + json.dumps(_poly(SQ)).encode(), ("ok", ["polygon"], None)),
    "truncated": (json.dumps(_poly(SQ)).encode()[:40], "error:not readable JSON"),
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, "error:not readable JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_documents(case, tmp_path):
    doc, expected = CASES[case]
    p = tmp_path / "x.geojson"
    p.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode("utf-8"))
    if isinstance(expected, str):
        with pytest.raises(UserError) as e:
            read_geojson(p)
        assert one_line_problem(e.value, (UserError,)) is None and expected[6:] in str(e.value), str(e.value)
        return
    result = read_geojson(p)
    assert sane(result) is None, sane(result)
    _, kinds, note = expected
    anns, notes = result
    assert [a.kind for a in anns] == kinds, (anns, notes)
    if note:
        assert any(note in n for n in notes), notes


def test_text_from_the_file_is_one_line_and_bounded(tmp_path):
    p = tmp_path / "x.geojson"
    p.write_text(json.dumps(_poly(SQ, classification={"name": "Tu\nmor\t x", "color": [1, 2, 3]}, name="a\r\nb")))
    (a,), _ = read_geojson(p)
    assert a.name == "Tu mor x" and a.label == "a b" and a.color == (1, 2, 3)
    p.write_text(json.dumps(_poly(SQ, classification={"name": "T" * 10_000})))
    (a,), _ = read_geojson(p)
    assert 0 < len(a.name) <= 256


def test_vertex_and_feature_counts_are_bounded(tmp_path, monkeypatch):
    """The limits hold for one huge ring, for many small ones, and for many features (the
    limits are lowered here: the same code, without writing a 2-million-vertex file)."""
    from imaging_assist.slides import annotations as A
    monkeypatch.setattr(A, "MAX_VERTICES", 1000)
    monkeypatch.setattr(A, "MAX_FEATURES", 50)
    p = tmp_path / "x.geojson"
    p.write_text(json.dumps(_poly([[i % 100, i // 100] for i in range(1001)])))
    with pytest.raises(UserError, match="1,000 vertices"):
        read_geojson(p)
    p.write_text(json.dumps(_fc(*[_feature({"type": "Polygon", "coordinates": [[[0, 0], [0, i + 1], [1, 1]] * 10]})
                                  for i in range(40)])))
    with pytest.raises(UserError, match="1,000 vertices"):
        read_geojson(p)
    p.write_text(json.dumps(_fc(*[_feature({"type": "Point", "coordinates": [1, 1]})] * 51)))
    with pytest.raises(UserError, match="51 features"):
        read_geojson(p)
    assert MAX_VERTICES == 2_000_000  # the real limit, untouched
