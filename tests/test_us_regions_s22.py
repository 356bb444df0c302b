"""Ultrasound regions (PS3.3 C.8.5.5.1): a region's Physical Delta applies inside that region
only.  A B-mode image (cm) above a spectral Doppler strip (s, cm/s) gave the whole image the
B-mode pixel size, so a ruler in the Doppler strip read "28.0 mm (calibrated)" (280 cm/s)."""

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging_assist.dicom import load_series, scan
from imaging_assist.measure import Measurement
from test_dicom_values import _write_dx  # a 20 x 30 synthetic image

OUTSIDE_REGION_NOTE = "outside the calibrated ultrasound region"  # (measure.OUTSIDE_REGION_NOTE)


def _region(x0, y0, x1, y1, ux, uy, dx, dy):
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0 = x0, y0
    r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x1, y1
    r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection = ux, uy  # 3 cm, 4 s, 7 cm/s
    r.PhysicalDeltaX, r.PhysicalDeltaY = dx, dy
    return r


def _us(folder, regions):
    _write_dx(folder / "us.dcm", {"Modality": "US", "SequenceOfUltrasoundRegions": Sequence(regions)})
    return load_series(scan(str(folder)).image_series()[0])


@pytest.fixture
def bmode_doppler(tmp_path):
    """Rows 0-9: B-mode, 0.2 x 0.3 mm; rows 10-19: spectral Doppler (x seconds, y cm/s)."""
    return _us(tmp_path, [_region(0, 0, 29, 9, 3, 3, 0.02, 0.03), _region(0, 10, 29, 19, 4, 7, 0.01, 2.0)])


def _measured(vol, kind, pts):
    m = Measurement(kind, pts)
    m.compute_on(vol)
    return m


def test_the_regions_are_kept_and_the_image_as_a_whole_has_no_pixel_size(bmode_doppler):
    vol = bmode_doppler
    assert vol.spacing_source == "none" and not vol.spacing_known
    assert vol.calibrated_regions == [(0, 0, 29, 9, pytest.approx(0.2), pytest.approx(0.3))]
    assert any("SequenceOfUltrasoundRegions" in w and "Doppler" in w for w in vol.warnings)


def test_mm_inside_the_calibrated_region_only(bmode_doppler):
    vol = bmode_doppler
    inside = _measured(vol, "ruler", [(5, 1), (5, 9)])  # 8 rows of 0.3 mm in the B-mode image
    assert inside.result["length"] == pytest.approx(2.4) and inside.summary() == "2.4 mm (calibrated)"
    doppler = _measured(vol, "ruler", [(5, 11), (5, 19)])  # 8 rows of 2 cm/s: not a length
    assert doppler.result["length_unit"] == "px" and doppler.result["length"] == pytest.approx(8.0)
    assert doppler.summary() == f"8.0 px ({OUTSIDE_REGION_NOTE})"
    across = _measured(vol, "ruler", [(5, 5), (5, 15)])
    assert across.result["length_unit"] == "px" and across.summary().startswith("10.0 px (")
    # the edge of a region is half a pixel beyond its last pixel's centre
    assert _measured(vol, "ruler", [(-0.5, 9.5), (29.5, 9.5)]).result["length_unit"] == "mm"


def test_areas_follow_the_same_rule(bmode_doppler):
    vol = bmode_doppler
    rect = _measured(vol, "rectangle", [(2, 2), (12, 8)])
    assert rect.result["length_unit"] == "mm" and rect.result["area_mm2"] == pytest.approx(10 * 0.2 * 6 * 0.3)
    poly = _measured(vol, "polygon", [(2, 12), (12, 12), (12, 18)])
    assert poly.result["length_unit"] == "px" and poly.result["area_mm2"] == pytest.approx(30.0)
    assert "px²" in poly.summary() and OUTSIDE_REGION_NOTE in poly.summary()
    assert any(OUTSIDE_REGION_NOTE in t for t in poly.result["text"])  # on the image's label too
    ell = _measured(vol, "ellipse", [(2, 2), (12, 18)])  # over both regions
    assert ell.result["length_unit"] == "px" and ell.result["n"] > 0


