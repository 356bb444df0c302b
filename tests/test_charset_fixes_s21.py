"""Sources in other character sets (an audit, s21): Japanese and Korean files (Specific
Character Set "\\ISO 2022 IR 87", empty first value) and files with an unknown term never got a
SEG, SR, Parametric Map or presentation state (highdicom copied the source's set and refused
it); Clean Descriptors cut every letter of a non-ASCII alphabetic name ("Müller") out of every
description; the corner text mixed the component groups of a person name and lost a part."""

from __future__ import annotations

import os
import warnings

import pydicom
import pytest
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import DataElement
from pydicom.valuerep import _encode_personname

from conftest import need
from imaging_assist.dicom import load_series, scan
from imaging_assist.export.dicom import write_dicom_results
from imaging_assist.export.presentation_state import write_presentation_state
from imaging_assist.measure import Measurement
from imaging_assist.privacy.deid import Options, deidentify_headers
from test_export_dicom import CXR, _results, dciodvfy_errors

JIS_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
KOREAN_NAME = "Hong^Gildong=洪^吉洞=홍^길동"


def _source(folder, charset, name=None, desc=None, raw_name=None, raw_desc=None):
    """The demo CXR with its name and description written as raw bytes in ``charset`` (as a
    modality writes them; /tmp/audit_s21/charset/gen.py)."""
    ds = pydicom.dcmread(need(CXR))
    if charset is None:
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
        encs = ["iso8859"]
    else:
        ds.SpecificCharacterSet = charset
        encs = convert_encodings(charset if isinstance(charset, list) else [charset])
    raw_name = raw_name if raw_name is not None else _encode_personname(name.split("="), encs)
    raw_desc = raw_desc if raw_desc is not None else encode_string(desc, encs)
    raw_name += b" " * (len(raw_name) % 2)
    raw_desc += b" " * (len(raw_desc) % 2)
    ds[0x00100010] = DataElement(0x00100010, "PN", raw_name)
    ds[0x00080090] = DataElement(0x00080090, "PN", raw_name)  # referring physician
    ds[0x00081030] = DataElement(0x00081030, "LO", raw_desc)
    folder.mkdir(parents=True)
    path = folder / "img.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------ 1. objects for every charset
