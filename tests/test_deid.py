"""De-identification (issue 16): PS3.15 Table E.1-1 on real files with PHI planted everywhere,
keyed UIDs and references, options, burned-in text, corrupt input, the CLI."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import CT_PHANTOM, DICOM, SHARED, need
from imaging_assist.privacy import deid, ocr
from imaging_assist.privacy.deid import Options, action_for, deidentify_tree

KEY = bytes(range(32))
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
PIXEL_TEXT = ["DOE^JOHN", "4711-0815"]  # drawn into the pixels
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
             "UT", "UI"}


class Planter:
    """Puts a distinct value into every text attribute of Table E.1-1 a data set carries (at any
    depth), adds the usual PHI attributes and private tags, and remembers each value planted with
    the attribute's tag."""

    def __init__(self):
        self.n = 0
        self.planted: list[tuple[int, str, str]] = []  # (tag, vr, value)

    def value(self, vr: str) -> str:
        self.n += 1
        n = self.n
        if vr == "DA":
            v = f"19{30 + n % 60:02d}{1 + n % 12:02d}{1 + n % 27:02d}"
        elif vr == "TM":
            v = f"{n % 24:02d}{(n * 7) % 60:02d}{(n * 13) % 60:02d}.{n:06d}"[:16]
        elif vr == "DT":
            v = f"19{30 + n % 60:02d}{1 + n % 12:02d}{1 + n % 27:02d}1122{n % 60:02d}"
        elif vr == "UI":
            v = f"1.2.826.0.1.3680043.10.777.{n}"
        elif vr in ("DS", "IS"):
            v = f"{7770000 + n}"
        elif vr == "AS":
            v = f"{n % 100:03d}Y"
        elif vr == "CS":
            v = f"PHICS{n}"
        elif vr == "PN":
            v = f"PHISURNAME{n}^PHIGIVEN{n}"
        else:
            v = f"PHI TEXT {n} ZQX"
        return v

    def plant(self, ds, tag: int, vr: str, value: str | None = None):
        value = value or self.value(vr)
        ds.add_new(tag, vr, value)
        self.planted.append((tag, vr, value))
        return value

    def walk(self, ds):
        for elem in list(ds):
            if elem.VR == "SQ":
                for item in elem.value:
                    self.walk(item)
                continue
            row = deid._row(int(elem.tag))
            if row is None or elem.VR not in _TEXT_VRS or elem.tag == 0x00080016:
                continue
            self.plant(ds, int(elem.tag), elem.VR)

    def dress(self, ds, patient: str, study_uid: str, name: str):
        """The usual PHI on top: patient, physicians, institution, free text, nested request
        attributes, private tags.  Same patient -> same ID and name."""
        self.walk(ds)
        ds.PatientID = patient
        ds.PatientName = name
        self.planted += [(0x00100020, "LO", patient), (0x00100010, "PN", name)]
        ds.StudyInstanceUID = study_uid
        for tag, vr in [(0x00101040, "LO"), (0x00101001, "PN"), (0x00080090, "PN"),
                        (0x00081050, "PN"), (0x00081070, "PN"), (0x00080080, "LO"),
                        (0x00080081, "ST"), (0x00104000, "LT"), (0x00204000, "LT"),
                        (0x00081030, "LO"), (0x0008103E, "LO"), (0x001021B0, "LT"),
                        (0x00102154, "SH"), (0x00080050, "SH"), (0x00200010, "SH"),
                        (0x00100030, "DA"), (0x00080020, "DA"), (0x00181030, "LO"),
                        (0x00321032, "PN"), (0x00400254, "LO")]:
            self.plant(ds, tag, vr)
        # the patient's own name in free text (Clean Descriptors must cut it out)
        surname = name.split("^")[0]
        ds.ImageComments = f"seen with {surname} on ward 3"
        self.planted.append((0x00204000, "LT", surname))
        req = Dataset()
        self.plant(req, 0x00401001, "SH")  # Requested Procedure ID
        self.plant(req, 0x00321060, "LO")  # Requested Procedure Description
        sps = Dataset()
        self.plant(sps, 0x00400009, "SH")  # Scheduled Procedure Step ID
        self.plant(sps, 0x00400006, "PN")  # Scheduled Performing Physician's Name
        req.ScheduledProtocolCodeSequence = Sequence([sps])
        ds.RequestAttributesSequence = Sequence([req])
        other = Dataset()
        self.plant(other, 0x00100020, "LO")
        ds.OtherPatientIDsSequence = Sequence([other])
        block = ds.private_block(0x0029, "ACME PHI 1.0", create=True)
        v = self.value("LO")
        block.add_new(0x10, "LO", v)
        self.planted.append((0x00291010, "LO", v))
        v = self.value("LO")
        ds.add_new(0x00091001, "UN", v.encode())  # a private tag without its creator
        self.planted.append((0x00091001, "UN", v))


