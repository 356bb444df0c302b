"""The nodule models' NIfTI reader (``nodules.window.volume_from_nifti``) attacked with mutated
copies of a real LIDC crop: every file either loads with correct geometry or is refused in one
line; nothing nibabel repairs silently (zero pixdim -> 1, an invalid sform_code) is taken as
true; NaN voxels never reach a model as numbers; absurd sizes are refused before allocation.
Also the nodule CLI's --points CSV (one-line errors)."""

from __future__ import annotations

import gzip
import random
import struct
import warnings
import zlib

import numpy as np
import pytest

from conftest import SHARED, need

CROP = SHARED / "ct" / "lidc_nodule_vois" / "images" / "LIDC-IDRI-0001_R_1.nii.gz"

# NIfTI-1 header offsets (bytes)
DIM, DATATYPE, PIXDIM, SCL_SLOPE, QFORM_CODE, SFORM_CODE = 40, 70, 76, 112, 252, 254


@pytest.fixture(scope="module")
def raw():
    return gzip.decompress(need(CROP).read_bytes())


def _write(tmp_path, name, data: bytes, gz=True):
    p = tmp_path / (name + (".nii.gz" if gz else ".nii"))
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


def _patch(raw, off, fmt, *vals):
    b = bytearray(raw)
    struct.pack_into(fmt, b, off, *vals)
    return bytes(b)


def _float_crop(tmp_path, name, edit):
    """The crop as float32 HU, edited by ``edit(array [i, j, k])``."""
    import nibabel as nib

    img = nib.load(need(CROP))
    a = np.asanyarray(img.dataobj).astype(np.float32)
    edit(a)
    h = img.header.copy()
    h.set_data_dtype(np.float32)
    h["scl_slope"], h["scl_inter"] = 1.0, 0.0
    p = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(a, img.affine, h), p)
    return p


def _load(p):
    from imaging_assist.nodules.window import volume_from_nifti

    return volume_from_nifti(p)


def _refused(p, *words):
    from imaging_assist.nodules.window import WindowError

    with pytest.raises(WindowError) as e:
        _load(p)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def test_the_real_crop_loads_unchanged(raw, tmp_path):
    import nibabel as nib

    v = _load(_write(tmp_path, "same", raw))
    assert v.array.shape == (11, 64, 53) and np.allclose(v.spacing, (0.703125, 0.703125, 2.5))
    assert v.warnings == ["NIfTI stores no modality: the values are taken as CT Hounsfield units"]
    # uncompressed, and as NIfTI-2 (the stored header is read with the file's own header class)
    img = nib.load(_write(tmp_path, "same", raw))
    two = nib.Nifti2Image(np.asanyarray(img.dataobj), img.affine)
    two.header.set_qform(img.affine, 1)
    two.header.set_sform(None, 0)
    for name, im in (("one.nii", nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)),
                     ("two.nii.gz", two)):
        nib.save(im, tmp_path / name)
        w = _load(tmp_path / name)
        assert np.array_equal(w.array, v.array) and np.allclose(w.affine, v.affine), name
        assert w.warnings == v.warnings, name


@pytest.mark.parametrize("name, off, fmt, vals, words", [
    # nibabel would take a zero voxel size as 1 mm: the nodule would be measured 2-3x too small
    ("pixdim_zero", PIXDIM + 4, "<fff", (0.0, 0.0, 0.0), ("voxel size", "zero")),
    ("pixdim_one_zero", PIXDIM + 12, "<f", (0.0,), ("voxel size", "zero")),
    ("pixdim_nan", PIXDIM + 4, "<fff", (float("nan"),) * 3, ("not a number",)),
    ("pixdim_huge", PIXDIM + 4, "<fff", (1e6, 1e6, 1e6), ("implausible voxel size",)),
    ("no_orientation", QFORM_CODE, "<hh", (0, 0), ("no orientation",)),
    ("dims_huge", DIM + 2, "<hhh", (30000, 30000, 30000), ("implausible size",)),
    ("dims_ratio", DIM + 2, "<hhh", (2000, 2000, 200), ("implausible size", "from a")),
    ("datatype_unknown", DATATYPE, "<h", (1234,), ("not a readable NIfTI",)),
])
def test_header_mutations_are_refused_in_one_line(raw, tmp_path, name, off, fmt, vals, words):
    _refused(_write(tmp_path, name, _patch(raw, off, fmt, *vals)), *words)


