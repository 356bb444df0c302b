"""Measurements (no Qt): distance, angle, ROI statistics in modality units."""

import math

import numpy as np
import pytest

from imaging_assist.measure import Measurement, angle_deg, distance_mm, roi_mask, roi_stats


def test_distance_uses_pixel_spacing_per_axis():
    assert distance_mm((100, 50), (200, 50), (0.451171875, 0.451171875)) == pytest.approx(45.1171875)
    assert distance_mm((0, 0), (3, 4), (1.0, 1.0)) == pytest.approx(5.0)
    assert distance_mm((0, 0), (10, 10), (0.5, 2.0)) == pytest.approx(math.hypot(5, 20))


def test_angle_in_mm_space():
    assert angle_deg((10, 0), (0, 0), (0, 10)) == pytest.approx(90.0)
    assert angle_deg((10, 0), (0, 0), (-10, 0)) == pytest.approx(180.0)
    # 45 degrees in pixels is not 45 degrees when pixels are not square
    assert angle_deg((10, 0), (0, 0), (10, 10), (1.0, 2.0)) == pytest.approx(math.degrees(math.atan(2.0)))


def test_rectangle_roi_exact_stats():
    img = np.arange(100, dtype=np.int16).reshape(10, 10) - 50
    st = roi_stats(img, "rectangle", (2, 3), (4, 5), (0.5, 0.5))
    vals = img[3:6, 2:5].astype(float)
    assert st.n == 9
    assert st.mean == pytest.approx(vals.mean())
    assert st.sd == pytest.approx(vals.std(ddof=1))
    assert (st.min, st.max) == (vals.min(), vals.max())
    assert st.area_mm2 == pytest.approx(1.0 * 1.0)  # 2x2 px drawn at 0.5 mm


def test_ellipse_roi_counts_pixel_centres_inside():
    img = np.full((101, 101), 40.0)
    img[50, 50] = 1000.0
    st = roi_stats(img, "ellipse", (30, 30), (70, 70), (1.0, 1.0))
    assert abs(st.n - math.pi * 20 * 20) / (math.pi * 400) < 0.02
    assert st.area_mm2 == pytest.approx(math.pi * 20 * 20)
    assert st.max == 1000.0 and st.min == 40.0
    mask, (r0, r1, c0, c1) = roi_mask(img.shape, "ellipse", (30, 30), (70, 70))
    assert mask.sum() == st.n and (r0, c0) == (30, 30)


def test_roi_outside_image_and_colour():
    st = roi_stats(np.zeros((5, 5)), "rectangle", (10, 10), (20, 20))
    assert st.n == 0 and math.isnan(st.mean)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 100
    assert roi_stats(rgb, "rectangle", (0, 0), (3, 3)).mean == pytest.approx(29.9)


def test_measurement_text_and_dict():
    m = Measurement("ruler", [(100, 10), (200, 10)], axis=0, index=7)
    r = m.compute(None, (0.451171875, 0.451171875), "HU")
    assert r["text"] == ["45.1 mm"] and m.summary() == "45.1 mm"
    img = np.full((20, 20), 35, np.int16)
    roi = Measurement("ellipse", [(2, 2), (12, 12)])
    roi.compute(img, (1.0, 1.0), "HU")
    assert roi.result["text"][0].startswith("Mean 35.0 HU")
    assert "mm²" in roi.result["text"][2]
    assert roi.to_dict()["mean"] == 35.0
    px = Measurement("ruler", [(0, 0), (0, 10)])
    assert px.compute(None, (1.0, 1.0), "", "px")["text"] == ["10.0 px"]
    with pytest.raises(ValueError):
        Measurement("circle", [(0, 0)])


def test_user_calibration_sets_the_spacing_source():
    from imaging_assist.volume import Volume
    vol = Volume(array=np.zeros((1, 20, 30), np.int16), has_geometry=False)
    assert vol.spacing_source == "none" and not vol.spacing_known
    m = Measurement("ruler", [(0, 0), (10, 0)])
    m.compute_on(vol)
    assert m.summary() == "10.0 px (no spacing)"
    vol.calibrate(0.2)
    assert vol.spacing_source == "calibrated" and vol.spacing_known and vol.spacing[:2] == (0.2, 0.2)
    assert any("calibrated" in w for w in vol.warnings)
    m.compute_on(vol)
    assert m.summary() == "2.0 mm (calibrated)" and m.to_dict()["spacing_source"] == "calibrated"
    with pytest.raises(ValueError):
        vol.calibrate(float("nan"))


# A freehand figure eight (two triangles 40 px wide and high, crossing at x = 40) and an outline
# that goes round twice (a 40 px square with a 20 px square inside it, joined by a thin cut).
FIGURE_EIGHT = [(0, 0), (80, 40), (80, 0), (0, 40)]
TWICE_ROUND = [(0, 0), (40, 0), (40, 40), (0, 40), (0, 10), (30, 10), (30, 30), (10, 30), (10, 5), (0, 5)]


@pytest.mark.parametrize("outline, area", [(FIGURE_EIGHT, 2 * 40 * 40 / 2), (TWICE_ROUND, 40 * 40 - 20 * 20 - 10 * 5)])
def test_outline_that_crosses_itself_measures_what_is_filled(outline, area):
    """The area of an outline that crosses itself is that of the parts drawn filled and counted
    (even-odd), not the shoelace formula's (0 for the figure eight: its lobes cancel)."""
    from imaging_assist.measure import outline_area, polygon_stats
    assert outline_area(outline) == (pytest.approx(area), True)
    img = np.ones((100, 100))
    st = polygon_stats(img, outline, (0.5, 0.5))
    assert st.crosses_itself and st.area_mm2 == pytest.approx(area / 4)
    # the pixels counted agree with the area: centres inside or on the outline (as a rectangle
    # and an ellipse count theirs), so at most the outline's pixels (half its length) beyond it
    pts = np.asarray(outline, float)
    length = float(np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1).sum())
    assert 0 <= st.n - area <= length / 2 + 4, (st.n, area, length)
    m = Measurement("freehand", outline)
    r = m.compute(img, (0.5, 0.5), "HU")
    assert r["text"][-1] == "Outline crosses itself: filled parts only" and r["crosses_itself"]
    simple = Measurement("freehand", [(0, 0), (40, 0), (40, 40), (0, 40)])
    simple.compute(img, (0.5, 0.5), "HU")
    assert not simple.result["crosses_itself"] and len(simple.result["text"]) == 3
    assert simple.result["area_mm2"] == pytest.approx(400)


def test_a_polygon_counts_the_same_pixels_whichever_way_it_was_drawn():
    """Pixel centres on the outline are counted (as the rectangle counts them): the count no
    longer depends on the direction the polygon was drawn (a 10-pixel square gave 110 or 90)."""
    from imaging_assist.measure import polygon_stats, roi_stats

    img = np.arange(200 * 200, dtype=float).reshape(200, 200)
    square = [(100, 100), (110, 100), (110, 110), (100, 110)]
    a, b = polygon_stats(img, square, (1.0, 1.0)), polygon_stats(img, square[::-1], (1.0, 1.0))
    r = roi_stats(img, "rectangle", (100, 100), (110, 110), (1.0, 1.0))
    assert a.n == b.n == r.n == 121 and a.mean == b.mean == r.mean

