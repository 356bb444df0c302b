"""Every file is either loaded or listed with a reason; sources are never modified."""

import hashlib
import os
import zipfile
from pathlib import Path

import pydicom
import pytest

from _synth import write_ct_series
from conftest import SHARED, need
from imaging_assist.dicom import LoadError, load_series, scan

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _digest(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("root", [SHARED / "dicom", PYDICOM_FILES], ids=["shared", "pydicom"])
def test_everything_loads_or_is_reported(root):
    need(root)
    before = _digest(root)
    index = scan(str(root))
    loaded, failed = 0, []
    for s in index.image_series():
        for stack in range(1):
            try:
                vol = load_series(s, stack)
                assert vol.loaded.any()
                assert vol.array.shape[1:3] == (s.rows, s.cols)
                loaded += 1
            except LoadError as e:
                msg = str(e)
                assert msg and "\n" not in msg
                failed.append(msg)
    for p in index.problems:
        assert p.reason and "\n" not in p.reason
    seen = {os.path.realpath(r.path) for s in index.all_series() for r in s.instances}
    seen |= {os.path.realpath(p.path.split("!")[0]) for p in index.problems + index.other_files}
    seen |= {os.path.realpath(p) for p in index.dicomdirs}
    files = {os.path.realpath(p) for p in before}
    assert files <= seen, sorted(files - seen)[:5]  # nothing silently dropped
    assert loaded >= (8 if root.name == "dicom" else 40)
    assert _digest(root) == before  # read-only


def test_truncated_and_absurd_files_are_problems(tmp_path):
    paths = write_ct_series(tmp_path / "s", [(0, 0, z) for z in range(3)], rows=64, cols=64)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 3000])  # cut the pixel data
    ds = pydicom.dcmread(paths[2])
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 5000  # claims ~40 TB
    ds.save_as(paths[2])
    (tmp_path / "s" / "notes.txt").write_text("not an image")
    index = scan(str(tmp_path))
    reasons = {Path(p.path).name: p.reason for p in index.problems}
    assert "truncated" in reasons["img001.dcm"]
    assert "implausible size" in reasons["img002.dcm"]
    assert "notes.txt" not in reasons  # plainly text: an other file, not a problem
    assert {Path(p.path).name: p.reason for p in index.other_files} == {"notes.txt": "text"}
    assert [s.n_instances for s in index.image_series()] == [1]


def test_zip_and_dicomdir(tmp_path):
    paths = write_ct_series(tmp_path / "series", [(0, 0, z) for z in range(4)])
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in paths:
            zf.write(p, f"DATA/{p.name}")
    vol = load_series(scan(str(zpath)).image_series()[0])
    assert vol.shape == (4, 16, 12) and vol.spacing[2] == pytest.approx(1.0)

    from pydicom.fileset import FileSet
    fs = FileSet()
    for p in paths:
        fs.add(pydicom.dcmread(p))
    out = tmp_path / "media"
    fs.write(out)
    index = scan(str(out / "DICOMDIR"))
    assert [s.n_instances for s in index.image_series()] == [4]
    assert not [p for p in index.problems if "DICOMDIR" in p.path]
    # a file the DICOMDIR names is gone: a problem of the DICOMDIR naming it (pydicom left it out
    # with a warning only, and the series silently lacked an image)
    gone = sorted(f for f in out.rglob("*") if f.is_file() and f.name != "DICOMDIR")[1]
    gone.unlink()
    index = scan(str(out / "DICOMDIR"))
    assert [s.n_instances for s in index.image_series()] == [3]
    probs = [p for p in index.problems if "DICOMDIR" in p.path]
    assert len(probs) == 1 and "names a file that is not there" in probs[0].reason and gone.name in probs[0].reason


def test_scan_of_ct_phantom(ct_index):
    s = ct_index.image_series()[0]
    assert (s.modality, s.n_instances, s.rows, s.cols, s.body_part) == ("CT", 140, 512, 512, "BRAIN")
    assert s.description == "STD BRAIN 1MM, iDose"
    assert ct_index.patients[0].studies[0].series[0] is s


# --------------------------------------------------------------------------- decoder failures (issue 12)
RLE_FILE = SHARED / "variety" / "dcm_qa_ts_same_image_9_syntaxes" / "4_rle_lossless.dcm"