@pytest.mark.filterwarnings("ignore:Unknown encoding")
@pytest.mark.parametrize("charset,name,desc,raw_name,raw_desc", [
    (["", "ISO 2022 IR 87"], JIS_NAME, "胸部単純", None, None),
    (["", "ISO 2022 IR 149"], KOREAN_NAME, "흉부 촬영", None, None),
    ("ISO_IR 999", None, None, "Müller^Jürgen".encode(), "胸部".encode()),  # unknown term
], ids=["japanese", "korean", "unknown"])
def test_japanese_korean_and_unknown_charset_sources_get_every_result_object(
        tmp_path, charset, name, desc, raw_name, raw_desc):
    src = _source(tmp_path / "src", charset, name, desc, raw_name, raw_desc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pydicom.dcmread(src)  # pydicom's decode of the source: what every object must say
        want = {kw: str(ref[kw].value) for kw in ("PatientName", "ReferringPhysicianName", "StudyDescription")}
        vol = load_series(scan(str(src.parent)).image_series()[0])
    seg, cl = _results(vol)
    m = Measurement("ruler", [(2, 3), (9, 7)], index=0)
    m.compute_on(vol)
    failures: list[str] = []
    objs = write_dicom_results(vol, [seg, cl], tmp_path / "dicom", measurements=[m], failures=failures)
    assert failures == []
    assert sorted(o.kind for o in objs) == ["PM", "SEG", "SR", "SR"]
    paths = [o.path for o in objs] + [write_presentation_state(vol, [m], tmp_path / "ps.dcm")]
    for p in paths:
        ds = pydicom.dcmread(p)
        assert ds.SpecificCharacterSet == "ISO_IR 192", p
        assert {kw: str(ds[kw].value) for kw in want} == want, p
    if name:
        assert str(pydicom.dcmread(paths[0]).PatientName) == name
    for p in paths:
        assert dciodvfy_errors(p) == [], p


# ------------------------------------------------------------------ 2. Clean Descriptors
def _clean(charset, name, desc):
    ds = pydicom.dcmread(need(CXR))
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = desc
    deidentify_headers([ds], Options(clean_descriptors=True), key=b"k" * 32)
    return str(ds.get("StudyDescription", ""))


@pytest.mark.parametrize("charset,name,desc", [
    ("ISO_IR 100", "Müller^Jürgen", "Thorax pa Uebersicht liegend"),
    ("ISO_IR 144", "Иванов^Пётр", "Рентген грудной клетки"),
    ("ISO_IR 126", "Παπαδόπουλος^Νίκος", "Ακτινογραφία θώρακος"),
    ("ISO_IR 138", "שרון^דבורה", "צילום חזה"),
    ("ISO_IR 192", "Hong^Gildong==홍^길동", "흉부 촬영 이동형"),  # 동 of 길동 in "portable"
], ids=["latin1", "cyrillic", "greek", "hebrew", "hangul"])
def test_clean_descriptors_keeps_descriptions_of_patients_with_alphabetic_non_ascii_names(charset, name, desc):
    """Every letter of "Müller" and "Jürgen" was cut out of every word: "Thoax pa Ubsicht id"."""
    assert _clean(charset, name, desc) == desc


def test_clean_descriptors_still_cuts_non_ascii_names_as_words_and_cjk_characters():
    got = _clean("ISO_IR 100", "Müller^Jürgen", "Thorax MÜLLER liegend, Jürgen")
    assert got.split() == ["Thorax", "liegend,"], got
    got = _clean("ISO_IR 144", "Иванов^Пётр", "Рентген Иванов клетки")
    assert got.split() == ["Рентген", "клетки"], got
    got = _clean("ISO_IR 192", KOREAN_NAME, "흉부 촬영 홍 길동 洪吉洞")
    assert got.split() == ["흉부", "촬영"], got
    got = _clean("ISO_IR 192", JIS_NAME, "胸部単純 山田太郎 やまだ")
    assert got.split() == ["胸部単純"], got


def test_clean_descriptors_leaves_whole_utf8_characters_in_a_file_without_charset(tmp_path):
    """No Specific Character Set and UTF-8 bytes (common): the name "MÃ¼ller" (its bytes read
    as Latin-1) had each of its characters cut, leaving half a UTF-8 sequence (dciodvfy:
    character invalid)."""
    src = _source(tmp_path / "src", None, raw_name="Müller^Jürgen".encode(),
                  raw_desc="Thorax Übersicht".encode())
    ds = pydicom.dcmread(src)
    deidentify_headers([ds], Options(clean_descriptors=True), key=b"k" * 32)
    ds.save_as(tmp_path / "out.dcm")
    raw = pydicom.dcmread(tmp_path / "out.dcm")[0x00081030]
    assert "Thorax Übersicht".encode() in raw.value.encode("latin-1")


# ------------------------------------------------------------------ 3. corner text name
@pytest.mark.parametrize("pn,want", [
    (JIS_NAME, "YAMADA, Tarou  山田 太郎  やまだ たろう"),
    (KOREAN_NAME, "HONG, Gildong  洪 吉洞  홍 길동"),
    ("=山田^太郎=やまだ^たろう", "山田 太郎  やまだ たろう"),
    ("Wang^XiaoDong=王^小東=", "WANG, XiaoDong  王 小東"),
    ("Doe^John^A", "DOE, John A"),
    ("DOE^JOHN", "DOE, JOHN"),
    ("HEAD", "HEAD"),
    ("", ""),
])
def test_corner_name_formats_each_component_group(pn, want):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from imaging_assist_ui.radiology.viewer import _fmt_name

    assert _fmt_name(pn) == want


@pytest.mark.gui
def test_corner_text_of_a_japanese_film_shows_every_name_group(tmp_path_factory, tmp_path):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from _qt import open_window

    src = _source(tmp_path / "jis", ["", "ISO 2022 IR 87"], JIS_NAME, "胸部単純")
    w = open_window(tmp_path_factory, str(src))
    try:
        tl = w.view_area.single.annotation_text()["tl"]
        assert tl[0] == "YAMADA, Tarou  山田 太郎  やまだ たろう", tl
    finally:
        w.close()
