"""Files that are plainly not DICOM (licences, readme, JSON, XML, PDF, PNG) are other files:
counted and listed apart, quietly; a damaged DICOM (DICM preamble or .dcm) stays a problem."""

import json
import shutil
import zipfile

import numpy as np

from conftest import SHARED, need
from imaging_assist.dicom import scan
from imaging_assist.dicom.index import other_file_kind

SLAB = SHARED / "ct" / "lidc_idri_0001_slab"


def _names(items):
    return {p.path.replace("\\", "/").split("/")[-1]: p.reason for p in items}


def test_lidc_reader_xml_is_an_other_file_not_a_problem():
    index = scan(str(need(SLAB)))
    assert not index.problems, index.problems
    assert _names(index.other_files) == {"annotations_69.xml": "XML text"}
    assert len(index.image_series()) == 1 and index.image_series()[0].n_instances == 16
    assert index.to_dict()["other_files"][0]["kind"] == "XML text"


def test_other_files_by_content_and_damaged_dicom_stays_a_problem(tmp_path):
    d = tmp_path / "study"
    d.mkdir()
    (d / "LICENSE").write_text("MIT License\n\nCopyright (c) 2020 someone\n")
    (d / "readme.md").write_text("# data\nthe scans\n")
    (d / "labels.json").write_text(json.dumps({"a": 1}))
    (d / "meta").write_text("<?xml version='1.0'?><x/>")  # no extension: by content
    (d / "report.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(200))
    (d / "notes_latin1.txt").write_bytes("r\xe9sum\xe9 du patient\n".encode("latin-1"))
    # damaged DICOM: the preamble, a .dcm name, or bytes that are nothing recognisable
    (d / "cut_preamble").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 5)
    (d / "text_named.dcm").write_text("this was supposed to be DICOM")
    (d / "blob.bin").write_bytes(np.random.default_rng(1).bytes(3000))
    with zipfile.ZipFile(d / "bundle.zip", "w") as zf:
        zf.writestr("z/README.txt", "read me")
        zf.writestr("z/bad.dcm", b"\0" * 128 + b"DICM" + b"\x01" * 40)
    index = scan(str(d))
    other = _names(index.other_files)
    assert other == {"LICENSE": "licence/readme text", "readme.md": "Markdown text",
                     "labels.json": "JSON text", "meta": "XML text", "report.pdf": "PDF document",
                     "notes_latin1.txt": "text", "README.txt": "licence/readme text"}, other
    probs = _names(index.problems)
    assert set(probs) == {"cut_preamble", "text_named.dcm", "blob.bin", "bad.dcm"}, probs
    assert all(r for r in probs.values())
    assert index.n_files == 11


def test_a_valid_dicom_with_a_text_extension_is_still_read(tmp_path):
    src = need(SLAB / "-100.000000.dcm")
    shutil.copy(src, tmp_path / "slice.txt")
    index = scan(str(tmp_path))
    assert not index.other_files and not index.problems and len(index.image_series()) == 1
    assert other_file_kind(str(src)) is None  # never asked for a real DICOM, and it would say no