def _text_frames(base_jpg: Path, n: int, rgb: bool) -> np.ndarray:
    img = Image.open(base_jpg).convert("L")
    img = img.resize((320, 240))
    font = ImageFont.truetype(FONT, 16)
    frames = []
    for i in range(n):
        a = np.roll(np.asarray(img), 2 * i, axis=1)
        im = Image.fromarray(np.stack([a] * 3, -1) if rgb else a)
        d = ImageDraw.Draw(im)
        d.text((8, 6), f"{PIXEL_TEXT[0]}  MRN", fill=(255, 255, 255) if rgb else 255, font=font)
        d.text((170, 215), PIXEL_TEXT[1], fill=(255, 255, 0) if rgb else 255, font=font)
        frames.append(np.asarray(im))
    return np.stack(frames)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=r)


def _us_multiframe(planter: Planter, out: Path, patient, study, name):
    """An RGB multi-frame ultrasound from a real breast ultrasound image, text drawn in."""
    src = need(SHARED / "ultrasound" / "breast_busi" / "benign" / "benign_001.jpg")
    arr = _text_frames(src, 3, rgb=True)
    plain = np.stack([np.roll(np.asarray(Image.open(src).convert("L").resize((320, 240))), 2 * i,
                              axis=1) for i in range(3)])
    text = (arr.max(axis=-1) != plain).any(axis=0)  # where the drawn text changed a pixel
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.StudyDate = "20240305"
    ds.ContentDate = "20240305"
    ds.ContentTime = "142200"
    ds.AcquisitionDateTime = "20240305142200"
    ds.InstitutionName = "PHI General Hospital"
    ds.set_pixel_data(arr, "RGB", 8, generate_instance_uid=False)
    ds.NumberOfFrames = 3
    planter.dress(ds, patient, study, name)
    ds.save_as(out, enforce_file_format=True)
    return arr, text


