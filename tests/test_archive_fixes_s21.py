"""Session 21 audit of the archive readers (DICOMDIR, zip, header reads): a looping or
partly bad DICOMDIR, a file truncated while it is scanned, a zip of many non-DICOM members,
a zip member without its preamble, and two zip members of one name."""

import io
import json
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import pydicom
import pytest

from conftest import DICOM, need
from imaging_assist.dicom import header as H
from imaging_assist.dicom import scan
from imaging_assist.dicom.archive import read_member_bytes
from imaging_assist.dicom.header import HeaderError, InstanceRecord
from imaging_assist.errors import UserError

PY = sys.executable
GE = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"
CT = DICOM / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"
NEXT, LOWER = (0x0004, 0x1400), (0x0004, 0x1420)


# --------------------------------------------------------------------------- DICOMDIR
def _media(out: Path) -> Path:
    """A DICOMDIR (pydicom's FileSet) over copies of the 8 GE CT slices."""
    from pydicom.fileset import FileSet
    fs = FileSet()
    for p in sorted(need(GE).glob("*.dcm")):
        ds = pydicom.dcmread(p)
        for k, v in (("StudyDate", "20200101"), ("StudyTime", "120000"), ("StudyID", "1"),
                     ("SeriesNumber", 1), ("InstanceNumber", 1)):
            if not ds.get(k):
                setattr(ds, k, v)
        fs.add(ds)
    fs.write(out)
    return out


def _variant(base: Path, out: Path, patch) -> Path:
    """A copy of base whose DICOMDIR bytes are patched in place (same lengths: offsets stay).
    patch(raw, records by offset, ul_pos) -> [(position, bytes)]."""
    raw = (base / "DICOMDIR").read_bytes()
    recs = {r.seq_item_tell: r for r in pydicom.dcmread(base / "DICOMDIR").DirectoryRecordSequence}

    def ul_pos(item_offset, tag):  # where the UL value of tag sits inside the record at item_offset
        g, e = tag
        return raw.index(struct.pack("<HH", g, e) + b"UL" + struct.pack("<H", 4), item_offset) + 8

    shutil.copytree(base, out)
    b = bytearray(raw)
    for pos, val in patch(raw, recs, ul_pos):
        b[pos:pos + len(val)] = val
    (out / "DICOMDIR").write_bytes(bytes(b))
    return out


def _images(recs):
    return sorted(o for o, r in recs.items() if r.DirectoryRecordType == "IMAGE")


def _patient(recs):
    return next(o for o, r in recs.items() if r.DirectoryRecordType == "PATIENT")


