"""Measurements and annotations as a TID 1500 SR: written, dciodvfy 0 errors, read back with
the same kinds, coordinates, values and notes, referencing the slice they were drawn on."""

import numpy as np
import pytest

from imaging_assist.export.sr_measurements import read_measurement_sr, write_measurement_sr
from imaging_assist.measure import Measurement
from test_export_dicom import dciodvfy_errors


def _items(vol):
    k = vol.array.shape[0] // 2
    items = [Measurement("polygon", [(100, 120), (160, 120), (160, 140), (100, 140)], index=k),
             Measurement("freehand", [(200 + 10 * np.cos(t), 200 + 10 * np.sin(t))
                                      for t in np.linspace(0, 2 * np.pi, 30, endpoint=False)], index=k + 1),
             Measurement("angle", [(10, 10), (50, 10), (50, 60)], index=k),
             Measurement("arrow", [(80, 80), (120, 40)], index=k, text="calcification"),
             Measurement("text", [(30, 200)], index=k, text="see prior ✓"),
             Measurement("ruler", [(100, 256), (200, 256)], index=k),
             Measurement("ellipse", [(270, 180), (300, 210)], index=k),
             Measurement("polygon", [(0, 0), (10, 0), (10, 10)], axis=1, index=5)]
    for m in items:
        m.compute_on(vol) if m.axis == 0 else m.compute(np.zeros((20, 20)), (1, 1))
    return k, items


def test_sr_round_trip_and_dciodvfy(ct_volume, tmp_path):
    vol = ct_volume
    k, items = _items(vol)
    warnings = []
    path = write_measurement_sr(vol, items, tmp_path / "m.dcm", warnings=warnings)
    assert dciodvfy_errors(path) == []
    assert len(warnings) == 1 and "reformatted plane" in warnings[0]  # the axis-1 polygon, named
    back = {g["tracking_id"]: g for g in read_measurement_sr(path)}
    assert len(back) == 7
    from imaging_assist.export.dicom_common import source_datasets
    uid_k = str(source_datasets(vol)[k].SOPInstanceUID)
    poly = back[f"viewer polygon {items[0].id}"]
    assert poly["graphic_type"] == "POLYLINE"
    assert np.allclose(poly["graphic_data"], np.array(items[0].points + items[0].points[:1]) + 0.5)
    r = items[0].result
    assert poly["values"]["Mean"] == (pytest.approx(r["mean"]), "[hnsf'U]")
    assert poly["values"]["Area"][0] == pytest.approx(r["area_mm2"]) and poly["values"]["Area"][1] == "mm2"
    assert poly["values"]["Minimum"][0] == r["min"] and poly["values"]["Maximum"][0] == r["max"]
    free = back[f"viewer freehand {items[1].id}"]
    assert free["values"]["Area"][0] == pytest.approx(items[1].result["area_mm2"])
    assert free["sop_instance_uid"] != poly["sop_instance_uid"]  # drawn on the next slice
    assert poly["sop_instance_uid"] == uid_k
    ang = back[f"viewer angle {items[2].id}"]
    assert ang["values"]["Angle"] == (pytest.approx(90.0), "deg")
    arrow = back[f"viewer arrow {items[3].id}"]
    assert arrow["text"] == "calcification" and np.allclose(arrow["graphic_data"][-1], np.add(items[3].points[0], 0.5))
    note = back[f"viewer text {items[4].id}"]
    assert note["graphic_type"] == "POINT" and note["text"] == "see prior ✓"
    assert back[f"viewer ruler {items[5].id}"]["values"]["Length"][0] == pytest.approx(items[5].result["length"])
    assert back[f"viewer ellipse {items[6].id}"]["graphic_type"] == "ELLIPSE"


def test_nothing_to_export_is_one_line(ct_volume, tmp_path):
    from imaging_assist.export.dicom_common import DicomExportError

    with pytest.raises(DicomExportError) as e:
        write_measurement_sr(ct_volume, [Measurement("text", [(1, 1)], text="")], tmp_path / "x.dcm")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["bell\x07", "\x00nul", "tab\there\nnext line", "back\\slash"])
