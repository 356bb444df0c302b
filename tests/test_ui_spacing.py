"""Every length and area the viewer shows names where its pixel size comes from
(Volume.spacing_source), and a corner annotation says when lengths are not patient mm.

Real CR without any spacing (px), built copies of it with ImagerPixelSpacing (+ ERMF), and
the CT phantom (PixelSpacing)."""

import os

import pydicom
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _qt import open_window, wait_until as _wait  # noqa: E402
from conftest import CT_PHANTOM, DICOM, need  # noqa: E402

pytestmark = pytest.mark.gui

CR = DICOM / "cr_chest_monochrome1_fuji"


def _built_cr(folder, **extra):
    ds = pydicom.dcmread(need(CR / "CR-MONO1-10-chest.dcm"), force=True)
    for k, v in extra.items():
        setattr(ds, k, v)
    folder.mkdir()
    ds.save_as(folder / "a.dcm", implicit_vr=True, little_endian=True)
    return folder


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory):
    w = open_window(tmp_path_factory, str(need(CR)))
    yield w
    w.close()


def _open(win, path):
    win.open_path(str(path))
    assert _wait(lambda: win.load_state == "done"), win.last_error
    assert _wait(lambda: win.doc.volume is not None and not win.doc.loading)


def _measure(win):
    from imaging_assist.measure import Measurement
    ruler = Measurement("ruler", [(0, 0), (30, 40)], 0, 0)
    roi = Measurement("rectangle", [(10, 10), (20, 20)], 0, 0)
    for m in (ruler, roi):  # as the viewer does: compute, then add
        win.doc.compute_measurement(m)
        win.doc.add_measurement(m)
    return ruler, roi


def _corner(win):
    ann = win.view_area.single.annotation_text()
    return [s for lines in ann.values() for s in lines]


def test_real_cr_without_spacing_reads_pixels_and_says_so(win):
    _open(win, need(CR))
    win.doc.clear_measurements()
    assert win.doc.volume.spacing_source == "none"
    ruler, roi = _measure(win)
    assert ruler.result["display_text"] == ["50.0 px (no pixel spacing)"]
    assert roi.result["display_text"][-1].startswith("Area 100.0 px²") and roi.result["display_text"][-1].endswith("(no pixel spacing)")
    values = [r[1] for r in win.measure_panel.rows()]
    assert values[0].startswith("50.0 px") and "no" in values[0] and "spacing" in values[0]
    assert any("px (no pixel spacing)" in s for s in _corner(win)), _corner(win)


def test_ermf_and_detector_spacing_are_named(win, tmp_path):
    ermf = _built_cr(tmp_path / "ermf", ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=1.1)
    _open(win, ermf)
    win.doc.clear_measurements()
    assert win.doc.volume.spacing_source == "ImagerPixelSpacing/ERMF"
    ruler, roi = _measure(win)
    assert ruler.result["display_text"] == [f"{50 * 0.2 / 1.1:.1f} mm (ImagerPixelSpacing/ERMF)"]
    assert roi.result["display_text"][-1].endswith("(ImagerPixelSpacing/ERMF)") and "mm²" in roi.result["display_text"][-1]
    assert all("(ImagerPixelSpacing/ERMF)" in r[1] for r in win.measure_panel.rows())
    assert any("ImagerPixelSpacing/ERMF" in s for s in _corner(win)), _corner(win)

    det = _built_cr(tmp_path / "ips", ImagerPixelSpacing=[0.2, 0.2],
                    SeriesInstanceUID=pydicom.uid.generate_uid(), SOPInstanceUID=pydicom.uid.generate_uid())
    _open(win, det)
    win.doc.clear_measurements()
    assert win.doc.volume.spacing_source == "ImagerPixelSpacing"
    ruler, _ = _measure(win)
    assert ruler.result["display_text"] == ["10.0 mm (ImagerPixelSpacing)"]
    assert any("detector" in s and "ImagerPixelSpacing" in s for s in _corner(win)), _corner(win)


def test_ct_pixel_spacing_named_without_corner_note(win):
    _open(win, need(CT_PHANTOM))
    win.doc.clear_measurements()
    assert win.doc.volume.spacing_source == "PixelSpacing"
    ruler, _ = _measure(win)
    assert ruler.result["display_text"][0].endswith(" mm (PixelSpacing)")
    assert not any("spacing" in s.lower() or "detector" in s for s in _corner(win)), _corner(win)


def test_model_sizes_name_their_spacing_source():
    from imaging_assist.inference.results import SegmentationResult
    from imaging_assist_ui.ai.model_support import size_lines

    def res(**kw):
        return SegmentationResult(model_id="m", model_version="1", task="segmentation", labels=["bg", "lung"], voxel_counts={"lung": 1000}, **kw)

    assert size_lines(res(area_mm2={"lung": 40.0}, spacing_source="ImagerPixelSpacing/ERMF")) == [
        "lung: 40.0 mm² (1,000 pixels; ImagerPixelSpacing/ERMF)"]
    assert size_lines(res(volume_ml={"lung": 1.5}, spacing_source="PixelSpacing")) == [
        "lung: 1.50 mL (1,000 voxels; PixelSpacing)"]
    assert size_lines(res(spacing_source="none")) == ["lung: 1,000 px (no pixel spacing)"]


def test_explanation_region_areas_name_their_spacing_source():
    from types import SimpleNamespace

    from imaging_assist_ui.ai.model_panel import result_html

    card = SimpleNamespace(name="Pneumonia", id="cxr-pneumonia", version="1", task="classification")
    hm = SimpleNamespace(array=__import__("numpy").zeros((1, 4, 4), "float32"), method="gradcam", label="pneumonia",
                         faithfulness=None)
    for src, note in (("ImagerPixelSpacing/ERMF", "(ImagerPixelSpacing/ERMF)"), ("none", "(no pixel spacing)")):
        er = {"name": "lungs", "heatmap": "pneumonia", "fraction_inside": 0.8, "region_fraction_of_image": 0.3,
              "areas": {"right_lung": 1200.0}, "area_unit": "mm2" if src != "none" else "px", "spacing_source": src}
        res = SimpleNamespace(labels=[], probabilities={}, decisions={}, per_slice=None, heatmaps=[hm],
                              explanation_region=er, device="cpu", precision="fp32", timings={})
        html = result_html(res, card, None)
        assert "right lung 1,200" in html and note in html, html


def test_built_ct_without_pixel_spacing_reads_pixels(win, tmp_path):
    d = tmp_path / "ct_nospacing"
    d.mkdir()
    for i, f in enumerate(sorted(need(CT_PHANTOM).iterdir())[:3]):
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(d / f"{i}.dcm")
    _open(win, d)
    win.doc.clear_measurements()
    vol = win.doc.volume
    assert vol.spacing_source == "none" and vol.units == "HU"
    ruler, roi = _measure(win)
    assert ruler.result["display_text"] == ["50.0 px (no pixel spacing)"]
    assert "px²" in roi.result["display_text"][-1] and "mm" not in " ".join(roi.result["display_text"])
    assert "HU" in roi.result["display_text"][0]
    assert any("px (no pixel spacing)" in s for s in _corner(win)), _corner(win)
    assert not any(" mm" in r[1] for r in win.measure_panel.rows())
