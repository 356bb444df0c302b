"""Issue 12, scanning: one bad file is one problem line, never an abort, a hang, a runaway
allocation or a silently wrong record."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_charset_files

from _synth import write_ct_series
from conftest import ROOT, need
from imaging_assist.dicom import header as H
from imaging_assist.dicom import scan
from imaging_assist.dicom.index import check_record

PY = sys.executable


def _problems(index) -> dict[str, str]:
    return {Path(p.path.split("!")[-1]).name: p.reason for p in index.problems}


def _series_sizes(index) -> list[int]:
    return sorted(s.n_instances for s in index.all_series())


def _three(tmp_path, rows=16, cols=12, **kw):
    return write_ct_series(tmp_path / "s", [(0, 0, z) for z in range(3)], rows=rows, cols=cols, **kw)


# --------------------------------------------------------------------------- item 1
def _set(ds, tag, vr, value):
    ds.add_new(tag, vr, value)


MUTATIONS = {
    "multi_series_uid": lambda ds: setattr(ds, "SeriesInstanceUID", ["1.2.3.4", "1.2.3.5"]),
    "multi_study_uid": lambda ds: setattr(ds, "StudyInstanceUID", ["1.2.3.4", "1.2.3.5"]),
    "multi_sop_uid": lambda ds: setattr(ds, "SOPInstanceUID", ["1.2.3.4", "1.2.3.5"]),
    "series_uid_as_US": lambda ds: _set(ds, 0x0020000E, "US", 5),
    "series_uid_as_FD": lambda ds: _set(ds, 0x0020000E, "FD", 5.5),
    "multi_rows": lambda ds: setattr(ds, "Rows", [16, 16]),
    "rows_as_SS_negative": lambda ds: _set(ds, 0x00280010, "SS", -16),
    "rows_as_DS_fraction": lambda ds: _set(ds, 0x00280010, "DS", "16.5"),
    "multi_bits_allocated": lambda ds: setattr(ds, "BitsAllocated", [16, 8]),
    "frames_not_integer": lambda ds: _set(ds, 0x00280008, "LO", "1A"),
    "frames_zero": lambda ds: _set(ds, 0x00280008, "IS", "0"),
    "samples_5": lambda ds: setattr(ds, "SamplesPerPixel", 5),
    "bits_stored_over_allocated": lambda ds: setattr(ds, "BitsStored", 20),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_one_bad_value_is_one_problem(tmp_path, name):
    paths = _three(tmp_path)
    ds = pydicom.dcmread(paths[1])
    MUTATIONS[name](ds)
    ds.save_as(paths[1])
    for workers in (1, 4):
        index = scan(str(tmp_path), workers=workers)
        probs = _problems(index)
        assert list(probs) == ["img001.dcm"], (name, probs)
        assert probs["img001.dcm"] and "\n" not in probs["img001.dcm"]
        assert "internal error" not in probs["img001.dcm"]
        assert _series_sizes(index) == [2], name


def test_multi_valued_text_is_kept_as_in_the_file(tmp_path):
    paths = _three(tmp_path)
    ds = pydicom.dcmread(paths[0])
    ds.SeriesDescription = ["HEAD", "NECK"]  # a backslash in a description
    ds.Modality = ["CT", "PT"]
    ds.save_as(paths[0])
    index = scan(str(tmp_path))
    assert not index.problems and _series_sizes(index) == [3]
    s = index.all_series()[0]
    assert (s.description, s.modality) == ("HEAD\\NECK", "CT\\PT")


def _patch_length(data: bytes, tag: int, new_len: int) -> bytes:
    """Set the 16-bit length of an explicit-VR element (found by its tag bytes)."""
    key = tag.to_bytes(4, "big")
    key = key[1::-1] + key[3:1:-1]  # group LE, element LE
    i = data.index(key, 132)
    b = bytearray(data)
    b[i + 6:i + 8] = new_len.to_bytes(2, "little")
    return bytes(b)


@pytest.mark.parametrize("tag,length", [(0x0020000E, 0xFFFF), (0x00100010, 0x3000), (0x00280010, 3),
                                        (0x00280011, 0), (0x0020000D, 1)])
def test_corrupted_value_length_is_one_problem_or_correct(tmp_path, tag, length):
    paths = _three(tmp_path, rows=64, cols=64)
    paths[1].write_bytes(_patch_length(paths[1].read_bytes(), tag, length))
    index = scan(str(tmp_path), workers=4)
    probs = _problems(index)
    assert set(probs) <= {"img001.dcm"}
    for s in index.all_series():
        for r in s.instances:  # a record that made it is consistent with its pixel data
            assert check_record(r) is None
            assert (r.rows, r.columns) == (64, 64)
    assert sum(_series_sizes(index)) + len(probs) == 3


# --------------------------------------------------------------------------- item 2
_CHARSET_CHILD = r"""
import json, sys
from imaging_assist.dicom import scan
idx = scan(sys.argv[1], workers=8)
print(json.dumps([p.reason for p in idx.problems]))
"""


def test_threaded_scan_has_no_import_race(tmp_path):
    """Charset files (the fast walk imports pydicom.charset) next to big-endian files (the
    pydicom path imports pydicom): the two first imports on different threads deadlock-break
    into 'partially initialized module' ImportErrors unless imports happen before the pool."""
    import shutil
    cs = [f for f in get_charset_files() if f.endswith(".dcm") and "SQ" not in f]
    be = pydicom.data.get_testdata_file("MR_small_bigendian.dcm")
    for k in range(16):  # chunks of 8 per thread, each starting with the other kind
        for j in range(8):
            src = be if (k % 2 == 0) == (j % 2 == 0) else cs[(k * 8 + j) % len(cs)]
            shutil.copy(src, tmp_path / f"{k:02d}_{j}.dcm")
    expected = json.dumps([p.reason for p in scan(str(tmp_path), workers=1).problems])
    for _ in range(4):  # a fresh interpreter each time: the race is on first import
        out = subprocess.run([PY, "-c", _CHARSET_CHILD, str(tmp_path)], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        reasons = out.stdout.strip().splitlines()[-1]
        assert "ImportError" not in reasons and "partially initialized" not in reasons
        assert reasons == expected


# --------------------------------------------------------------------------- item 3
_SCAN_CHILD = r"""
import json, sys
from imaging_assist.dicom import scan
idx = scan(sys.argv[1:], workers=4)
print(json.dumps({"series": [s.n_instances for s in idx.all_series()],
                  "problems": {p.path: p.reason for p in idx.problems}}))