def test_a_pasted_control_character_does_not_make_the_objects_invalid(ct_volume, tmp_path, text):
    """A note with a NUL or BEL (pasted into the text tool) made the SR and the GSPS fail
    dciodvfy ("Character invalid for this VR"), and a backslash ended the GSPS export in an
    internal error (pydicom refuses it in ST); such characters become spaces, line breaks stay,
    a backslash stays in the SR and becomes "/" in the GSPS."""
    from imaging_assist.export.presentation_state import build_presentation_state

    k = ct_volume.array.shape[0] // 2
    items = [Measurement("text", [(30, 200)], index=k, text=text),
             Measurement("arrow", [(80, 80), (120, 40)], index=k, text=text)]
    for m in items:
        m.compute_on(ct_volume)
    p = write_measurement_sr(ct_volume, items, tmp_path / "m.dcm")
    assert dciodvfy_errors(p) == []
    clean = text.replace("\x07", " ").replace("\x00", " ").replace("\t", " ")
    assert [g["text"].rstrip() for g in read_measurement_sr(p)] == [clean.rstrip()] * 2
    ps = build_presentation_state(ct_volume, items)
    ps.save_as(tmp_path / "ps.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "ps.dcm") == []


def test_a_value_highdicom_refuses_is_one_export_error(ct_volume, tmp_path, monkeypatch):
    """highdicom's and pydicom's own checks (ValueError, TypeError) end an export in one
    DicomExportError line naming the object, never an internal error."""
    from imaging_assist.export import dicom_common as dc
    from imaging_assist.export import sr_measurements

    with pytest.raises(dc.DicomExportError, match=r"^SEG not written: bad value$"):
        with dc.building("SEG"):
            raise ValueError("bad\nvalue")

    def refuse(*a, **k):
        raise ValueError("Values of DICOM value representation Long String (LO) must not contain "
                         "the backslash character.")

    monkeypatch.setattr(sr_measurements, "build_measurement_sr", refuse)
    k = ct_volume.array.shape[0] // 2
    with pytest.raises(dc.DicomExportError, match="SR not written: .*backslash"):
        sr_measurements.write_measurement_sr(ct_volume, [Measurement("ruler", [(1, 1), (5, 5)], index=k)],
                                             tmp_path / "x.dcm")


def test_an_ellipse_with_no_pixel_inside_is_left_out_not_the_whole_sr(ct_volume, tmp_path):
    """An ellipse smaller than a pixel (drawn zoomed in) has no statistics (NaN): it made the
    whole SR fail, losing the ruler beside it; it is left out with a warning, as a polygon is."""
    ok = Measurement("ruler", [(10, 10), (40, 10)], index=5)
    tiny = Measurement("ellipse", [(20.1, 20.1), (20.8, 20.8)], index=5)
    for m in (ok, tiny):
        m.compute_on(ct_volume)
    assert not tiny.result.get("n")
    warn: list = []
    path = write_measurement_sr(ct_volume, [ok, tiny], tmp_path / "sr.dcm", warnings=warn)
    assert any(f"measurement {tiny.id} (ellipse)" in w for w in warn), warn
    back = read_measurement_sr(str(path))
    assert len(back) == 1 and not dciodvfy_errors(path)


def _scoord(seq):
    for it in seq or []:
        if it.get("ValueType") == "SCOORD":
            return it
        r = _scoord(it.get("ContentSequence"))
        if r is not None:
            return r
    return None


def test_a_long_freehand_outline_is_written_readable_and_a_long_un_one_read_right(ct_volume, tmp_path):
    """Over 8,191 points a 2D GraphicData cannot be FL in Explicit VR: pydicom writes UN, which
    highdicom could not parse and our readers took one byte per coordinate. Written outlines are
    thinned to 8,000 vertices; a UN GraphicData (another tool's file) is decoded as FL."""
    import pydicom

    from imaging_assist.dicom.result_objects import read_sr
    from imaging_assist.dicom.sr_regions import place_regions

    n = 9000
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    m = Measurement("freehand", list(zip(256 + 150 * np.cos(t), 256 + 150 * np.sin(t))), index=5)
    m.compute_on(ct_volume)
    path = write_measurement_sr(ct_volume, [m], tmp_path / "sr.dcm")
    ds = pydicom.dcmread(str(path))
    el = _scoord(ds.ContentSequence)["GraphicData"]
    assert el.VR == "FL" and 7000 < len(el.value) // 2 <= 8000
    assert len(read_measurement_sr(str(path))) == 1  # highdicom parses it
    # another tool's SR with 9,001 points: stored as UN, decoded as 32-bit floats
    want = np.stack([100 + 50 * np.cos(t), 120 + 50 * np.sin(t)], 1).astype(np.float32)
    want = np.vstack([want, want[:1]])
    _scoord(ds.ContentSequence).GraphicData = want.ravel().tolist()
    ds.save_as(str(tmp_path / "un.dcm"))
    raw = pydicom.dcmread(str(tmp_path / "un.dcm"))
    assert _scoord(raw.ContentSequence)["GraphicData"].VR == "UN"
    rep = read_sr(str(tmp_path / "un.dcm"))
    regions = [r for it in rep.items for r in it.regions]
    assert regions, rep.warnings
    pts = np.asarray(regions[0].points)
    assert pts.shape == (n + 1, 2) and np.allclose(pts, want)
    layer, _w = place_regions(rep, ct_volume)
    assert layer is not None and len(layer.shapes) >= 1
    # millions of coordinates (a hostile file) are refused from the byte length, in one line
    _scoord(ds.ContentSequence).GraphicData = np.zeros(2_000_000, np.float32).tolist()
    ds.save_as(str(tmp_path / "huge.dcm"))
    rep = read_sr(str(tmp_path / "huge.dcm"))
    assert not [r for it in rep.items for r in it.regions]
    assert any("over 120000" in w for w in rep.warnings + [w for it in rep.items for w in getattr(it, "warnings", [])]), \
        rep.warnings