def test_regions_with_different_pixel_sizes_each_measure_in_mm(tmp_path):
    vol = _us(tmp_path, [_region(0, 0, 14, 19, 3, 3, 0.02, 0.02), _region(15, 0, 29, 19, 3, 3, 0.05, 0.05)])
    assert vol.spacing_source == "none" and len(vol.calibrated_regions) == 2
    assert _measured(vol, "ruler", [(1, 1), (1, 11)]).result["length"] == pytest.approx(2.0)
    assert _measured(vol, "ruler", [(20, 1), (20, 11)]).result["length"] == pytest.approx(5.0)
    assert _measured(vol, "ruler", [(1, 1), (20, 1)]).result["length_unit"] == "px"


@pytest.mark.parametrize("regions", [
    [_region(0, 0, 29, 19, 3, 3, 0.02, 0.03)],  # one region, the whole image
    [_region(0, 0, 14, 19, 3, 3, 0.02, 0.03), _region(15, 0, 29, 19, 3, 3, 0.02, 0.03)],  # they agree
    [_region(0, 0, 29, 19, 3, 3, 0.02, 0.03), _region(0, 10, 29, 19, 4, 7, 0.01, 2.0)],  # one covers the image
])
def test_one_pixel_size_for_the_whole_image_as_before(tmp_path, regions):
    vol = _us(tmp_path, regions)
    assert vol.spacing_source == "calibrated" and vol.calibrated_regions == []
    assert vol.spacing[:2] == pytest.approx((0.2, 0.3))
    assert _measured(vol, "ruler", [(5, 5), (5, 15)]).summary() == "3.0 mm (calibrated)"


def test_a_calibration_by_the_user_applies_to_the_whole_image(bmode_doppler):
    vol = bmode_doppler
    vol.calibrate(0.5)
    assert _measured(vol, "ruler", [(5, 11), (5, 19)]).summary() == "4.0 mm (calibrated)"


def test_the_sr_says_the_units_the_screen_says(bmode_doppler, tmp_path):
    from imaging_assist.export.sr_measurements import read_measurement_sr, write_measurement_sr

    items = [Measurement("ruler", [(5, 1), (5, 9)]), Measurement("ruler", [(5, 11), (5, 19)]),
             Measurement("polygon", [(2, 12), (12, 12), (12, 18)])]
    for m in items:
        m.compute_on(bmode_doppler)
    back = {g["tracking_id"]: g for g in read_measurement_sr(
        write_measurement_sr(bmode_doppler, items, tmp_path / "sr.dcm"))}
    assert back[f"viewer ruler {items[0].id}"]["values"]["Length"] == (pytest.approx(2.4), "mm")
    assert back[f"viewer ruler {items[1].id}"]["values"]["Length"] == (pytest.approx(8.0), "{pixels}")
    assert back[f"viewer polygon {items[2].id}"]["values"]["Area"] == (pytest.approx(30.0), "{pixels}")


def test_the_viewer_measures_as_the_engine(bmode_doppler, qapp):
    """The viewer's document computes its labels through the same rule (it called compute()
    with the whole image's spacing, so the B-mode part read px as well)."""
    from imaging_assist_ui.radiology.document import ViewerDocument

    doc = ViewerDocument()
    doc.set_volume(bmode_doppler)
    inside = doc.compute_measurement(Measurement("ruler", [(5, 1), (5, 9)]))
    assert inside["length_unit"] == "mm" and inside["length"] == pytest.approx(2.4)
    assert inside["display_text"][0].endswith("(calibrated)")
    doppler = doc.compute_measurement(Measurement("ruler", [(5, 11), (5, 19)]))
    assert doppler["length_unit"] == "px" and any(OUTSIDE_REGION_NOTE in t for t in doppler["display_text"])


def test_the_corner_says_mm_inside_the_region(bmode_doppler):
    """The corner said "Lengths in px (no pixel spacing)" beside a ruler reading mm."""
    from imaging_assist_ui.shared.units import corner_note

    assert corner_note(bmode_doppler.spacing_source, bool(bmode_doppler.calibrated_regions)) == \
        "Lengths in mm inside the calibrated region, else px"
    assert corner_note("none") == "Lengths in px (no pixel spacing)"
