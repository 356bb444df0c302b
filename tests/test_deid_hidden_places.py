"""PHI in places the first de-identification tests did not plant it (an audit): the file
preamble, an SR's TEXT items, sequences stored as UN, names, dates and free text in attributes
Table E.1-1 does not list, overlay groups without data, the words OCR still reads (never in the
summary that travels with the output), and Clean Descriptors with short, CJK and written-out
names and dates."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import CT_PHANTOM, need
from imaging_assist.privacy.deid import Options, deidentify_tree
from test_deid import KEY, _leaks


def _ct(tmp_path, name="a.dcm"):
    src = sorted(need(CT_PHANTOM).glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.PatientID, ds.PatientName = "MRN7654321", "Smithphi^Johnphi"
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    return ds, folder / name


def _run(tmp_path, opts=None):
    out = tmp_path / "out"
    summary = deidentify_tree(tmp_path / "in", out, opts or Options(), key=KEY, audit=False)
    return out, summary


def _implicit_sequence_bytes(items) -> bytes:
    """A sequence's value as a node that does not know the attribute stores it (UN): its
    items encoded implicit VR little endian, each with a defined length."""
    import struct

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = b""
    for item in items:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, True
        write_dataset(buf, item)
        body = buf.getvalue()
        out += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    return out


def test_the_preamble_is_zeroed(tmp_path):
    ds, p = _ct(tmp_path)
    ds.preamble = b"PREAMBLEPHI Smithphi MRN7654321".ljust(128, b"\0")
    ds.save_as(p, enforce_file_format=True)
    out, summary = _run(tmp_path)
    (written,) = summary.written
    assert pydicom.dcmread(written.output).preamble == b"\0" * 128
    assert _leaks(out, ["PREAMBLEPHI", "Smithphi", "MRN7654321"]) == []


def test_sr_text_items_and_un_sequences_and_names_outside_the_table(tmp_path):
    ds, p = _ct(tmp_path)
    # an SR-style TEXT item in a Content Sequence (the table gives the sequence D, and keeps
    # walking it: Text Value itself is not in the table)
    item = Dataset()
    item.ValueType, item.RelationshipType = "TEXT", "CONTAINS"
    item.TextValue = "SRTEXTPHI Patient John Smithphi, DOB 01/01/1980"
    ds.ContentSequence = Sequence([item])
    # attributes outside Table E.1-1 that name or date someone
    ds.EvaluatorName = "EVALPHI^Bob"
    ds.StudyUpdateDateTime = "20240305121314"
    ds.DocumentTitle = "DOCTITLEPHI Report of Smithphi"
    # an overlay group without Overlay Data: its description and label are free text
    ds.add_new(0x60020022, "LO", "OVL2DESCPHI")
    ds.add_new(0x60021500, "LO", "OVL2LABELPHI")
    ds.save_as(p, enforce_file_format=True)
    # two sequences stored as UN (a node that did not know them): nested name and UIDs
    nested = Dataset()
    nested.PatientName = "UNSEQPHI^Name"
    nested.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.19800101.7654321.99"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.19800101.7654321.10"
    raw = pydicom.dcmread(p)
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag
    for tag, item in ((0x00082218, nested), (0x00081140, ref)):
        value = _implicit_sequence_bytes([item])
        raw[tag] = RawDataElement(Tag(tag), "UN", len(value), value, 0, False, True)
    raw.save_as(p, enforce_file_format=True)
    assert pydicom.dcmread(p).get_item(0x00081140).VR == "UN"
    out, summary = _run(tmp_path)
    assert len(summary.written) == 1, summary.left_out
    leaks = _leaks(out, ["SRTEXTPHI", "Smithphi", "EVALPHI", "20240305", "DOCTITLEPHI", "OVL2DESCPHI",
                         "OVL2LABELPHI", "UNSEQPHI", "19800101.7654321"])
    assert leaks == [], leaks
    got = pydicom.dcmread(summary.written[0].output)
    assert got.ContentSequence[0].TextValue == "ANONYMIZED"  # the item stays valid
    assert not any(0x6002 == t.group for t in got.keys())


def test_dates_outside_the_table_are_shifted_with_the_others(tmp_path):
    ds, p = _ct(tmp_path)
    ds.StudyDate = "20240301"
    ds.StudyUpdateDateTime = "20240305121314"
    ds.save_as(p, enforce_file_format=True)
    out, summary = _run(tmp_path, Options(modified_dates=True))
    got = pydicom.dcmread(summary.written[0].output)
    from datetime import date
    shift = date(int(got.StudyDate[:4]), int(got.StudyDate[4:6]), int(got.StudyDate[6:])) - date(2024, 3, 1)
    upd = got.StudyUpdateDateTime
    assert date(int(upd[:4]), int(upd[4:6]), int(upd[6:8])) - date(2024, 3, 5) == shift != 0 * shift
    assert upd[8:] == "121314"


def test_ocr_words_are_printed_here_never_written_into_the_summary(tmp_path):
    """A US image whose burned-in name is too big to black out is left out; the reason in
    deidentification_summary.json (which travels with the output) quoted the words read."""
    from PIL import Image, ImageDraw, ImageFont
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = Image.new("L", (400, 300), 0)
    ImageDraw.Draw(img).text((20, 100), "SMITHPHI", fill=255,
                             font=ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", 64))
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "Burned^Phi", "BURN1"
    arr = np.array(img)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "us.dcm", enforce_file_format=True)
    out, summary = _run(tmp_path)
    (left,) = summary.left_out
    assert "still readable" in left.reason and "SMITHPHI" not in left.reason
    assert "SMITHPHI" in " ".join(summary.lines())  # said on this machine
    assert "SMITHPHI" not in (out / "deidentification_summary.json").read_text()
    assert _leaks(out, ["SMITHPHI"]) == []


def test_clean_descriptors_cuts_short_and_cjk_names_and_written_dates(tmp_path):
    ds, p = _ct(tmp_path)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Li^Na=李^娜=リ^ナ"
    ds.StudyDescription = "CT head for Li Na (李娜, リ ナ) ward"
    ds.SeriesDescription = "1 Mar 2024 / March 1, 2024 / 01Mar24"
    ds.save_as(p, enforce_file_format=True)
    out, summary = _run(tmp_path, Options(clean_descriptors=True))
    got = pydicom.dcmread(summary.written[0].output)
    for v in (got.StudyDescription, got.SeriesDescription):
        for s in ("Li", "Na", "李", "娜", "リ", "ナ", "Mar", "2024"):
            assert s not in v.split() and (s.isascii() or s not in v), (s, v)
    assert "CT head for" in got.StudyDescription and "ward" in got.StudyDescription
