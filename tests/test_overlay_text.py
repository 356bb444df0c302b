"""Corner-text content (engine, no Qt): orientation letters of projection and cross-sectional
images, flipped/rotated display, patient age and the labelled date of birth."""

import numpy as np
import pydicom

from imaging_assist.layers import Plane, standard_planes
from imaging_assist.overlay_text import (age_text, dob_text, orientation, parse_patient_orientation,
                                         projection_labels, transform_labels)
from imaging_assist.volume import Volume


def test_patient_orientation_gives_right_and_bottom_and_their_opposites():
    assert projection_labels("A\\F") == {"right": "A", "left": "P", "bottom": "F", "top": "H"}
    assert projection_labels(["L", "F"]) == {"right": "L", "left": "R", "bottom": "F", "top": "H"}
    # oblique codes: every letter reversed
    assert projection_labels("LF\\P")["left"] == "RH"


def test_flipped_and_rotated_display_moves_the_letters():
    lab = projection_labels("A\\F")
    assert projection_labels("A\\F", flip_h=True) == {"right": "P", "left": "A", "bottom": "F", "top": "H"}
    assert projection_labels("A\\F", flip_v=True) == {"right": "A", "left": "P", "bottom": "H", "top": "F"}
    # a quarter turn clockwise: the left edge (P) goes to the top, the top (H) to the right
    assert projection_labels("A\\F", rotate=1) == {"top": "P", "right": "H", "bottom": "A", "left": "F"}
    assert transform_labels(lab, rotate=4) == lab
    assert transform_labels(transform_labels(lab, rotate=1), rotate=3) == lab


def test_unknown_orientation_is_never_guessed():
    for bad in (None, "", "A", "A\\F\\H", "CR\\CD", "X\\F", ["A", ""]):
        assert parse_patient_orientation(bad) is None, bad
        assert projection_labels(bad) is None
    vol = Volume(array=np.zeros((1, 4, 4), np.uint8), spacing=(1, 1, 1), has_geometry=False)
    o = orientation(vol, Plane.native(), None)
    assert o.labels is None and o.why_none == "plain image, no DICOM header"


def test_projection_file_letters_come_from_the_header(tmp_path):
    """The index's fast header read keeps PatientOrientation: the letters need no file read."""
    from imaging_assist.dicom import scan
    from conftest import ROOT
    src = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_03_pa.dcm"
    ds = pydicom.dcmread(src)
    ds.PatientOrientation = ["A", "F"]  # a lateral film
    ds.save_as(tmp_path / "lat.dcm")
    rec = scan(str(tmp_path)).image_series()[0].instances[0]
    vol = Volume(array=np.zeros((1, 4, 4), np.uint8), spacing=(1, 1, 1), has_geometry=False)
    o = orientation(vol, Plane.native(), rec, read_file=False)  # known without a read
    assert o.source == "PatientOrientation"
    assert o.labels == {"right": "A", "left": "P", "bottom": "F", "top": "H"}
    assert orientation(vol, Plane(flip_h=True), rec).labels["right"] == "P"
    # the view's own flip, then quarter turns clockwise (View > Flip / Rotate)
    assert orientation(vol, Plane.native(), rec, flip_h=True).labels == {"right": "P", "left": "A", "bottom": "F",
                                                                         "top": "H"}
    assert orientation(vol, Plane.native(), rec, rotate=1).labels == {"top": "P", "right": "H", "bottom": "A",
                                                                      "left": "F"}
    assert orientation(vol, Plane.native(), rec, rotate=1, flip_h=True).labels == {
        "top": "A", "right": "H", "bottom": "P", "left": "F"}


def test_cross_sectional_letters_come_from_direction_cosines():
    vol = Volume(array=np.zeros((3, 4, 4), np.int16), spacing=(1, 1, 1), has_geometry=True)
    o = orientation(vol, Plane.native(), None)  # identity direction: an axial slice
    assert o.source == "direction cosines"
    assert o.labels == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    cor = standard_planes(vol.direction)[1]
    assert orientation(vol, cor, None).labels["top"] == "S"
    assert orientation(vol, Plane.native(), None, rotate=2).labels["top"] == "P"


def test_age_from_patient_age_else_from_birth_and_study_date():
    assert age_text("047Y") == "Age 47 y"
    assert age_text("006M") == "Age 6 mo"
    assert age_text("", "19770105", "20240104") == "Age 46 y (from DOB)"  # a day before the birthday
    assert age_text("", "19770105", "20240105") == "Age 47 y (from DOB)"
    assert age_text(None, "20231201", "20240105") == "Age 1 mo (from DOB)"
    assert age_text(None, "20240101", "20240105") == "Age 4 d (from DOB)"
    # impossible or missing: nothing (never a guess)
    assert age_text("999Y") == ""
    assert age_text("", "20250101", "20240105") == ""
    assert age_text("abc", "", "") == ""
    assert dob_text("19770105") == "DOB 1977-01-05" and dob_text("") == ""