def _scan_in_child(path: Path, timeout: float = 60) -> dict:
    """scan() in a child process (a hang must fail the test, not stop the run)."""
    code = ("import json, sys\nfrom imaging_assist.dicom import scan\nidx = scan(sys.argv[1])\n"
            "print(json.dumps({'n': sum(s.n_instances for s in idx.all_series()), "
            "'problems': [p.reason for p in idx.problems]}))")
    try:
        r = subprocess.run([PY, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scan of {path} did not return in {timeout} s")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return _media(tmp_path_factory.mktemp("dd") / "base")


@pytest.mark.parametrize("name", ["next_to_first", "next_to_self", "lower_to_patient"])
def test_dicomdir_record_loop_is_one_problem_not_a_hang(media, tmp_path, name):
    def patch(raw, recs, ul_pos):
        imgs = _images(recs)
        if name == "next_to_first":  # the last image's next record is the first image
            return [(ul_pos(imgs[-1], NEXT), struct.pack("<L", imgs[0]))]
        if name == "next_to_self":
            return [(ul_pos(imgs[-1], NEXT), struct.pack("<L", imgs[-1]))]
        # an image's lower-level offset points back up to the patient record
        return [(ul_pos(imgs[0], LOWER), struct.pack("<L", _patient(recs)))]
    d = _variant(media, tmp_path / name, patch)
    got = _scan_in_child(d / "DICOMDIR")
    assert got["n"] == 8, got  # every record was read once
    assert len(got["problems"]) == 1 and "loop" in got["problems"][0], got
    assert "offset" in got["problems"][0] and "recursion" not in got["problems"][0]


@pytest.mark.parametrize("name,fid", [("dotdot", "..\\..\\..\\..\\..\\etc\\passwd"), ("absolute", "/etc/passwd")])
def test_one_dicomdir_record_outside_its_folder_leaves_the_others(media, tmp_path, name, fid):
    old = b"PT000000\\ST000000\\SE000000\\IM000007"

    def patch(raw, recs, ul_pos):
        assert raw.count(old) == 1
        return [(raw.index(old), fid.encode().ljust(len(old)))]
    d = _variant(media, tmp_path / name, patch)
    index = scan(str(d / "DICOMDIR"))
    assert sum(s.n_instances for s in index.all_series()) == 7  # pristine: 0 (the whole FileSet refused)
    assert len(index.problems) == 1, index.problems
    reason = index.problems[0].reason
    assert "outside the DICOMDIR's folder" in reason and "passwd" in reason and "offset" in reason


def test_dicomdir_offset_to_nowhere_is_named_and_the_others_are_read(media, tmp_path):
    def patch(raw, recs, ul_pos):
        return [(ul_pos(_images(recs)[-1], NEXT), struct.pack("<L", 123457))]
    d = _variant(media, tmp_path / "bad_offset", patch)
    index = scan(str(d / "DICOMDIR"))
    assert sum(s.n_instances for s in index.all_series()) == 8
    assert len(index.problems) == 1, index.problems
    reason = index.problems[0].reason
    assert "123457" in reason and "no record" in reason, reason


def test_dicomdir_inside_a_zip_is_no_problem(media, tmp_path):
    """Its members are all scanned anyway; pydicom's FileSet refused a DICOMDIR read from a
    zip ("must have a 'filename' attribute"), a problem line for a sound archive."""
    p = tmp_path / "media.zip"
    with zipfile.ZipFile(p, "w") as zf:
        for f in sorted(media.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(media).as_posix())
    index = scan(str(p))
    assert sum(s.n_instances for s in index.all_series()) == 8
    assert not index.problems, index.problems
    assert index.dicomdirs == [f"{p}!DICOMDIR"]


# --------------------------------------------------------------------------- SIGBUS
def test_file_truncated_while_its_header_is_read_never_kills_the_scan(tmp_path):
    """A file rewritten in place (truncated) while the scan reads it: a mapped file made the
    process die of SIGBUS with no message; read into memory, it is one record or one problem."""
    src = sorted(need(CT).glob("*.dcm"))[0]
    f = tmp_path / "s" / src.name
    f.parent.mkdir()
    shutil.copy(src, f)
    code = (
        "import os, sys\n"
        "from imaging_assist.dicom import header as H, scan\n"
        "real = H._fast_scan\n"
        "def cut(buf, rec, partial=False):\n"  # the file is truncated after it was opened
        "    os.truncate(sys.argv[1], 0)\n"
        "    return real(buf, rec, partial)\n"
        "H._fast_scan = cut\n"
        "idx = scan(os.path.dirname(sys.argv[1]))\n"
        "print('returned', len(idx.all_series()), len(idx.problems))\n")
    r = subprocess.run([PY, "-c", code, str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-1500:])  # pristine: -7 (SIGBUS)
    assert "returned" in r.stdout


def test_header_read_in_pieces_gives_the_same_records_as_the_whole_file(monkeypatch):
    """Guard for the read-not-mapped header: a prefix plus reads where needed (fragment items)
    gives the records the whole file in memory gives, on every file of the DICOM test data."""
    files = sorted(p for p in need(DICOM).rglob("*") if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if "ct_head_phantom" not in str(p)][:60] + sorted(CT.glob("*.dcm"))[:3]

    def records():
        out = {}
        for p in files:
            try:
                r = H.read_record(str(p))
            except HeaderError as e:
                out[p] = str(e)
                continue
            out[p] = (r.tags, r.has_pixels, r.encapsulated, r.pixel_offset, r.pixel_length, r.pixel_available,
                      r.fragments, r.fragment_bytes, r.offset_table_entries, r.fragment_error, r.codestream)
        return out
    pieces = records()
    monkeypatch.setattr(H, "HEADER_CHUNK", 1 << 30)  # the whole file at once
    assert records() == pieces
    assert any(isinstance(v, tuple) and v[2] and v[6] for v in pieces.values())  # encapsulated ones walked


# --------------------------------------------------------------------------- zips
def test_zip_of_many_non_dicom_members_is_scanned_in_linear_time(tmp_path, monkeypatch):
    n = 3000
    p = tmp_path / "notes.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(n):
            zf.writestr(f"notes/{k:06d}.dat", b"hello %d\n" % k)
    parses = []
    real = zipfile.ZipFile._RealGetContents

    def counted(self):
        parses.append(1)
        return real(self)
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", counted)
    t0 = time.perf_counter()
    index = scan(str(p))
    dt = time.perf_counter() - t0
    assert len(index.other_files) == n and not index.problems
    assert {o.reason for o in index.other_files} == {"text"}
    # the central directory is parsed once per batch of members, never once per member
    assert len(parses) < 40, len(parses)  # pristine: > 3000
    assert dt < 20, dt


def _member_without_preamble(frames: int) -> tuple[bytes, int]:
    """A GE CT slice written without preamble or File Meta, with `frames` 512x512 frames."""
    ds = pydicom.dcmread(sorted(need(GE).glob("*.dcm"))[0])
    ds.preamble = None
    del ds.file_meta
    ds.NumberOfFrames = frames
    ds.PixelData = b""
    hdr = io.BytesIO()
    pydicom.dcmwrite(hdr, ds, enforce_file_format=False)
    h = hdr.getvalue()
    assert h.endswith(b"\xe0\x7f\x10\x00OW\x00\x00\x00\x00\x00\x00")
    frame = ds.Rows * ds.Columns * 2
    return h[:-4] + (frames * frame).to_bytes(4, "little"), frame


def test_zip_member_without_preamble_is_read_in_bounded_memory(tmp_path):
    frames = 96
    head, frame = _member_without_preamble(frames)
    p = tmp_path / "cr.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("m.dcm", "w", force_zip64=True) as w:
            w.write(head)
            for _ in range(frames):
                w.write(bytes(frame))
    size = len(head) + frames * frame
    assert size > 48 << 20
    tracemalloc.start()
    index = scan(str(p))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [s.n_instances for s in index.all_series()] == [1] and not index.problems, index.problems
    rec = index.all_series()[0].instances[0]
    assert rec.has_pixels and rec.pixel_length == frames * frame and rec.frames == frames
    assert peak < 40 << 20, peak / 2**20  # pristine: the member twice (> 96 MiB)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_two_zip_members_of_one_name_are_one_problem_never_a_silent_copy(tmp_path):
    src = sorted(need(GE).glob("*.dcm"))
    p = tmp_path / "dup.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x/slice.dcm", src[0].read_bytes())
        zf.writestr("x/slice.dcm", src[1].read_bytes())
        zf.writestr("x/other.dcm", src[2].read_bytes())
    index = scan(str(p))
    # the unique member is read; the two of one name are not (the first was never read, and
    # the second was listed twice as "copies of one image")
    got = [r.member for s in index.all_series() for r in s.instances]
    assert got == ["x/other.dcm"], got
    assert not [w for s in index.all_series() for w in s.warnings if "copies" in w]
    assert len(index.problems) == 1 and index.problems[0].path == str(p), index.problems
    assert "x/slice.dcm" in index.problems[0].reason and "2 zip members" in index.problems[0].reason
    # the loader's and the batch hash's readers refuse the ambiguous name too
    with pytest.raises(HeaderError, match="named x/slice.dcm"):
        read_member_bytes(str(p), "x/slice.dcm")
    assert len(read_member_bytes(str(p), "x/other.dcm")) == src[2].stat().st_size
    from imaging_assist.batch.sources import Candidate, content_hash
    from imaging_assist.dicom.index import SeriesInfo
    series = SeriesInfo(uid="1.2", key="1.2", instances=[InstanceRecord(path=str(p), member="x/slice.dcm")])
    with pytest.raises(UserError, match="named x/slice.dcm"):
        content_hash(Candidate("series", series, "s", str(p)))
    ok = SeriesInfo(uid="1.2", key="1.2", instances=[InstanceRecord(path=str(p), member="x/other.dcm")])
    assert len(content_hash(Candidate("series", ok, "s", str(p)))) == 64
