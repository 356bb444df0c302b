"""Names whose character set is not declared, unknown ("ISO_IR 999") or wrong (Latin-1 bytes
under "ISO_IR 192") (an audit, s21): pydicom reads them as Latin-1 or with replacement
characters, and the app showed "MÃ¼ller^JÃ¼rgen" as the name in the browser and the corner
text with no marker.  The record now says the text may be wrong, the browser and the corner
text mark the name, and the DICOM export has a warning line for it.  The decoding itself is
unchanged (tests/test_dicom_header.py, tests/test_charset_fixes_s21.py)."""

from __future__ import annotations

import os
import warnings

import pytest

from imaging_assist.dicom import load_series, scan
from imaging_assist.dicom import header
from imaging_assist.dicom.header import InstanceRecord, _pydicom_scan, read_record
from test_charset_fixes_s21 import JIS_NAME, _source

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

NAME = "Müller^Jürgen"
# (charset, raw name bytes, raw description bytes, what the note says): /tmp/audit_s21/charset/gen.py
DOUBTFUL = {
    "no_charset_utf8": (None, NAME.encode(), "Thorax Übersicht".encode(), "character set not declared"),
    "unknown_term": ("ISO_IR 999", NAME.encode(), "胸部".encode(), "unknown character set ISO_IR 999"),
    "utf8_over_latin1": ("ISO_IR 192", NAME.encode("latin-1"), "Übersicht".encode("latin-1"),
                         "not valid in the declared character set ISO_IR 192"),
}
# correctly declared sources: no note, no marker
VALID = {
    "latin1": ("ISO_IR 100", NAME.encode("latin-1"), "Thorax pä".encode("latin-1")),
    "utf8": ("ISO_IR 192", (NAME + "=山田^太郎").encode(), "胸部 X線".encode()),
    "misspelt_utf8": ("ISO-IR 192", NAME.encode(), "胸部".encode()),  # pydicom corrects the term
    "jis": (["", "ISO 2022 IR 87"], None, None),
}


def _make(tmp_path, case):
    if case in DOUBTFUL:
        cs, pn, desc, _ = DOUBTFUL[case]
        return _source(tmp_path / case, cs, raw_name=pn, raw_desc=desc)
    cs, pn, desc = VALID[case]
    if pn is None:
        return _source(tmp_path / case, cs, JIS_NAME, "胸部単純")
    return _source(tmp_path / case, cs, raw_name=pn, raw_desc=desc)


def _both_records(path):
    """The record of the fast walk and of the pydicom reader for one file."""
    fast = read_record(str(path))
    assert fast.fast
    slow = InstanceRecord(path=str(path))
    with open(path, "rb") as fh:
        _pydicom_scan(fh, slow)
    return fast, slow


def _volume(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_series(scan(str(path.parent)).image_series()[0])


# ------------------------------------------------------------------ 1. the record says so
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", list(DOUBTFUL))
def test_record_notes_a_name_read_in_an_undeclared_unknown_or_wrong_charset(tmp_path, case):
    src = _make(tmp_path, case)
    for rec in _both_records(src):
        assert sum("text may be wrong" in n for n in rec.notes) == 1, (rec.fast, rec.notes)
        note = header.charset_doubt(rec, "PatientName")
        assert DOUBTFUL[case][3] in note and note.endswith("text may be wrong"), note
        assert header.charset_doubt(rec, "StudyDescription") == note  # one note names both attributes


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", list(VALID))
def test_record_of_a_declared_charset_has_no_note(tmp_path, case):
    src = _make(tmp_path, case)
    for rec in _both_records(src):
        assert not str(rec.tags["PatientName"]).isascii()
        assert rec.notes == [], rec.notes


# ------------------------------------------------------------------ 2. the name is marked
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case,marked", [("no_charset_utf8", True), ("unknown_term", True),
                                         ("utf8_over_latin1", True), ("latin1", False)])
def test_browser_and_corner_text_mark_a_name_that_may_be_wrong(qtbot, tmp_path, case, marked):
    from imaging_assist_ui.radiology.browser import StudyBrowser
    from imaging_assist_ui.radiology.document import ViewerDocument
    from imaging_assist_ui.radiology.viewer import SliceView

    src = _make(tmp_path, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = scan(str(src.parent))
        series = index.image_series()[0]
        vol = load_series(series)
    browser = StudyBrowser()
    qtbot.addWidget(browser)
    browser.set_index(index)
    line = browser.tree.topLevelItem(0).text(0)
    tip = browser.tree.topLevelItem(0).toolTip(0)
    doc = ViewerDocument()
    view = SliceView(doc)
    qtbot.addWidget(view)
    view.resize(800, 800)
    doc.set_volume(vol, series=series, patient=index.patients[0], study=index.patients[0].studies[0])
    corner = view.annotation_text()["tl"][0]
    if marked:
        shown = str(vol.headers[0].get("PatientName")).replace("^", " ")
        assert line.startswith(shown + " ⚠ charset"), line
        assert "text may be wrong" in tip, tip
        assert corner.endswith(" ⚠ charset"), corner
    else:
        assert line.startswith("Müller Jürgen") and "charset" not in line + tip, (line, tip)
        assert corner == "MÜLLER, Jürgen", corner


# ------------------------------------------------------------------ 3. the export warns
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", list(DOUBTFUL) + ["latin1", "utf8"])
def test_export_warning_line_for_a_name_that_may_be_wrong(tmp_path, case):
    from imaging_assist.export.dicom_common import charset_warnings

    got = charset_warnings(_volume(_make(tmp_path, case)))
    if case in DOUBTFUL:
        assert len(got) == 1 and got[0].startswith("the source's patient name could not be decoded"), got
        assert DOUBTFUL[case][3] in got[0] and "written into the result objects as read" in got[0], got
    else:
        assert got == []


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case,said", [("no_charset_utf8", True), ("utf8", False)])
def test_dicom_results_of_a_doubtful_name_say_it_is_written_as_read(tmp_path, case, said):
    """write_dicom_results (analyze --dicom, the GUI export): the warning line is in its notes."""
    from imaging_assist.export.dicom import write_dicom_results
    from test_export_dicom import _results

    vol = _volume(_make(tmp_path, case))
    _seg, cl = _results(vol)
    notes: list[str] = []
    write_dicom_results(vol, [cl], tmp_path / "dicom", warnings=notes)
    assert any("patient name could not be decoded reliably" in n for n in notes) is said, notes


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case,said", [("no_charset_utf8", True), ("unknown_term", True), ("utf8", False),
                                       ("latin1", False)])
def test_the_report_header_marks_a_name_that_may_be_wrong(tmp_path, case, said):
    """The PDF report printed "MÃ¼ller JÃ¼rgen" as the name, without the viewer's marker."""
    from imaging_assist.export.report_pdf import DOUBTFUL_NAME, _header_from_file, study_header

    path = _make(tmp_path, case)
    for h in (study_header(_volume(path)), _header_from_file(str(path))):
        assert h["patient_name"].endswith(DOUBTFUL_NAME) is said, h["patient_name"]