def _overlong_rle_copy(dst: Path) -> Path:
    """The real RLE file with its frame replaced by segments whose runs decode past the end
    of the frame: pylibjpeg-rle panics on it (PanicException, a BaseException)."""
    import struct

    from pydicom.encaps import encapsulate
    ds = pydicom.dcmread(need(RLE_FILE))
    n = int(ds.Rows) * int(ds.Columns)
    seg = bytes([0x81, 0]) * (n // 128 + 10)  # 130 repeats of 0 per pair: too long
    header = struct.pack("<16L", 2, 64, 64 + len(seg), *[0] * 13)
    ds.PixelData = encapsulate([header + seg + seg])
    ds.save_as(dst)
    return dst


@pytest.mark.timeout(60)
def test_corrupt_rle_frame_is_a_load_error(tmp_path):
    p = _overlong_rle_copy(tmp_path / "bad_rle.dcm")
    series = scan(str(p)).image_series()[0]
    with pytest.raises(LoadError, match=r"bad_rle\.dcm.*frame 1"):
        load_series(series)
    # background loading reports the error instead of hanging a waiter
    from imaging_assist.dicom import SeriesLoader
    errors = []
    loader = SeriesLoader(series, on_error=errors.append)
    loader.start()
    assert loader.wait_first(30)
    with pytest.raises(LoadError):
        loader.wait(30)
    assert loader.done and errors and "\n" not in errors[0]


@pytest.mark.timeout(120)
def test_corrupt_rle_info_prints_one_error_line(tmp_path):
    import subprocess
    import sys
    p = _overlong_rle_copy(tmp_path / "bad_rle.dcm")
    env = dict(os.environ, RUST_BACKTRACE="1")
    r = subprocess.run([sys.executable, "-m", "imaging_assist", "info", str(p)], capture_output=True,
                       text=True, timeout=100, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad_rle.dcm" in lines[0], lines[:20]


def _die_in_worker(rec, photometric):  # stands in for a decoder that crashes its process
    os._exit(3)


@pytest.mark.timeout(120)
def test_decoder_process_death_is_a_load_error_and_pool_recovers(tmp_path, monkeypatch):
    from imaging_assist.dicom import loader as L
    src = need(RLE_FILE)
    for k in range(6):  # a compressed series of 6 slices: decoded in the worker processes
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k + 1}"
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.InstanceNumber = k + 1
        ds.save_as(tmp_path / f"s{k}.dcm")
    series = scan(str(tmp_path)).image_series()[0]
    monkeypatch.setattr(L, "_decode_in_worker", _die_in_worker)
    vol = L.SeriesLoader(series, workers=2).run()  # the middle slice is decoded here, the rest die
    assert vol.loaded.sum() == 1
    assert any("decoder process" in w and "\n" not in w for w in vol.warnings), vol.warnings
    monkeypatch.undo()
    vol = L.SeriesLoader(series, workers=2).run()  # a fresh pool
    assert vol.loaded.all() and not any("could not be read" in w for w in vol.warnings)


def test_loader_never_allocates_past_the_series_limit(tmp_path, monkeypatch):
    from imaging_assist.dicom import loader as L
    write_ct_series(tmp_path, [(0, 0, z) for z in range(4)], rows=64, cols=64)
    series = scan(str(tmp_path)).image_series()[0]  # each file passes the index's own limit
    monkeypatch.setattr(L, "MAX_SERIES_BYTES", 3 * 64 * 64 * 2)  # the stack needs 4 slices' worth
    with pytest.raises(LoadError, match="would need"):
        L.load_series(series)


def test_a_slice_with_another_pixel_spacing_is_its_own_part(tmp_path):
    """The loader takes one pixel size per stack: a slice whose PixelSpacing differs (here 0.9
    among 0.5 x 0.7) would be drawn and measured at the wrong scale, silently.  The index splits
    it off and says why; each part loads with its own spacing.  Float noise in how the value is
    written (0.5 vs 0.50000001) does not split."""
    paths = write_ct_series(tmp_path / "s", [(0.0, 0.0, 2.5 * k) for k in range(6)])
    ds = pydicom.dcmread(paths[3])
    ds.PixelSpacing = ["0.9", "0.9"]
    ds.save_as(paths[3])
    ds = pydicom.dcmread(paths[4])
    ds.PixelSpacing = ["0.50000001", "0.70000002"]
    ds.save_as(paths[4])
    parts = scan(tmp_path / "s").image_series()
    assert sorted(len(p.instances) for p in parts) == [1, 5]
    for p in parts:
        assert any("mixed pixel spacings" in w for w in p.warnings), p.warnings
        v = load_series(p)
        want = (0.9, 0.9) if len(p.instances) == 1 else (0.7, 0.5)  # (column, row) spacing
        assert v.spacing[:2] == pytest.approx(want)
