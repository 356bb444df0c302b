"""A reading workstation's annotations saved as a Grayscale Softcopy Presentation State
(imaging_assist.dicom.presentation_state): graphic and text objects land on the pixels and
images they name, in their layer's colour; what the viewer does not apply is said; hostile
objects are one line or left out, never drawn wrongly."""

import copy
import io
import warnings

import numpy as np
import pydicom
import pytest

from conftest import link_ct_phantom, need
from test_result_objects import _sources, hd

from imaging_assist.dicom import scan
from imaging_assist.dicom.presentation_state import MAX_OBJECTS, read_presentation_state
from imaging_assist.dicom.result_objects import PR, ResultObjectError, read_result
from imaging_assist.layers import Plane, standard_planes

K = 50
PIXEL, DISPLAY = hd.pr.AnnotationUnitsValues.PIXEL, hd.pr.AnnotationUnitsValues.DISPLAY


def _gsps(src, objects, texts=(), k=K, voi=None, extra_annotations=()):
    layer = hd.pr.GraphicLayer(layer_name="READER", order=1, description="reader",
                               display_color=hd.color.CIELabColor(53.2, 80.1, 67.2))  # sRGB red
    anns = [hd.pr.GraphicAnnotation(referenced_images=[src[k]], graphic_layer=layer,
                                    graphic_objects=list(objects) or None, text_objects=list(texts) or None)
            ] if list(objects) or list(texts) else []
    kw = {"voi_lut_transformations": voi} if voi else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=src, series_instance_uid=hd.UID(), series_number=400, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="Other Workstation", manufacturer_model_name="RW", software_versions="1",
            device_serial_number="1", content_label="READING", graphic_layers=[layer],
            graphic_annotations=[*anns, *extra_annotations], **kw)
    buf = io.BytesIO()
    ps.save_as(buf)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def src(ct_volume):
    return _sources(ct_volume)


def test_graphic_and_text_objects_land_on_their_pixels(ct_volume, src):
    poly = np.array([[100.5, 120.5], [160.5, 120.5], [160.5, 140.5], [100.5, 120.5]])
    objs = [hd.pr.GraphicObject("POLYLINE", poly, PIXEL),
            hd.pr.GraphicObject("CIRCLE", np.array([[300.5, 300.5], [310.5, 300.5]]), PIXEL),
            hd.pr.GraphicObject("ELLIPSE", np.array([[200.5, 400.5], [240.5, 400.5], [220.5, 390.5], [220.5, 410.5]]), PIXEL),
            hd.pr.GraphicObject("POINT", np.array([[50.5, 60.5]]), PIXEL),
            hd.pr.GraphicObject("INTERPOLATED", np.array([[10.5, 10.5], [30.5, 20.5], [50.5, 10.5]]), PIXEL),
            hd.pr.GraphicObject("POINT", np.array([[0.5, 0.5]]), DISPLAY)]  # the middle of the displayed area
    texts = [hd.pr.TextObject("look here", PIXEL, anchor_point=(400.5, 100.5), anchor_point_visible=True),
             hd.pr.TextObject("boxed note", PIXEL, bounding_box=(20.0, 30.0, 120.0, 50.0))]
    ps = read_presentation_state(_gsps(src, objs, texts), ct_volume)
    assert ps.label == "READING" and ps.warnings == []
    shapes = ps.layer.shapes
    assert [s.text() for s in shapes] == ["polyline", "circle", "ellipse", "point", "interpolated", "point",
                                          "look here", "boxed note"]
    by = dict(zip(range(len(shapes)), shapes))
    assert all(np.allclose(s.points[:, 0], K) for s in shapes)
    assert by[0].closed and np.allclose(by[0].points[:, [2, 1]], poly[:3] - 0.5)
    c = by[1].points
    assert np.allclose(np.hypot(c[:, 2] - 300, c[:, 1] - 300), 10.0) and by[1].closed
    e = by[2].points
    assert e[:, 2].min() == pytest.approx(200) and e[:, 2].max() == pytest.approx(240)
    assert e[:, 1].min() == pytest.approx(390, abs=0.01) and e[:, 1].max() == pytest.approx(410, abs=0.01)
    assert by[3].kind == "points" and np.allclose(by[3].points, [(K, 60, 50)])
    assert not by[4].closed and np.allclose(by[4].points[:, [2, 1]], [[10, 10], [30, 20], [50, 10]])
    rows, cols = ct_volume.array.shape[1:3]
    assert np.allclose(by[5].points, [(K, rows / 2 - 0.5, cols / 2 - 0.5)])  # DISPLAY: the full image here
    assert by[6].kind == "points" and by[6].label == ["look here"] and np.allclose(by[6].points, [(K, 100, 400)])
    assert by[7].kind == "text" and np.allclose(by[7].points, [(K, 29.5, 19.5)])  # the box's top left corner
    # the layer's recommended colour (CIELab of sRGB red)
    assert all(abs(a - b) <= 3 for a, b in zip(shapes[0].color, (255, 0, 0)))
    # drawn on its image, in the acquired plane only
    shape3 = ct_volume.array.shape[:3]
    assert len(ps.layer.near(Plane.native(), K, shape3)) == 8 and ps.layer.near(Plane.native(), K + 1, shape3) == []
    cor = standard_planes(ct_volume.direction)[1]
    assert ps.layer.near(cor, 60 if cor.axis == 1 else 50, shape3) == []