@pytest.mark.parametrize("slope", [1000.0, 1e30])
def test_values_that_are_not_hu_are_refused_where_the_models_look(raw, tmp_path, slope):
    """The same rule as for DICOM (a RescaleSlope of 1000): ``cut_window`` refuses a window
    whose values a CT in HU cannot hold."""
    from imaging_assist.nodules.run import volume_centre
    from imaging_assist.nodules.window import WindowError, cut_window

    v = _load(_write(tmp_path, f"slope{slope:g}", _patch(raw, SCL_SLOPE, "<f", slope)))
    with pytest.raises(WindowError, match="not Hounsfield units"):
        cut_window(v, volume_centre(v))


def test_a_real_gzip_bomb_is_refused_before_it_is_inflated(raw, tmp_path):
    hdr = _patch(raw[:352], DIM + 2, "<hhh", 1000, 1000, 300)  # 572 MiB of int16, consistent
    co = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    zero = bytes(1 << 24)
    body = b"".join([co.compress(hdr)] + [co.compress(zero) for _ in range(36)] + [co.flush()])
    p = tmp_path / "bomb.nii.gz"
    p.write_bytes(body)
    assert p.stat().st_size < 1 << 20
    _refused(p, "implausible size", "MiB")


def test_what_nibabel_repairs_is_said(raw, tmp_path):
    v = _load(_write(tmp_path, "neg", _patch(raw, PIXDIM + 4, "<fff", -0.703125, -0.703125, -2.5)))
    assert np.allclose(v.spacing, (0.703125, 0.703125, 2.5))
    assert any("negative NIfTI voxel size" in w for w in v.warnings), v.warnings
    v = _load(_write(tmp_path, "sform", _patch(raw, SFORM_CODE, "<h", 8192)))
    assert any("sform_code 8192 is not a valid code" in w for w in v.warnings), v.warnings
    assert np.allclose(v.spacing, (0.703125, 0.703125, 2.5))  # the qform, as stored


def test_nibabel_log_lines_do_not_reach_the_terminal(raw, tmp_path, capfd):
    from imaging_assist.nodules.window import WindowError

    with pytest.raises(WindowError):
        _load(_write(tmp_path, "z", _patch(raw, PIXDIM + 4, "<fff", 0.0, 0.0, 0.0)))
    _load(_write(tmp_path, "s", _patch(raw, SFORM_CODE, "<h", 8192)))
    out = capfd.readouterr()
    assert "pixdim" not in out.err and "sform_code" not in out.err, out.err


def test_nan_voxels_are_outside_the_scan_never_numbers(tmp_path):
    from imaging_assist.nodules.window import cut_window

    _refused(_float_crop(tmp_path, "all_nan", lambda a: a.fill(np.nan)), "no voxel has a value")

    def slab(a):
        a[:, :, 5] = np.nan  # one axial slice through the nodule
        a[3, 3, 3] = np.inf

    ref = _load(_float_crop(tmp_path, "clean", lambda a: None))
    v = _load(_float_crop(tmp_path, "nan_slice", slab))
    assert any("NaN or infinite" in w and "outside the scan" in w for w in v.warnings), v.warnings
    centre = ref.index_to_lps(26, 32, 5)
    w0, w = cut_window(ref, centre), cut_window(v, centre)
    assert np.all(np.isfinite(w.image)) and w.valid.sum() < w0.valid.sum()
    assert np.all(w.image[~w.valid] == 0)
    # voxels whose samples touch no NaN are unchanged
    same = w.valid & w0.valid
    assert same.any() and np.array_equal(w.image[same], w0.image[same])
    # the window's z rows that sample only the NaN slice are invalid
    k_lps = np.asarray(v.index_to_lps(26, 32, 5))[2]
    zs = centre[2] + (np.arange(32) - 15.5)
    near = np.abs(zs - k_lps) < 0.5 * v.spacing[2]
    assert not w.valid[near].any()


def test_float32_inf_renders_without_overflow():
    from imaging_assist.display import window_to_uint8

    a = np.array([[0.0, np.inf, -np.inf, np.nan]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = window_to_uint8(a, 40.0, 400.0)
    assert g.tolist() == [[102, 255, 0, 128]]  # 0 HU at 40/400; NaN as the centre


def test_long_and_short_axes_stay_bounded_for_absurd_pixel_sizes():
    """Short-axis chords every 0.05 mm, at most 2,000 of them: a 1e6-mm pixel once meant 400
    million chords (minutes for one click)."""
    from imaging_assist.nodules.measure import MAX_CHORDS, axes_on_slice, chord_positions

    assert np.allclose(np.diff(chord_positions(0.0, 30.0)), 0.05)  # a real nodule: unchanged
    assert len(chord_positions(0.0, 30.0)) == 600
    assert len(chord_positions(0.0, 40e6)) <= MAX_CHORDS
    yy, xx = np.mgrid[:40, :40]
    sl = ((yy - 20) / 12.0) ** 2 + ((xx - 20) / 7.0) ** 2 <= 1
    long1, short1, *_ = axes_on_slice(sl, 1.0, 1.0)
    big, short_big, *_ = axes_on_slice(sl, 1e6, 1e6)
    assert big == pytest.approx(long1 * 1e6, rel=1e-9)
    assert short_big == pytest.approx(short1 * 1e6, rel=0.01)


def test_bit_flips_and_truncations_never_load_silently_wrong(raw, tmp_path):
    """Random flips anywhere, in the header, and truncations: a one-line refusal, or a volume
    whose geometry is finite and believable and whose values are finite HU."""
    from imaging_assist.nodules.run import volume_centre
    from imaging_assist.nodules.window import WindowError, cut_window

    cases = {"trunc_half": raw[: len(raw) // 2], "trunc_header": raw[:200], "trunc_data": raw[:352]}
    for k in range(12):
        r = random.Random(k)
        b = bytearray(raw)
        for _ in range(20):
            i = r.randrange(352 if k % 2 else len(b))
            b[i] ^= 1 << r.randrange(8)
        cases[f"flip{k}"] = bytes(b)
    loaded = refused = 0
    for name, data in cases.items():
        p = _write(tmp_path, name, data)
        try:
            v = _load(p)
        except WindowError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        loaded += 1
        assert np.all(np.isfinite(v.affine)) and all(1e-4 <= s <= 100 for s in v.spacing), name
        try:  # the models' window: finite HU where valid, or a one-line refusal
            w = cut_window(v, volume_centre(v))
        except WindowError as e:
            assert "\n" not in str(e)
            continue
        assert np.all(np.isfinite(w.image)) and w.image[w.valid].min() >= -32768, name
        assert w.image[w.valid].max() <= 32767, name
    assert refused >= 3 and loaded >= 3, (loaded, refused)


def test_cli_names_the_file_once(raw, tmp_path, capsys):
    from imaging_assist.cli import main

    p = _write(tmp_path, "zero", _patch(raw, PIXDIM + 4, "<fff", 0.0, 0.0, 0.0))
    rc = main(["analyze", str(p), "--model", "ct-nodule-seg", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert rc != 0 and line.count(str(p)) == 1 and "voxel size" in line, err


@pytest.mark.parametrize("text, words", [
    ("", "no rows"),
    ("a,b,c\n1,2,3\n", "must name columns x, y and z"),
    ("x,y,z\n1,2\n", "must be numbers"),
    ("x,y,z\n1,nan,3\n", "must be finite"),
    ("x,y,z\n1,2,3e999\n", "must be finite"),
    ('x,y,z\n"' + "1" * 200_000 + '",2,3\n', "not a readable CSV"),
    ("x,y,z\n\udcff", "cannot read it"),
    ("x,y,z,id\n1,2,3,a\\b\n", "without a backslash"),  # was an internal error in the SR export
    ("x,y,z,id\n1,2,3,a\x07b\n", "printable"),
    ("x,y,z,id\n1,2,3," + "N" * 65 + "\n", "at most 64"),
    ("x,y,z\n" + "1,2,3\n" * 1001, "more than 1,000 per run"),
    ("x,y,z\n" + "1.000000,2.000000,3.000000\n" * 40_000, "more than a points file holds"),
])
def test_points_csv_errors_are_one_line(tmp_path, text, words):
    from imaging_assist.errors import UserError
    from imaging_assist.nodules.run import read_points_csv

    p = tmp_path / "points.csv"
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(UserError) as e:
        read_points_csv(p)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_not_finite_voxels_are_counted_by_blocks():
    from imaging_assist.nodules.window import _count_not_finite

    a = np.zeros((37, 20, 30), np.float32)
    a[3, 4, 5], a[20, 1, 1], a[36, 0, 0] = np.nan, np.inf, -np.inf
    a[16:32] = np.nan  # a whole block without a finite voxel
    assert _count_not_finite(a) == int((~np.isfinite(a)).sum())