"""


def _scan_in_child(*paths, timeout=60):
    out = subprocess.run([PY, "-c", _SCAN_CHILD, *map(str, paths)], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_special_files_never_block(tmp_path):
    _three(tmp_path)
    d = tmp_path / "s"
    os.mkfifo(d / "pipe.dcm")
    os.mkfifo(d / "pipe.zip")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.dcm"))
    os.symlink(d / "loop_b", d / "loop_a")
    os.symlink(d / "loop_a", d / "loop_b")
    os.symlink(d, d / "dirloop")  # a folder that contains itself
    os.symlink(d / "pipe.dcm", d / "link_to_pipe.dcm")
    try:
        res = _scan_in_child(tmp_path, d / "pipe.dcm")  # also a FIFO given directly
    finally:
        sock.close()
    assert res["series"] == [3]
    names = {Path(p).name: r for p, r in res["problems"].items()}
    for n in ("pipe.dcm", "pipe.zip", "sock.dcm", "link_to_pipe.dcm"):
        assert "not a regular file" in names[n], names
    assert "loop_a" in names and "loop_b" in names
    assert all(r and "\n" not in r for r in names.values())


# --------------------------------------------------------------------------- item 4
def test_zip_bomb_is_refused_quickly_in_bounded_memory(tmp_path):
    good = write_ct_series(tmp_path / "g", [(0, 0, z) for z in range(2)])
    zpath = tmp_path / "bomb.zip"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in good:
            zf.write(p, p.name)
        with zf.open("bomb.dcm", "w", force_zip64=True) as w:
            w.write(good[0].read_bytes()[:-200])  # a DICOM header, then a flood of zeros
            for _ in range(256):
                w.write(zeros)
    assert zpath.stat().st_size < 2 << 20
    tracemalloc.start()
    t0 = time.perf_counter()
    index = scan(str(zpath))
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    probs = _problems(index)
    assert "bomb.dcm" in probs and "expand" in probs["bomb.dcm"], probs
    assert _series_sizes(index) == [2]
    assert dt < 10 and peak < 64 << 20, (dt, peak)


def test_zip_total_size_cap(tmp_path, monkeypatch):
    from imaging_assist.dicom import archive
    good = write_ct_series(tmp_path / "g", [(0, 0, z) for z in range(3)])
    zpath = tmp_path / "big.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in good:
            zf.write(p, p.name)
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 2 * good[0].stat().st_size)
    index = scan(str(zpath))
    assert [p.path for p in index.problems] == [str(zpath)]
    assert "uncompressed" in index.problems[0].reason


def _many_member_zip(tmp_path, n: int) -> Path:
    p = write_ct_series(tmp_path / f"tpl{n}", [(0, 0, 12345678)], rows=4, cols=4)[0]
    data = p.read_bytes()
    ds = pydicom.dcmread(p)
    sop = ds.SOPInstanceUID.encode()
    zpath = tmp_path / f"many{n}.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for k in range(n):
            d = data.replace(b"12345678.000000", f"{k:08d}.000000".encode())
            d = d.replace(sop, (sop[:-8] + f"{k:08d}".encode()))
            zf.writestr(f"DIR/{k:05d}.dcm", d)
    return zpath


def test_zip_members_scan_in_linear_time(tmp_path):
    small, big = _many_member_zip(tmp_path, 400), _many_member_zip(tmp_path, 4000)
    scan(str(small))
    t0 = time.perf_counter()
    a = scan(str(small))
    t1 = time.perf_counter()
    b = scan(str(big))
    t2 = time.perf_counter()
    assert _series_sizes(a) == [400] and _series_sizes(b) == [4000]
    assert not a.problems and not b.problems
    assert (t2 - t1) < 25 * (t1 - t0) + 1.0, (t1 - t0, t2 - t1)


# --------------------------------------------------------------------------- item 5
def _rle(tmp_path, rows=64, cols=64):
    from pydicom.uid import RLELossless
    paths = _three(tmp_path, rows=rows, cols=cols)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(p)
    return paths


def test_encapsulated_decoded_size_is_bounded_by_the_file(tmp_path):
    paths = _rle(tmp_path)
    ds = pydicom.dcmread(paths[1])
    ds.Rows, ds.Columns = 40000, 40000  # 3 GiB from a few kB
    ds.save_as(paths[1])
    ds = pydicom.dcmread(paths[2])
    ds.NumberOfFrames = 7  # one fragment cannot hold 7 frames
    ds.save_as(paths[2])
    index = scan(str(tmp_path))
    probs = _problems(index)
    assert "compression ratio" in probs["img001.dcm"], probs
    assert "NumberOfFrames is 7" in probs["img002.dcm"], probs
    assert _series_sizes(index) == [1]


def test_basic_offset_table_must_match_frames(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import compress  # noqa: F401  (RLE encoder is built in)
    from pydicom.uid import RLELossless
    paths = _three(tmp_path, rows=16, cols=16)
    frames = []
    for p in paths:
        d = pydicom.dcmread(p)
        d.compress(RLELossless)
        frames.append(next(pydicom.encaps.generate_frames(d.PixelData, number_of_frames=1)))
    ds = pydicom.dcmread(paths[0])
    ds.compress(RLELossless)
    ds.PixelData = encapsulate(frames[:2], has_bot=True)
    ds.NumberOfFrames = 3
    ds.save_as(paths[0])
    probs = _problems(scan(str(paths[0])))
    assert "Offset Table" in probs["img000.dcm"], probs


def test_native_pixel_bytes_must_match_attributes(tmp_path):
    paths = _three(tmp_path, rows=64, cols=64)
    ds = pydicom.dcmread(paths[1])
    ds.Rows = 32  # the data holds two such frames: this would show half the image
    ds.save_as(paths[1])
    index = scan(str(tmp_path))
    probs = _problems(index)
    assert "Rows" in probs["img001.dcm"] and "NumberOfFrames" in probs["img001.dcm"], probs
    assert _series_sizes(index) == [2]


def test_pixel_value_beyond_end_of_file_without_meta(tmp_path):
    paths = _three(tmp_path, rows=64, cols=64)
    ds = pydicom.dcmread(paths[1])
    del ds.file_meta
    ds.preamble = None
    ds.save_as(paths[1], implicit_vr=True, little_endian=True, enforce_file_format=False)
    data = paths[1].read_bytes()
    assert not data.startswith(bytes(128))
    paths[1].write_bytes(data[:-3000])
    probs = _problems(scan(str(tmp_path)))
    assert "truncated" in probs["img001.dcm"], probs


def test_ybr_full_422_native_size_is_understood():
    f = pydicom.data.get_testdata_file("SC_ybr_full_422_uncompressed.dcm")
    assert check_record(H.read_record(f)) is None


@pytest.mark.parametrize("rows,cols", [(0, 64), (64, 0)])
def test_zero_size_is_a_problem(tmp_path, rows, cols):
    paths = _three(tmp_path, rows=64, cols=64)
    ds = pydicom.dcmread(paths[1])
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(paths[1])
    probs = _problems(scan(str(tmp_path)))
    assert "img001.dcm" in probs


# --------------------------------------------------------------------------- item 6
def test_instances_need_uids_and_images_need_pixels(tmp_path):
    paths = write_ct_series(tmp_path / "s", [(0, 0, z) for z in range(5)])
    ds = pydicom.dcmread(paths[1])
    del ds.SeriesInstanceUID
    ds.save_as(paths[1])
    ds = pydicom.dcmread(paths[2])
    del ds.SOPInstanceUID
    ds.save_as(paths[2])
    ds = pydicom.dcmread(paths[3])
    del ds.PixelData
    ds.save_as(paths[3])
    (tmp_path / "s" / "random.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "s" / "zeros.dcm").write_bytes(bytes(4000))
    index = scan(str(tmp_path))
    probs = _problems(index)
    assert "SeriesInstanceUID" in probs["img001.dcm"]
    assert "SOPInstanceUID" in probs["img002.dcm"]
    assert "Pixel Data" in probs["img003.dcm"]
    assert "random.bin" in probs and "zeros.dcm" in probs
    assert _series_sizes(index) == [2]
    assert all(s.is_image for s in index.all_series())


def test_non_image_objects_stay_series():
    f = pydicom.data.get_testdata_file("rtplan.dcm")
    index = scan(f)
    assert not index.problems and _series_sizes(index) == [1]


# --------------------------------------------------------------------------- item 7
TEXT_KWS = [kw for kw, vr in H.WANTED.values() if vr in ("PN", "LO", "SH", "ST", "LT", "CS")
            and kw != "SpecificCharacterSet"]


@pytest.mark.parametrize("f", [f for f in get_charset_files() if f.endswith(".dcm")],
                         ids=lambda f: Path(f).name)
def test_fast_walk_decodes_every_charset_like_pydicom(f):
    rec = H.read_record(f)
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    for kw in TEXT_KWS:
        if kw not in ds or ds[kw].VM == 0:
            continue
        v = ds[kw].value
        want = [str(x) for x in v] if ds[kw].VM > 1 else str(v)
        assert rec.tags.get(kw) == want, (kw, rec.fast, rec.tags.get(kw), want)


def test_one_patient_in_two_encodings_is_one_patient(tmp_path):
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    paths = write_ct_series(tmp_path / "a", [(0, 0, 0)]) + write_ct_series(tmp_path / "b", [(0, 0, 0)])
    for p, cs in zip(paths, (["", "ISO 2022 IR 87"], "ISO_IR 192")):
        ds = pydicom.dcmread(p)
        ds.SpecificCharacterSet = cs
        ds.PatientName = name
        ds.save_as(p)
    raw = paths[0].read_bytes()
    assert b"\x1b$B" in raw  # really written with ISO 2022 escapes
    index = scan(str(tmp_path))
    assert len(index.patients) == 1, [(p.id, p.name) for p in index.patients]
    assert index.patients[0].name == name
    assert len(index.patients[0].studies) == 2


def test_uid_with_control_bytes_is_a_problem(tmp_path):
    paths = _three(tmp_path)
    ds = pydicom.dcmread(paths[1])
    ds.add_new(0x0020000E, "UI", "\x07")
    ds.save_as(paths[1])
    index = scan(str(tmp_path))
    assert "SeriesInstanceUID" in _problems(index)["img001.dcm"]
    assert _series_sizes(index) == [2]


def _deflated_bomb(path: Path, pixel_bytes: int) -> None:
    """A Deflated Explicit VR Little Endian file whose pixels inflate to pixel_bytes of zeros."""
    import struct
    import zlib
    from pydicom.filewriter import write_file_meta_info
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, CTImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    buf.write(bytes(128) + b"DICM")
    write_file_meta_info(pydicom.filebase.DicomFileLike(buf), meta, enforce_standard=True)

    def el(tag, vr, value: bytes) -> bytes:
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    body = (el(0x00080016, b"UI", CTImageStorage.encode()) + el(0x00080018, b"UI", b"1.2.3.4\0")
            + el(0x0020000E, b"UI", b"1.2.3.5\0") + el(0x00280010, b"US", struct.pack("<H", 8))
            + el(0x00280011, b"US", struct.pack("<H", 8)) + el(0x00280100, b"US", struct.pack("<H", 16))
            + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
        fh.write(c.compress(body))
        zeros = bytes(1 << 20)
        for _ in range(pixel_bytes >> 20):
            fh.write(c.compress(zeros))
        fh.write(c.flush())


def test_deflated_file_bomb_is_refused_in_bounded_memory(tmp_path):
    _deflated_bomb(tmp_path / "bomb.dcm", 300 << 20)
    assert (tmp_path / "bomb.dcm").stat().st_size < 1 << 20
    tracemalloc.start()
    t0 = time.perf_counter()
    index = scan(str(tmp_path))
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "expand" in _problems(index)["bomb.dcm"], _problems(index)
    assert dt < 10 and peak < 64 << 20, (dt, peak)


def test_deflated_file_still_reads():
    f = pydicom.data.get_testdata_file("image_dfl.dcm")
    index = scan(f)
    assert not index.problems and _series_sizes(index) == [1]


@pytest.mark.parametrize("name,kw,value", [
    ("SC_rgb_jpeg_dcmtk.dcm", "Rows", 50),  # JPEG baseline (SOF)
    ("MR_small_jp2klossless.dcm", "Columns", 32),  # JPEG 2000 (SIZ)
    ("JPEGLSNearLossless_08.dcm", "Rows", 1),  # JPEG-LS (SOF55)
    ("MR_small_RLE.dcm", "BitsAllocated", 32),  # RLE: 2 segments per frame, not 4
    ("SC_rgb_rle.dcm", "SamplesPerPixel", 1),
])
def test_compressed_frame_header_must_match_attributes(tmp_path, name, kw, value):
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or "1.2.3.4"
    p = tmp_path / name
    ds.save_as(p)
    assert not scan(str(p)).problems  # as it is: fine
    setattr(ds, kw, value)
    ds.save_as(p)
    probs = _problems(scan(str(p)))
    assert "compressed frame" in probs[name] or "RLE data" in probs[name], probs


def test_cli_scan_with_a_fifo_never_blocks(tmp_path):
    """The command also looks for slides in the folder: that walk must not open the pipe."""
    _three(tmp_path)
    os.mkfifo(tmp_path / "s" / "pipe.svs")
    os.mkfifo(tmp_path / "s" / "pipe.dcm")
    try:
        out = subprocess.run([PY, "-m", "imaging_assist", "scan", str(tmp_path)], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("imaging-assist scan blocked on a named pipe")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert "pipe.dcm: not a regular file (named pipe)" in out.stdout


@pytest.mark.parametrize("edit", [{"Rows": 4096, "Columns": 4096}, {"NumberOfFrames": 2000},
                                  {"Rows": 65535, "Columns": 65535}])
def test_real_cine_cannot_ask_for_gigabytes(tmp_path, edit):
    from conftest import DICOM
    src = need(DICOM / "xa_multiframe_cine_jpeg_baseline" / "HasFragmentSequence.dcm")
    ds = pydicom.dcmread(src)
    p = tmp_path / "xa.dcm"
    ds.save_as(p)
    assert check_record(H.read_record(str(p))) is None
    for kw, v in edit.items():
        setattr(ds, kw, v)
    ds.save_as(p)
    reason = check_record(H.read_record(str(p)))
    assert reason and "\n" not in reason


def test_zip_member_frame_header_is_checked_without_inflating_the_pixels(tmp_path):
    from conftest import DICOM
    ds = pydicom.dcmread(need(DICOM / "xa_multiframe_cine_jpeg_baseline" / "HasFragmentSequence.dcm"))
    good = tmp_path / "good.dcm"
    ds.save_as(good)
    ds.Rows, ds.Columns = 4096, 4096
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    zpath = tmp_path / "xa.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(good, "good.dcm")
        zf.write(bad, "bad.dcm")
    index = scan(str(zpath))
    probs = _problems(index)
    assert list(probs) == ["bad.dcm"] and "compressed frame is 512x512" in probs["bad.dcm"], probs
    assert _series_sizes(index) == [1]


def test_copies_of_one_film_in_a_folder_and_its_zip_are_not_stacked(tmp_path):
    """A CR film (no ImagePositionPatient) in a folder and again in a zip of it: the same SOP
    Instance UID twice. Stacked, it was a two-image "series" (every lung area counted twice);
    each copy is now a part of its own, and the split says why."""
    import shutil
    import zipfile

    from conftest import DICOM, need
    from imaging_assist.dicom import load_series, scan

    f = need(DICOM / "cr_chest_monochrome1_fuji" / "CR-MONO1-10-chest.dcm")
    (tmp_path / "folder").mkdir()
    shutil.copy(f, tmp_path / "folder" / f.name)
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as z:
        z.write(f, f.name)
    series = scan(str(tmp_path)).image_series()
    assert len(series) == 2, [(s.key, len(s.instances)) for s in series]
    for s in series:
        assert len(s.instances) == 1
        assert any("copies of one image" in w for w in s.warnings), s.warnings
        assert load_series(s).array.shape[0] == 1