def _sc_with_text(planter: Planter, out: Path, patient, study, name):
    """The real RGB secondary capture with a name and number drawn in as well."""
    ds = pydicom.dcmread(need(DICOM / "rgb_jpeg_lossless_secondary_capture" / "GH538-jpeg14sv1.dcm"))
    arr = ds.pixel_array.copy()
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    font = ImageFont.truetype(FONT, 18)
    d.text((380, 380), PIXEL_TEXT[0], fill=(255, 255, 255), font=font)
    d.text((380, 405), PIXEL_TEXT[1], fill=(255, 255, 255), font=font)
    ds.set_pixel_data(np.asarray(im), "RGB", 8, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    planter.dress(ds, patient, study, name)
    ds.save_as(out, enforce_file_format=True)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """IN/ with two patients: A (a CT study of 3 slices + a SEG-like reference file, and an
    enhanced MR study), B (an ultrasound cine and a secondary capture with burned-in text);
    plus two corrupt files.  Returns (IN, planter, facts)."""
    root = tmp_path_factory.mktemp("deid") / "IN"
    pl = Planter()
    study_a1, study_a2, study_b = (f"1.2.826.0.1.3680043.10.888.{i}" for i in (1, 2, 3))
    ct_files = sorted(need(CT_PHANTOM).glob("*.dcm"))[:3]
    (root / "A" / "ct").mkdir(parents=True)
    facts = {"ct": [], "for": None}
    for i, f in enumerate(ct_files):
        ds = pydicom.dcmread(f)
        pl.dress(ds, "PID-A-0001", study_a1, "PHISMITH^ALICE")
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.888.11"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.888.12"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.888.2{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        facts["ct"].append(ds.SOPInstanceUID)
        ds.save_as(root / "A" / "ct" / f"slice{i}.dcm", enforce_file_format=True)
    # a file referring to the CT (as a SEG or presentation state does)
    ref = pydicom.dcmread(ct_files[0])
    pl.dress(ref, "PID-A-0001", study_a1, "PHISMITH^ALICE")
    ref.SOPInstanceUID = "1.2.826.0.1.3680043.10.888.30"
    ref.SeriesInstanceUID = "1.2.826.0.1.3680043.10.888.31"
    ref.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.888.12"
    inst = Dataset()
    inst.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inst.ReferencedSOPInstanceUID = facts["ct"][1]
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.888.11"
    series.ReferencedInstanceSequence = Sequence([inst])
    ref.ReferencedSeriesSequence = Sequence([series])
    src_img = Dataset()
    src_img.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    src_img.ReferencedSOPInstanceUID = facts["ct"][2]
    ref.SourceImageSequence = Sequence([src_img])
    ref.save_as(root / "A" / "ct" / "ref.dcm", enforce_file_format=True)
    # enhanced multi-frame MR, study 2 of patient A (BurnedInAnnotation NO: pixels untouched)
    (root / "A" / "mr").mkdir()
    mr = pydicom.dcmread(need(DICOM / "mr_enhanced_multiframe_philips" / "IM_0027_fMAP.dcm"))
    pl.dress(mr, "PID-A-0001", study_a2, "PHISMITH^ALICE")
    mr.save_as(root / "A" / "mr" / "enhanced.dcm", enforce_file_format=True)
    # patient B: ultrasound cine and a secondary capture, text in the pixels
    (root / "B").mkdir()
    facts["us_pixels"], facts["us_text"] = _us_multiframe(pl, root / "B" / "us_cine.dcm", "PID-B-0002", study_b,
                                        "PHIJONES^BOB")
    _sc_with_text(pl, root / "B" / "sc.dcm", "PID-B-0002", study_b, "PHIJONES^BOB")
    # corrupt input: a truncated CT slice and random bytes with a .dcm name
    data = (root / "A" / "ct" / "slice0.dcm").read_bytes()
    (root / "A" / "truncated.dcm").write_bytes(data[:1500])
    (root / "A" / "noise.dcm").write_bytes(np.random.default_rng(1).bytes(4000))
    return root, pl, facts


def _tree_hash(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def basic_run(planted, tmp_path_factory):
    src, pl, facts = planted
    before = _tree_hash(src)
    out = tmp_path_factory.mktemp("deid_out") / "OUT"
    summary = deidentify_tree(src, out, Options(), key=KEY, audit=False)
    assert _tree_hash(src) == before, "the source files were changed"
    return src, out, summary


def _outputs(summary) -> dict[str, Path]:
    """Output file of each written input, by its path inside the input (the output names are
    keyed pseudonyms)."""
    return {r.relative: Path(r.output) for r in summary.written}


def _leaks(out: Path, strings) -> list[str]:
    # every file written (the summary included) and every file and folder name
    blobs = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert "deidentification_summary.json" in blobs
    blobs["names"] = "\n".join(str(p.relative_to(out)) for p in out.rglob("*")).encode()
    found = []
    for s in strings:
        forms = {s.encode("utf-8"), s.encode("utf-16-le"), s.upper().encode(), s.lower().encode()}
        for name, b in blobs.items():
            if any(f in b for f in forms):
                found.append(f"{s!r} in {name}")
    return found


def test_no_planted_value_survives_the_basic_profile(basic_run, planted):
    src, out, summary = basic_run
    _, pl, _ = planted
    assert len(pl.planted) > 300, "too few attributes were planted to mean anything"
    assert sorted(_outputs(summary)) == ["A/ct/ref.dcm", "A/ct/slice0.dcm", "A/ct/slice1.dcm",
                                     "A/ct/slice2.dcm", "A/mr/enhanced.dcm", "B/sc.dcm",
                                     "B/us_cine.dcm"]
    leaks = _leaks(out, {v for _t, _vr, v in pl.planted})
    assert not leaks, f"{len(leaks)} planted values survive, e.g. {leaks[:8]}"
    for p in _outputs(summary).values():
        ds = pydicom.dcmread(p)
        assert not any(e.tag.is_private for e in ds.iterall()), p
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        codes = [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
        assert codes[0] == "113100"
        assert ds.PatientID.startswith("IA-") and str(ds.PatientName) == ds.PatientID + "^"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_uids_consistent_within_a_study_references_follow(basic_run, planted):
    src, out, summary = basic_run
    _, _, facts = planted
    o = {k: pydicom.dcmread(p) for k, p in _outputs(summary).items()}
    cts = [o[f"A/ct/slice{i}.dcm"] for i in range(3)]
    assert len({d.StudyInstanceUID for d in cts + [o["A/ct/ref.dcm"]]}) == 1
    assert len({d.SeriesInstanceUID for d in cts}) == 1
    assert len({d.FrameOfReferenceUID for d in cts + [o["A/ct/ref.dcm"]]}) == 1
    studies = {o["A/ct/slice0.dcm"].StudyInstanceUID, o["A/mr/enhanced.dcm"].StudyInstanceUID,
               o["B/sc.dcm"].StudyInstanceUID}
    assert len(studies) == 3, "different studies must keep different UIDs"
    assert o["B/sc.dcm"].StudyInstanceUID == o["B/us_cine.dcm"].StudyInstanceUID
    # the same patient, the same pseudonym; another patient, another
    assert o["A/ct/slice0.dcm"].PatientID == o["A/mr/enhanced.dcm"].PatientID
    assert o["A/ct/slice0.dcm"].PatientID != o["B/sc.dcm"].PatientID
    ref = o["A/ct/ref.dcm"]
    new_sops = [d.SOPInstanceUID for d in cts]
    assert not set(new_sops) & set(facts["ct"])
    item = ref.ReferencedSeriesSequence[0]
    assert item.SeriesInstanceUID == cts[0].SeriesInstanceUID
    assert item.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == new_sops[1]
    assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID == new_sops[2]
    assert ref.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    # nested functional groups of the enhanced file: UIDs in them mapped, still multi-frame
    mr = o["A/mr/enhanced.dcm"]
    assert int(mr.NumberOfFrames) == 64 and len(mr.PerFrameFunctionalGroupsSequence) == 64
    for d in o.values():
        for e in d.iterall():
            if e.VR == "UI" and e.keyword.endswith("InstanceUID"):
                assert str(e.value).startswith("2.25."), (e.keyword, e.value)


def test_mapping_is_deterministic_per_key(planted, basic_run, tmp_path):
    src, out, summary = basic_run
    again = deidentify_tree(src / "A" / "ct", tmp_path / "again", Options(), key=KEY, audit=False)
    other = deidentify_tree(src / "A" / "ct", tmp_path / "other", Options(), key=b"\1" * 32,
                            audit=False)
    a = pydicom.dcmread(_outputs(summary)["A/ct/slice1.dcm"])
    b = pydicom.dcmread(_outputs(again)["slice1.dcm"])
    c = pydicom.dcmread(_outputs(other)["slice1.dcm"])
    assert (a.SOPInstanceUID, a.StudyInstanceUID, a.PatientID) == \
        (b.SOPInstanceUID, b.StudyInstanceUID, b.PatientID)
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.PatientID != c.PatientID
    assert again.key_fingerprint != other.key_fingerprint


def test_pixels_of_other_files_are_bit_identical(basic_run):
    src, out, summary = basic_run
    for rel in ("A/ct/slice0.dcm", "A/mr/enhanced.dcm"):
        a = pydicom.dcmread(src / rel)
        b = pydicom.dcmread(_outputs(summary)[rel])
        assert a.PixelData == b.PixelData, rel
        assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID


def test_burned_in_text_blacked_out_only_inside_boxes(basic_run, planted):
    src, out, summary = basic_run
    _, _, facts = planted
    by = {Path(r.source).name: r for r in summary.written}
    assert by["us_cine.dcm"].boxes >= 2 and by["sc.dcm"].boxes >= 2
    for rel in ("B/us_cine.dcm", "B/sc.dcm"):
        a = pydicom.dcmread(src / rel).pixel_array
        ds = pydicom.dcmread(_outputs(summary)[rel])
        b = ds.pixel_array
        assert a.shape == b.shape, rel
        changed = (a != b).any(axis=-1)
        boxes = np.zeros(a.shape[-3:-1], bool)
        for x0, y0, x1, y1 in by[Path(rel).name].rects:
            boxes[y0:y1, x0:x1] = True
        assert changed.any(), f"{rel}: nothing was blacked out"
        # not one pixel changed outside the boxes; inside them, everything is black
        assert not (changed & ~boxes).any(), rel
        assert (b[..., boxes, :] == 0).all(), rel
        assert ds.BurnedInAnnotation == "NO"
        assert "113101" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
        words = " ".join(w[5] for w in ocr.find_text(ds, min_conf=0)).upper()
        for t in ("DOE", "JOHN", "4711", "0815"):
            assert t not in words, f"{rel}: OCR still reads {t!r} ({words[:200]})"
    # the drawn text is under the boxes; the boxes that are not over it (texture read as
    # letters) stay a small part of the picture
    text = facts["us_text"]
    us_boxes = np.zeros(text.shape, bool)
    for x0, y0, x1, y1 in by["us_cine.dcm"].rects:
        us_boxes[y0:y1, x0:x1] = True
    assert us_boxes[text].mean() > 0.98
    assert (us_boxes & ~_dilate(text, 8)).mean() < 0.15
    us = pydicom.dcmread(_outputs(summary)["B/us_cine.dcm"]).pixel_array
    # the drawn text region (top left) is black now, the middle of the image is unchanged
    assert (us[:, 8:24, 10:60] == 0).mean() > 0.5
    # (OCR also reads some texture as letters: those boxes are bounded above, not forbidden)
    assert (us[:, 100:160, 100:200] == facts["us_pixels"][:, 100:160, 100:200]).mean() > 0.9


def test_corrupt_files_left_out_with_reason_and_the_run_goes_on(basic_run):
    src, out, summary = basic_run
    left = {Path(r.source).name: r.reason for r in summary.left_out}
    assert set(left) == {"truncated.dcm", "noise.dcm"}, left
    assert all(left.values())
    assert len(summary.written) == 7
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 7 + 1 and not list(out.rglob("*.part"))  # 7 + the summary


def test_options_keep_what_they_promise(planted, tmp_path):
    src, pl, facts = planted
    opts = Options(modified_dates=True, patient_characteristics=True, device_identity=True,
                   clean_descriptors=True)
    s = deidentify_tree(src / "A", tmp_path / "OUT", opts, key=KEY, audit=False)
    assert len(s.written) == 5
    # what the options do not keep must still be gone
    must_go = set()
    for tag, vr, value in pl.planted:
        row = deid._row(tag)
        if row is None or tag == 0x00204000:
            must_go.add(value)
            continue
        if action_for(row, opts, vr) in ("X", "Z", "D", "U"):
            must_go.add(value)
    leaks = _leaks(tmp_path / "OUT", must_go)
    assert not leaks, leaks[:8]
    ct0 = pydicom.dcmread(_outputs(s)["ct/slice0.dcm"])
    ct0_in = pydicom.dcmread(src / "A" / "ct" / "slice0.dcm")
    mr = pydicom.dcmread(_outputs(s)["mr/enhanced.dcm"])
    mr_in = pydicom.dcmread(src / "A" / "mr" / "enhanced.dcm")
    # dates moved by one offset for the patient: the interval between two studies is kept
    from datetime import date

    def d(s):
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))

    shift_ct = d(ct0.SeriesDate) - d(ct0_in.SeriesDate)
    shift_mr = d(mr.SeriesDate) - d(mr_in.SeriesDate)
    assert shift_ct == shift_mr and shift_ct.days <= -366
    assert ct0.LongitudinalTemporalInformationModified == "MODIFIED"
    # characteristics and device identity kept; descriptors kept but cleaned of the name
    assert ct0.PatientSex == ct0_in.PatientSex
    assert ct0.StationName == ct0_in.StationName and ct0.DeviceSerialNumber
    assert "PHISMITH" not in str(ct0.get("ImageComments", "")).upper()
    assert ct0.get("ImageComments") is not None
    codes = {c.CodeValue for c in ct0.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113105", "113107", "113108", "113109"}


def test_table_is_the_whole_of_e_1_1():
    exact, masked, header = deid.table()
    assert header["attributes"] >= 650
    assert "2026c" in header["basic_profile_source"]
    assert {r.basic for r in exact.values()} >= {"X", "Z", "D", "U", "X/Z", "X/D", "X/Z/D",
                                                 "Z/D", "X/Z/U*"}
    assert exact[0x00100010].basic == "Z" and exact[0x00080018].basic == "U"
    assert deid._row(0x60023000).basic == "X"  # overlay data of any 60xx group
    assert deid._row(0x50101234).basic == "X"  # curve data
    assert exact[0x00100040].options.get("rtnPatCharsOpt") == "K"
    assert exact[0x00081010].options.get("rtnDevIdOpt") == "K"


def test_cli_anonymize(planted, tmp_path):
    from imaging_assist.cli.main import main

    src, _, _ = planted
    rc = main(["anonymize", str(src / "A" / "ct"), str(tmp_path / "o"), "--workers", "1"])
    assert rc == 0
    from imaging_assist.privacy.sitekey import key_path

    assert key_path().exists() and (key_path().stat().st_mode & 0o777) == 0o600
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert "deidentification_summary.json" in names and len(names) == 5
    names.remove("deidentification_summary.json")
    assert all(len(n) == 16 and n.endswith(".dcm") for n in names), names  # pseudonyms
    # --keep-names keeps them
    assert main(["anonymize", str(src / "A" / "ct"), str(tmp_path / "k"), "--keep-names"]) == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "deidentification_summary.json", "ref.dcm", "slice0.dcm", "slice1.dcm", "slice2.dcm"]
    # a run into a folder that is not empty, or inside the input, is refused (exit 2)
    assert main(["anonymize", str(src / "A" / "ct"), str(tmp_path / "o")]) == 2
    assert main(["anonymize", str(src), str(src / "A" / "inside")]) == 2
    assert not (src / "A" / "inside").exists()
    # corrupt DICOM left out: exit 1
    shutil.copy(src / "A" / "truncated.dcm", tmp_path / "t.dcm")
    (tmp_path / "in2").mkdir()
    shutil.copy(src / "A" / "truncated.dcm", tmp_path / "in2" / "t.dcm")
    assert main(["anonymize", str(tmp_path / "in2"), str(tmp_path / "o2")]) == 1


def test_every_transfer_syntax_keeps_its_pixel_bytes(tmp_path):
    from conftest import NINE_SYNTAXES

    s = deidentify_tree(need(NINE_SYNTAXES), tmp_path / "o", Options(), key=KEY, audit=False)
    dicom = [r for r in s.written]
    assert len(dicom) == 9, [r.reason for r in s.left_out]
    for r in dicom:
        a, b = pydicom.dcmread(r.source), pydicom.dcmread(r.output)
        assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID, r.relative
        assert b.PixelData == a.PixelData, r.relative
    # the three text files and the NIfTI are listed, never copied
    assert {Path(r.source).suffix for r in s.left_out} == {".txt", ".json", ".nii"}
    assert all(r.not_dicom for r in s.left_out)


def _dciodvfy_errors(path: Path) -> set[str]:
    import subprocess

    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian dicom3tools) is not installed"
    p = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return {ln.strip() for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")}


def test_outputs_add_no_iod_error(tmp_path):
    """dciodvfy: a de-identified file has no error its source did not have (dummy values keep
    Type 1 attributes, Type 2 stay present and empty)."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sorted(need(CT_PHANTOM).glob("*.dcm"))[0], src / "ct.dcm")
    shutil.copy(need(DICOM / "mr_enhanced_multiframe_philips" / "IM_0027_fMAP.dcm"), src / "mr.dcm")
    deidentify_tree(src, tmp_path / "out", Options(), key=KEY, audit=False, keep_names=True)
    for name in ("ct.dcm", "mr.dcm"):
        new = _dciodvfy_errors(tmp_path / "out" / name) - _dciodvfy_errors(src / name)
        assert not new, f"{name}: {sorted(new)[:5]}"


def test_overlay_planes_go_whole_and_registry_uids_stay(tmp_path):
    ds = pydicom.dcmread(sorted(need(CT_PHANTOM).glob("*.dcm"))[0])
    ds.add_new(0x60000010, "US", 512)
    ds.add_new(0x60000011, "US", 512)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60003000, "OW", b"\xff" * (512 * 512 // 8))
    ds.add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2")  # a class UID at the top level
    ds.add_new(0x00080062, "UI", ["1.2.840.10008.5.1.4.1.1.2"])  # SOP Classes in Study
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "ov.dcm")
    deidentify_tree(tmp_path / "in", tmp_path / "out", Options(), key=KEY, audit=False,
                    keep_names=True)
    out = pydicom.dcmread(tmp_path / "out" / "ov.dcm")
    assert not [e for e in out if e.tag.group == 0x6000]
    assert out[0x00081150].value == "1.2.840.10008.5.1.4.1.1.2"
    assert out[0x00080062].value == "1.2.840.10008.5.1.4.1.1.2"
    assert out.SOPClassUID == ds.SOPClassUID


def test_links_are_listed_not_followed_and_a_single_file_may_go_beside_it(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    ct = sorted(need(CT_PHANTOM).glob("*.dcm"))[0]
    shutil.copy(ct, src / "a.dcm")
    (src / "link.dcm").symlink_to(ct)
    (src / "dirlink").symlink_to(ct.parent)
    s = deidentify_tree(src, tmp_path / "out", Options(), key=KEY, audit=False)
    assert [Path(r.source).name for r in s.written] == ["a.dcm"]
    assert sorted(Path(r.source).name for r in s.left_out) == ["dirlink", "link.dcm"]
    assert all("symbolic link" in r.reason for r in s.left_out)
    one = deidentify_tree(src / "a.dcm", src.parent / "beside", Options(), key=KEY, audit=False)
    assert len(one.written) == 1 and Path(one.written[0].output).parent == src.parent / "beside"



def test_fuzz_mutated_files_are_written_or_left_out_with_a_reason(tmp_path):
    """Real files with bytes flipped, cut or duplicated: each is written or listed with a reason,
    the run never stops, and whatever is written still carries no original patient ID."""
    import random

    rng = random.Random(16)
    src = tmp_path / "in"
    src.mkdir()
    bases = [sorted(need(CT_PHANTOM).glob("*.dcm"))[0],
             need(DICOM / "mr_enhanced_multiframe_philips" / "IM_0027_fMAP.dcm")]
    ids = set()
    for i in range(24):
        base = bases[i % 2]
        ids.add(str(pydicom.dcmread(base, stop_before_pixels=True).PatientID))
        b = bytearray(base.read_bytes())
        for _ in range(rng.randint(1, 40)):
            pos = rng.randrange(132, min(len(b), 6000))  # the header, where parsing can break
            b[pos] = rng.randrange(256)
        if i % 5 == 0:
            b = b[:rng.randrange(200, len(b))]
        (src / f"m{i:02d}.dcm").write_bytes(bytes(b))
    s = deidentify_tree(src, tmp_path / "out", Options(), key=KEY, audit=False)
    assert len(s.written) + len(s.left_out) == 24
    assert all(r.reason for r in s.left_out)
    for r in s.written:
        b = Path(r.output).read_bytes()
        assert not any(i.encode() in b for i in ids if len(i) >= 3), r.relative


def test_file_and_folder_names_become_keyed_pseudonyms(tmp_path):
    """Names often carry identifiers (a folder per patient, a file per accession): the output keeps
    the tree's shape with every name replaced by a keyed pseudonym, the same on a second export,
    different under another key; neither the names nor the summary carry the originals."""
    import json

    ct = sorted(need(CT_PHANTOM).glob("*.dcm"))[:2]
    src = tmp_path / "in"
    study = src / "SMITH^JOHN_1957-03-04" / "CT ACC4711"
    study.mkdir(parents=True)
    for i, f in enumerate(ct):
        shutil.copy(f, study / f"SMITH_JOHN_{i}.dcm")
    (study / "SMITH_JOHN_bad.dcm").write_bytes(ct[0].read_bytes()[:900])  # left out
    a = deidentify_tree(src, tmp_path / "a", Options(), key=KEY, audit=False)
    b = deidentify_tree(src, tmp_path / "b", Options(), key=KEY, audit=False)
    c = deidentify_tree(src, tmp_path / "c", Options(), key=b"\2" * 32, audit=False)
    assert len(a.written) == 2 and len(a.left_out) == 1
    rels = sorted(str(Path(r.output).relative_to(tmp_path / "a")) for r in a.written)
    assert rels == sorted(str(Path(r.output).relative_to(tmp_path / "b")) for r in b.written)
    assert rels != sorted(str(Path(r.output).relative_to(tmp_path / "c")) for r in c.written)
    # the shape is kept: two levels of folders, both files in one folder
    assert all(len(Path(r).parts) == 3 for r in rels) and len({Path(r).parent for r in rels}) == 1
    everything = "\n".join(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*"))
    everything += (tmp_path / "a" / "deidentification_summary.json").read_text()
    for word in ("SMITH", "JOHN", "1957", "4711"):
        assert word not in everything.upper(), word
    summary = json.loads((tmp_path / "a" / "deidentification_summary.json").read_text())
    assert summary["file_names"] == "keyed pseudonyms"
    assert summary["left_out"][0]["file"].endswith(".dcm") and summary["left_out"][0]["reason"]
    # on this machine the console lines still name the source, so the user can find it
    assert any("SMITH_JOHN_bad.dcm" in ln for ln in a.lines())
    k = deidentify_tree(src, tmp_path / "k", Options(), key=KEY, audit=False, keep_names=True)
    assert sorted(Path(r.output).name for r in k.written) == ["SMITH_JOHN_0.dcm", "SMITH_JOHN_1.dcm"]


def test_a_named_pipe_in_the_input_is_left_out_not_waited_on(tmp_path):
    """Reading a FIFO waits for a writer: `anonymize` hung on one in the input folder."""
    import os
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sorted(need(CT_PHANTOM).glob("*.dcm"))[0], src / "a.dcm")
    os.mkfifo(src / "pipe.dcm")
    code = (f"from pathlib import Path\nfrom imaging_assist.privacy.deid import Options, deidentify_tree\n"
            f"s = deidentify_tree(Path({str(src)!r}), Path({str(tmp_path / 'out')!r}), Options(), "
            f"key=bytes(range(32)), audit=False)\n"
            "print([Path(r.source).name for r in s.written], [(Path(r.source).name, r.reason) for r in s.left_out])")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        pytest.fail("still waiting on the named pipe after 60 s")
    assert r.stdout.strip() == ("['a.dcm'] [('pipe.dcm', 'not a regular file (a named pipe, socket or "
                                "device)')]"), r.stderr[-2000:]