def test_what_is_not_drawn_or_not_applied_is_said(ct_volume, src, tmp_path):
    voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=40.0, window_width=400.0)]
    objs = [hd.pr.GraphicObject("POLYLINE", np.array([[10.5, 10.5], [20.5, 10.5]]), PIXEL)]
    ds = _gsps(src, objs, voi=voi)
    ds.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData = [5000.5, 5000.5, 5100.5, 5000.5]  # off it
    ps = read_presentation_state(ds, ct_volume)
    assert ps.layer is None
    assert ps.warnings == ["1 annotation not drawn: outside the image",
                           "its window is not applied: only its annotations are shown; its window is offered "
                           "in Window presets"]
    assert [(w.name, w.center, w.width, w.source) for w in ps.windows] == [("READING window", 40.0, 400.0, "presentation")]
    # an annotation on an image of another series
    other = copy.deepcopy(src[K])
    other.SOPInstanceUID = hd.UID()
    ok = [hd.pr.GraphicObject("POINT", np.array([[10.5, 10.5]]), PIXEL)]
    layer = hd.pr.GraphicLayer(layer_name="READER", order=1)
    stray = hd.pr.GraphicAnnotation(referenced_images=[other], graphic_layer=layer, graphic_objects=ok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = read_presentation_state(_gsps(src + [other], ok, extra_annotations=[stray]), ct_volume)
    assert len(ps.layer.shapes) == 1 and ps.warnings == ["1 annotation not drawn: on images that are not in this series"]
    # DISPLAY units with a rotated presentation: left out, said
    ds = _gsps(src, [hd.pr.GraphicObject("POINT", np.array([[0.5, 0.5]]), DISPLAY)])
    ds.ImageRotation = 90
    ps = read_presentation_state(ds, ct_volume)
    assert ps.layer is None and "display units" in ps.warnings[0] and "rotation or flip" in ps.warnings[1]


def test_hostile_presentation_states_are_one_line_or_left_out(ct_volume, src):
    base = _gsps(src, [hd.pr.GraphicObject("POLYLINE", np.array([[10.5, 10.5], [20.5, 20.5]]), PIXEL)])
    obj = base.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    for data, why in (([float("nan")] * 4, "not finite"), ([1.0, 2.0, 3.0], "not pairs"), ([1.0, 2.0], "1 points"),
                      ([], "0 graphic data")):
        ds = copy.deepcopy(base)
        ds.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData = data
        ps = read_presentation_state(ds, ct_volume)
        assert ps.layer is None and len(ps.warnings) == 1 and why in ps.warnings[0], (data, ps.warnings)
    ds = copy.deepcopy(base)
    ds.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicType = "SPLINE"
    assert "graphic type SPLINE" in read_presentation_state(ds, ct_volume).warnings[0]
    ds = copy.deepcopy(base)
    ds.GraphicAnnotationSequence[0].GraphicObjectSequence = [obj] * (MAX_OBJECTS + 1)
    with pytest.raises(ResultObjectError, match="more than"):
        read_presentation_state(ds, ct_volume)
    # few objects, but each on every image the state references (no image references of its own)
    ds = copy.deepcopy(base)
    ds.GraphicAnnotationSequence[0].GraphicObjectSequence = [obj] * (MAX_OBJECTS // 100)
    del ds.GraphicAnnotationSequence[0].ReferencedImageSequence
    with pytest.raises(ResultObjectError, match="places more than"):
        read_presentation_state(ds, ct_volume)  # 100 objects x 140 images
    buf = io.BytesIO()
    base.save_as(buf)
    data = buf.getvalue()
    for cut in (len(data) // 2, len(data) - 7):
        with pytest.raises(ResultObjectError) as e:
            read_presentation_state(io.BytesIO(data[:cut]), ct_volume)
        assert "\n" not in str(e.value)
    with pytest.raises(ResultObjectError, match="not a softcopy presentation state"):
        read_presentation_state(src[0], ct_volume)


def test_index_and_info_list_it_as_a_result_of_its_series(ct_volume, src, tmp_path, capsys):
    d = link_ct_phantom(tmp_path / "study")
    _gsps(src, [hd.pr.GraphicObject("POINT", np.array([[50.5, 60.5]]), PIXEL)],
          [hd.pr.TextObject("look here", PIXEL, anchor_point=(400.5, 100.5))]).save_as(d / "gsps.dcm")
    idx = scan(str(d))
    (ps,) = [s for s in idx.all_series() if s.result_kind]
    assert ps.result_kind == PR and not ps.is_image and ps.references == [ct_volume.series_uid]
    assert [s.key for s in idx.results_for(idx.image_series()[0])] == [ps.key]
    assert read_result(str(d / "gsps.dcm"), ct_volume).layer is not None
    from imaging_assist.cli.main import main
    assert main(["info", str(d / "gsps.dcm")]) == 0
    out = capsys.readouterr().out
    assert "Presentation State" in out and "READING: 2 annotations" in out and f"[image {K + 1}]" in out


def test_an_annotation_without_image_references_is_on_every_referenced_image(ct_volume, src):
    ds = _gsps(src[:3], [hd.pr.GraphicObject("POINT", np.array([[10.5, 20.5]]), PIXEL)], k=1)
    del ds.GraphicAnnotationSequence[0].ReferencedImageSequence
    ps = read_presentation_state(ds, ct_volume)
    assert sorted(int(s.points[0, 0]) for s in ps.layer.shapes) == [0, 1, 2]


def test_frames_of_a_multi_frame_image(src):
    """An annotation on frame 2 of an enhanced MR lands on that frame's slice; without frame
    numbers it is on every frame."""
    from conftest import DICOM
    from imaging_assist.dicom import load_series
    vol = load_series(scan(str(need(DICOM / "mr_enhanced_multiframe_philips"))).image_series()[0])
    mr = _sources(vol)[0]  # one dataset per frame: the same file
    # highdicom refuses this MR as a reference (its per-frame modality LUT): the references are
    # set by hand on a presentation state made for the CT
    ds = _gsps(src, [hd.pr.GraphicObject("POINT", np.array([[5.5, 6.5]]), PIXEL)])
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = mr.SOPClassUID, mr.SOPInstanceUID
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = mr.SeriesInstanceUID
    ds.ReferencedSeriesSequence[0].ReferencedImageSequence = [copy.deepcopy(ref)]
    ds.PatientID, ds.StudyInstanceUID = mr.PatientID, mr.StudyInstanceUID  # the MR's patient and study
    ref.ReferencedFrameNumber = 2
    ds.GraphicAnnotationSequence[0].ReferencedImageSequence = [ref]
    ps = read_presentation_state(ds, vol)
    (shape,) = ps.layer.shapes
    k = int(shape.points[0, 0])
    assert list(vol.frames)[k] == 1 and np.allclose(shape.points[0, 1:], (6, 5))  # frame 2 (0-based 1)
    del ds.GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedFrameNumber
    ps = read_presentation_state(ds, vol)
    assert len(ps.layer.shapes) == vol.n_slices > 1


def test_a_window_equal_to_the_images_own_is_not_offered_again(ct_volume, src):
    ps = read_presentation_state(_gsps(src, [hd.pr.GraphicObject("POINT", np.array([[5.5, 5.5]]), PIXEL)]), ct_volume)
    assert ps.windows == [] and ps.warnings == []  # highdicom copied the images' own window
