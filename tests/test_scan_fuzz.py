"""Fuzz the scan with mutated real files: flipped bytes, truncations, absurd attributes,
NaN numbers, multi-valued UIDs, wrong VRs.  scan() never raises or hangs; every mutated
file is either a record that agrees with pydicom and passes check_record, or a Problem
with a one-line reason; the unmutated files beside them index exactly as on their own;
the CLI prints no traceback.  Fixed seeds: a failure reproduces."""

import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import CT_PHANTOM, DICOM, ROOT, need
from imaging_assist.dicom import scan
from imaging_assist.dicom.header import _to_plain
from imaging_assist.dicom.index import check_record

DEMO = ROOT / "imaging_assist" / "data" / "demo"
SOURCES = {  # name -> (file, full set of mutations?)
    "ct": (CT_PHANTOM / "I10.dcm", True),  # native, fast walk
    "rle": (DEMO / "ct_head_phantom" / "ct_001.dcm", True),  # encapsulated RLE
    "cr": (DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm", True),  # no preamble: pydicom
    "enh": (DICOM / "mr_enhanced_multiframe_philips" / "IM_0027_fMAP.dcm", False),  # enhanced multi-frame
    "j2k": (DICOM / "mr_enhanced_siemens_series_jpeg2000_lossless_derived" / "011-0001.dcm", False),
    "rgb": (DICOM / "rgb_jpeg_lossless_secondary_capture" / "GH538-jpeg14sv1.dcm", False),
}
CHECKED = ("Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PixelRepresentation",
           "NumberOfFrames", "PhotometricInterpretation", "SOPInstanceUID", "SeriesInstanceUID",
           "StudyInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
           "RescaleSlope", "RescaleIntercept")

EDITS = {
    "rows0": lambda ds: setattr(ds, "Rows", 0),
    "rows_max": lambda ds: setattr(ds, "Rows", 65535),
    "cols_max": lambda ds: setattr(ds, "Columns", 65535),
    "rows_half": lambda ds: setattr(ds, "Rows", ds.Rows // 2),
    "bits0": lambda ds: setattr(ds, "BitsAllocated", 0),
    "bits12": lambda ds: setattr(ds, "BitsAllocated", 12),
    "bits64": lambda ds: setattr(ds, "BitsAllocated", 64),
    "frames_big": lambda ds: ds.add_new(0x00280008, "IS", "99999"),
    "frames_neg": lambda ds: ds.add_new(0x00280008, "IS", "-1"),
    "frames_nan": lambda ds: ds.add_new(0x00280008, "LO", "NaN"),
    "samples0": lambda ds: setattr(ds, "SamplesPerPixel", 0),
    "samples4": lambda ds: setattr(ds, "SamplesPerPixel", 4),
    "ipp_nan": lambda ds: ds.add_new(0x00200032, "LO", "NaN\\0\\0"),
    "ipp_short": lambda ds: ds.add_new(0x00200032, "DS", ["1", "2"]),
    "spacing_inf": lambda ds: ds.add_new(0x00280030, "LO", "inf\\1"),
    "spacing_zero": lambda ds: ds.add_new(0x00280030, "DS", ["0", "0"]),
    "spacing_neg": lambda ds: ds.add_new(0x00280030, "DS", ["-1", "-1"]),
    "slope_nan": lambda ds: ds.add_new(0x00281053, "LO", "nan"),
    "slope_zero": lambda ds: ds.add_new(0x00281053, "DS", "0"),
    "series_multi": lambda ds: setattr(ds, "SeriesInstanceUID", ["1.2.3", "1.2.4"]),
    "sop_multi": lambda ds: setattr(ds, "SOPInstanceUID", ["1.2.3", "1.2.4"]),
    "series_US": lambda ds: ds.add_new(0x0020000E, "US", 7),
    "rows_UL": lambda ds: ds.add_new(0x00280010, "UL", 70000),
    "rows_SS": lambda ds: ds.add_new(0x00280010, "SS", -512),
    "rows_FD": lambda ds: ds.add_new(0x00280010, "FD", 512.5),
    "bits_OB": lambda ds: ds.add_new(0x00280100, "OB", b"\x10\x00\x00\x00"),
    "no_series": lambda ds: delattr(ds, "SeriesInstanceUID"),
    "no_pixels": lambda ds: delattr(ds, "PixelData"),
}


def _pixel_tag_pos(data: bytes) -> int:
    i = data.rfind(b"\xe0\x7f\x10\x00")
    return i if i > 0 else min(len(data), 4096)


def _mutants(name: str, src: Path, full: bool, out: Path, rng) -> list[Path]:
    data = src.read_bytes()
    hdr = _pixel_tag_pos(data)
    made = []

    def put(tag, b):
        p = out / f"{name}_{tag}.dcm"
        p.write_bytes(b)
        made.append(p)

    for k in range(14 if full else 6):  # 1-4 flipped bytes, mostly in the header
        b = bytearray(data)
        span = hdr + 16 if k < (11 if full else 5) else len(data)
        for pos in rng.integers(0, span, size=int(rng.integers(1, 5))):
            b[pos] ^= int(rng.integers(1, 256))
        put(f"flip{k}", bytes(b))
    cuts = sorted(set(int(c) for c in rng.integers(1, hdr, size=8 if full else 3)))
    cuts += [hdr - 1, hdr + 4, hdr + 11, hdr + 20, len(data) // 2, len(data) - 1]
    for c in cuts:
        put(f"cut{c}", data[:c])
    if full:
        for tag, edit in EDITS.items():
            ds = pydicom.dcmread(src, force=True)
            edit(ds)
            p = out / f"{name}_{tag}.dcm"
            ds.save_as(p, enforce_file_format=False)
            made.append(p)
    return made


def _plain(v):
    try:
        return _to_plain(v)
    except Exception:
        return "<unreadable>"


def _same_number(a: float, b: float) -> bool:
    """Equal, NaN included (a NaN geometry value is indexed as read; the loader warns)."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b)


def _agrees_with_pydicom(rec) -> str | None:
    """The record's essential attributes are what pydicom reads from the same bytes."""
    try:
        ds = pydicom.dcmread(rec.path, force=True, stop_before_pixels=True)
    except Exception as e:
        return f"pydicom cannot read an accepted file: {e}"
    for kw in CHECKED:
        try:
            ref = _plain(ds.get(kw))
        except Exception:
            ref = "<unreadable>"
        mine = rec.tags.get(kw)
        if ref in (None, "") and mine in (None, ""):
            continue
        if isinstance(ref, float) and isinstance(mine, (int, float)) and _same_number(ref, mine):
            continue
        if isinstance(ref, list) and isinstance(mine, list) and len(ref) == len(mine) and all(
                _same_number(float(a), float(b)) for a, b in zip(ref, mine)):
            continue
        if ref != mine:
            return f"{kw}: record {mine!r} != pydicom {ref!r}"
    return None


def _records(index) -> dict[str, object]:
    return {r.path: r for s in index.all_series() for r in s.instances}


@pytest.mark.timeout(120)
def test_scan_survives_mutated_real_files(tmp_path):
    clean, bad = tmp_path / "clean", tmp_path / "mutated"
    clean.mkdir()
    bad.mkdir()
    for f in ("I10.dcm", "I100.dcm", "I1000.dcm"):
        shutil.copy(need(CT_PHANTOM / f), clean / f)
    rng = np.random.default_rng(20261204)
    mutated: list[Path] = []
    for name, (src, full) in SOURCES.items():
        need(src)
        if name != "ct":
            shutil.copy(src, clean / f"{name}.dcm")
        mutated += _mutants(name, src, full, bad, rng)
    # the same mutants inside a zip (the streaming reader) and a damaged zip
    zpath = tmp_path / "mutated.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in mutated[::3]:
            zf.write(p, f"z/{p.name}")
    zdata = zpath.read_bytes()
    (tmp_path / "cut.zip").write_bytes(zdata[: len(zdata) // 2])
    flipped = bytearray(zdata)
    for pos in rng.integers(0, len(zdata), size=40):
        flipped[pos] ^= 0xFF
    (tmp_path / "flipped.zip").write_bytes(bytes(flipped))

    alone = _records(scan(str(clean)))
    index = scan(str(tmp_path), workers=4)  # must not raise

    problems = {p.path: p.reason for p in index.problems}
    for path, reason in problems.items():
        assert reason and "\n" not in reason and len(reason) < 400, (path, reason)
    recs = _records(index)
    for p in mutated:  # every mutant: a record that is right, or a problem
        assert (str(p) in recs) != (str(p) in problems), p.name
        if str(p) in recs:
            rec = recs[str(p)]
            assert check_record(rec) is None
            why = _agrees_with_pydicom(rec)
            assert why is None, f"{p.name}: {why}"
    assert len(problems) > len(mutated) // 3  # the mutations really bite

    for path, rec in alone.items():  # the clean files index exactly as on their own
        assert path in recs, path
        assert recs[path].tags == rec.tags and recs[path].pixel_offset == rec.pixel_offset
    ct = [s for s in index.all_series() if any(r.path == str(clean / "I10.dcm") for r in s.instances)]
    assert len(ct) == 1 and {str(clean / f) for f in ("I10.dcm", "I100.dcm", "I1000.dcm")} <= {
        r.path for r in ct[0].instances}

    # zip members: each one a record or a problem, never silently dropped
    zmembers = [f"{zpath}!z/{p.name}" for p in mutated[::3]]
    zrecs = {r.display_path for s in index.all_series() for r in s.instances if r.member}
    for m in zmembers:
        assert (m in zrecs) != (m in problems), m

    # the command line: one line per problem, no traceback
    out = subprocess.run([sys.executable, "-m", "imaging_assist", "scan", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr
