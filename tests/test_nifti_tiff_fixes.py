"""NIfTI and TIFF inputs an audit found fatal to a whole run or read silently wrong: a flipped bit
in xyzt_units (KeyError out of nibabel), garbage in the unused qform of an sform-only file, a
vox_offset inside the header, huge declared dimensions in a small uncompressed .nii, TIFFs with
an Orientation tag that are 1-bit / palette / CMYK / planar, and 32-bit unsigned grey TIFFs.
Each file either loads as the libraries (nibabel, Pillow, tifffile) read it or is refused in one
line; either way the other files of the run get their results.json item."""

from __future__ import annotations

import gzip
import io
import json
import struct

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import SHARED, need
from imaging_assist.cli.main import main

CROP = SHARED / "ct" / "lidc_nodule_vois" / "images" / "LIDC-IDRI-0001_R_1.nii.gz"
XYZT_UNITS, VOX_OFFSET, PIXDIM, QUATERN_B = 123, 108, 76, 256  # NIfTI-1 header offsets (bytes)


@pytest.fixture(scope="module")
def raw():
    return gzip.decompress(need(CROP).read_bytes())


def _patch(raw: bytes, off: int, fmt: str, *vals) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, off, *vals)
    return bytes(b)


def _grey(h=40, w=56) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 3 + y * 5) % 251).astype(np.uint8)


def _items(out) -> dict:
    """{file name: results.json item} of a run."""
    r = json.loads((out / "results.json").read_text())
    return {str(it["source"]).split("/")[-1]: it for it in r["items"]}


def _one_line_refusal(exc_type, fn, *words) -> str:
    with pytest.raises(exc_type) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


# --------------------------------------------------------------------------- 1. xyzt_units
def test_a_flipped_bit_in_xyzt_units_loads_with_a_warning_and_the_run_goes_on(raw, tmp_path):
    """0x02 (mm) -> 0x06: nibabel's get_xyzt_units raised KeyError, which stopped the whole run
    ("internal error", no results.json).  The spatial unit is bits 0-2: code 6 is none of the
    defined ones, read as mm (as ITK does) and said."""
    from imaging_assist.nodules.window import volume_from_nifti

    d = tmp_path / "in"
    d.mkdir()
    (d / "a_good.nii.gz").write_bytes(need(CROP).read_bytes())
    b = bytearray(raw)
    assert b[XYZT_UNITS] == 0x02
    b[XYZT_UNITS] ^= 0x04
    (d / "b_flipped.nii.gz").write_bytes(gzip.compress(bytes(b)))
    good, flipped = volume_from_nifti(d / "a_good.nii.gz"), volume_from_nifti(d / "b_flipped.nii.gz")
    assert np.array_equal(flipped.array, good.array) and np.allclose(flipped.affine, good.affine)
    assert any("spatial unit code 6" in w for w in flipped.warnings), flipped.warnings
    rc = main(["analyze", str(d), "--model", "ct-nodule-seg", "--out", str(tmp_path / "out")])
    items = _items(tmp_path / "out")
    assert rc == 0 and set(items) == {"a_good.nii.gz", "b_flipped.nii.gz"}
    assert not any("error" in it for it in items.values()), items


def test_an_unexpected_error_fails_only_its_file_in_the_nodule_run(tmp_path, monkeypatch, capsys):
    """Whatever a loader raises for one file (here a KeyError, as the xyzt_units bit did), that
    file is one failed item and the others still get results.json."""
    from imaging_assist.nodules import window

    d = tmp_path / "in"
    d.mkdir()
    for n in ("a_good.nii.gz", "b_bad.nii.gz"):
        (d / n).write_bytes(need(CROP).read_bytes())
    real = window.volume_from_nifti

    def flaky(p):
        if "b_bad" in str(p):
            raise KeyError(6)
        return real(p)

    monkeypatch.setattr(window, "volume_from_nifti", flaky)
    rc = main(["analyze", str(d), "--model", "ct-nodule-seg", "--out", str(tmp_path / "out")])
    items = _items(tmp_path / "out")
    assert rc == 1 and "error" not in items["a_good.nii.gz"], items
    assert "KeyError" in items["b_bad.nii.gz"]["error"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "b_bad.nii.gz" in err[0] and "KeyError" in err[0], err


def test_an_unexpected_error_fails_only_its_file_in_the_image_run(tmp_path, monkeypatch, capsys):
    from imaging_assist.inference import images

    d = tmp_path / "in"
    d.mkdir()
    for n in ("a_good.png", "b_bad.png"):
        Image.fromarray(_grey()).save(d / n)
    real = images.read_image

    def flaky(p):
        if "b_bad" in str(p):
            raise TypeError("numpy boolean subtract")
        return real(p)

    monkeypatch.setattr(images, "read_image", flaky)
    rc = main(["analyze", str(d), "--model", "cxr-lung-seg", "--out", str(tmp_path / "out")])
    items = _items(tmp_path / "out")
    assert rc == 1 and "error" not in items["a_good.png"], items
    assert "TypeError" in items["b_bad.png"]["error"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "b_bad.png" in err[0] and "TypeError" in err[0], err


# --------------------------------------------------------------------------- 2. unused qform
def _sform_only() -> bytes:
    """The crop as an sform-only file (qform_code 0) in bytes, uncompressed."""
    img = nib.load(need(CROP))
    im = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    im.set_qform(img.affine, code=0)
    im.set_sform(img.affine, code=1)
    bio = io.BytesIO()
    im.to_file_map(im.make_file_map({"image": bio, "header": bio}))
    return bio.getvalue()


def test_garbage_in_an_unused_qform_is_not_read_nor_written(tmp_path):
    """qform_code 0: the quaternion and pixdim fields are unused (NIfTI-1); NaN pixdim made the
    label file unwritable (HeaderDataError, whole run lost) and a leftover quaternion made a
    valid file refused ("w2 should be positive")."""
    from imaging_assist.inference.results import save_nifti
    from imaging_assist.nodules.window import volume_from_nifti

    a = nib.load(need(CROP)).affine
    s = _sform_only()
    d = tmp_path / "in"
    d.mkdir()
    (d / "a_good.nii.gz").write_bytes(need(CROP).read_bytes())
    (d / "b_pixdim_nan.nii.gz").write_bytes(gzip.compress(_patch(s, PIXDIM + 4, "<fff", *[float("nan")] * 3)))
    (d / "c_quatern_junk.nii.gz").write_bytes(gzip.compress(_patch(s, QUATERN_B, "<fff", 0.9, 0.9, 0.9)))
    ref = volume_from_nifti(d / "a_good.nii.gz")
    for name in ("b_pixdim_nan.nii.gz", "c_quatern_junk.nii.gz"):
        assert np.allclose(nib.load(d / name).affine, a)  # nibabel places them as the crop
        v = volume_from_nifti(d / name)
        assert np.allclose(v.affine, ref.affine) and np.array_equal(v.array, ref.array), name
        assert not any("qform" in w for w in v.warnings), v.warnings
        assert v.nifti_transforms["qform"] == (None, 0)
        out = tmp_path / f"{name}_labels.nii.gz"
        save_nifti(np.zeros(v.array.shape, np.uint8), v.affine, out, like=v)
        got = nib.load(out)
        assert (int(got.header["qform_code"]), int(got.header["sform_code"])) == (0, 1)
        np.testing.assert_allclose(got.affine, a, atol=1e-4)
    rc = main(["analyze", str(d), "--model", "ct-nodule-seg", "--out", str(tmp_path / "out")])
    items = _items(tmp_path / "out")
    assert rc == 0 and len(items) == 3 and not any("error" in it for it in items.values()), items


def test_a_used_qform_that_cannot_be_read_beside_an_sform_is_ignored_and_said(raw, tmp_path):
    from imaging_assist.inference.results import save_nifti
    from imaging_assist.nodules.window import volume_from_nifti

    img = nib.load(need(CROP))
    im = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    im.set_qform(img.affine, code=1)
    im.set_sform(img.affine, code=1)
    bio = io.BytesIO()
    im.to_file_map(im.make_file_map({"image": bio, "header": bio}))
    p = tmp_path / "q1_junk.nii.gz"
    p.write_bytes(gzip.compress(_patch(bio.getvalue(), QUATERN_B, "<fff", 0.9, 0.9, 0.9)))
    v = volume_from_nifti(p)
    assert any("qform (code 1) is unusable" in w for w in v.warnings), v.warnings
    out = tmp_path / "labels.nii.gz"
    save_nifti(np.zeros(v.array.shape, np.uint8), v.affine, out, like=v)
    got = nib.load(out)
    assert (int(got.header["qform_code"]), int(got.header["sform_code"])) == (0, 1)
    np.testing.assert_allclose(got.affine, img.affine, atol=1e-4)


# --------------------------------------------------------------------------- 3. 1-bit TIFF
def test_a_1_bit_tiff_with_an_orientation_tag_reads_as_pillow_reads_it(tmp_path):
    """It came back as a bool array (tifffile) and np.percentile on it raised TypeError later:
    the whole run lost."""
    from imaging_assist.inference.images import read_image

    bits = _grey() > 128
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(bits).save(tmp_path / "b1_o1.tif")
    Image.fromarray(bits).save(d / "b_bits.tif", tiffinfo={274: 6})
    Image.fromarray(_grey()).save(d / "a_good.png")
    v, ref = read_image(d / "b_bits.tif"), read_image(tmp_path / "b1_o1.tif")
    assert v.array.dtype == np.uint8 and v.photometric == "MONOCHROME2"
    np.testing.assert_array_equal(v.array, ref.array)
    np.testing.assert_array_equal(v.array[0], bits.astype(np.uint8) * 255)
    rc = main(["analyze", str(d), "--model", "cxr-lung-seg", "--out", str(tmp_path / "out")])
    items = _items(tmp_path / "out")
    assert rc == 0 and set(items) == {"a_good.png", "b_bits.tif"}, items
    assert not any("error" in it for it in items.values()), items


# --------------------------------------------------------------------------- 4. vox_offset
@pytest.mark.parametrize("gz", [False, True])
def test_a_vox_offset_inside_the_header_is_refused(raw, tmp_path, gz):
    """nibabel repairs the header field to 352 but reads the voxels from byte 0: 37,219 of
    37,312 voxels were header bytes, and the nodule was measured 23% too small."""
    from imaging_assist import nifti
    from imaging_assist.nodules.window import WindowError, volume_from_nifti

    data = _patch(raw, VOX_OFFSET, "<f", 0.0)
    p = tmp_path / ("vox0.nii.gz" if gz else "vox0.nii")
    p.write_bytes(gzip.compress(data) if gz else data)
    _one_line_refusal(nifti.NiftiError, lambda: nifti.read_data(p, nifti.load(p)), "vox0.nii", "vox_offset 0", "352")
    _one_line_refusal(WindowError, lambda: volume_from_nifti(p), "vox_offset 0")
    # NIfTI-2 (header to byte 544): nibabel refuses it itself, still in one line
    img = nib.load(need(CROP))
    two = nib.Nifti2Image(np.asanyarray(img.dataobj), img.affine)
    bio = io.BytesIO()
    two.to_file_map(two.make_file_map({"image": bio, "header": bio}))
    b2 = bytearray(bio.getvalue())
    struct.pack_into("<q", b2, 168, 352)  # NIfTI-2 vox_offset (int64 at byte 168)
    p2 = tmp_path / "two.nii"
    p2.write_bytes(bytes(b2))
    _one_line_refusal(nifti.NiftiError, lambda: nifti.read_data(p2, nifti.load(p2)), "two.nii", "not a readable NIfTI")


def test_an_overlay_with_its_vox_offset_inside_the_header_is_refused(raw, tmp_path):
    from imaging_assist.inference.results import save_nifti
    from imaging_assist.layers import load_overlay
    from imaging_assist.nodules.window import volume_from_nifti

    vol = volume_from_nifti(need(CROP))
    lm = np.zeros(vol.array.shape, np.uint8)
    lm[4:7, 20:40, 20:30] = 1
    good = tmp_path / "labels.nii"
    save_nifti(lm, vol.affine, good, like=vol)
    assert np.array_equal(load_overlay(str(good), vol).array, lm)
    bad = tmp_path / "labels_vox0.nii"
    bad.write_bytes(_patch(good.read_bytes(), VOX_OFFSET, "<f", 0.0))
    _one_line_refusal(ValueError, lambda: load_overlay(str(bad), vol), "labels_vox0.nii", "vox_offset 0")


def test_a_nifti_pair_keeps_its_vox_offset_0(tmp_path):
    """A .hdr/.img pair stores its voxels from byte 0 of the .img: valid, not refused."""
    from imaging_assist import nifti

    img = nib.load(need(CROP))
    pair = nib.Nifti1Pair(np.asanyarray(img.dataobj), img.affine)
    nib.save(pair, tmp_path / "pair.img")
    got = nifti.load(tmp_path / "pair.img")
    assert got.dataobj.offset == 0
    assert np.array_equal(nifti.read_data(tmp_path / "pair.img", got), np.asanyarray(img.dataobj))


# --------------------------------------------------------------------------- 5. other TIFF kinds
def _pair(tmp_path, stem, save):
    """(read with an Orientation tag 6, read without it: the Pillow path, the reference)."""
    from imaging_assist.inference.images import read_image

    for o in (1, 6):
        save(tmp_path / f"{stem}_o{o}.tif", o)
    return read_image(tmp_path / f"{stem}_o6.tif"), read_image(tmp_path / f"{stem}_o1.tif")


@pytest.mark.parametrize("stem", ["palette", "cmyk", "planar", "palette_4bit"])
def test_colour_tiffs_with_an_orientation_tag_read_as_without_it(tmp_path, stem):
    """Palette indices were analysed as grey, CMYK ink as RGB, planar RGB as 3 x H x W."""
    g = _grey()
    rgb = np.stack([g, 255 - g, g // 2], -1)
    save = {
        "palette": lambda p, o: Image.fromarray(rgb).quantize(64).save(p, tiffinfo={274: o}),
        "palette_4bit": lambda p, o: Image.fromarray(rgb).quantize(16).save(p, tiffinfo={274: o}, bits=4),
        "cmyk": lambda p, o: Image.fromarray(rgb).convert("CMYK").save(p, tiffinfo={274: o}),
        "planar": lambda p, o: tifffile.imwrite(p, rgb.transpose(2, 0, 1), photometric="rgb",
                                                planarconfig="separate", extratags=[(274, "H", 1, o, True)]),
    }[stem]
    v, ref = _pair(tmp_path, stem, save)
    assert v.array.shape == ref.array.shape == (1, *g.shape, 3) and v.photometric == ref.photometric == "RGB"
    np.testing.assert_array_equal(v.array, ref.array)
    if stem == "planar":
        np.testing.assert_array_equal(v.array[0], rgb)


def test_a_tiff_kind_the_stored_grid_reader_does_not_convert_is_refused_in_one_line(tmp_path):
    from imaging_assist.inference.images import ImageReadError, read_image

    g = _grey()
    p = tmp_path / "ycbcr.tif"
    Image.fromarray(np.stack([g, 255 - g, g // 2], -1)).convert("YCbCr").save(p, tiffinfo={274: 6})
    _one_line_refusal(ImageReadError, lambda: read_image(p), "ycbcr.tif", "YCBCR", "not read")


# --------------------------------------------------------------------------- 6. declared size
def test_huge_dims_in_a_small_uncompressed_nii_are_refused_before_reading(raw, tmp_path, monkeypatch):
    """A 73 KiB .nii declaring 2000 x 2000 x 250 int16 allocated 1.9 GiB before the refusal."""
    from imaging_assist import nifti
    from imaging_assist.nodules.window import WindowError, volume_from_nifti

    def no_read(*a, **k):
        raise AssertionError("the voxels were read")

    monkeypatch.setattr(nifti, "read_data", no_read)
    p = tmp_path / "big.nii"
    p.write_bytes(_patch(raw, 42, "<hhh", 2000, 2000, 250))
    _one_line_refusal(WindowError, lambda: volume_from_nifti(p), "big.nii", "implausible size", "2000x2000x250")
    # one voxel short is refused too; the exact size still loads
    p.write_bytes(raw[:-2])
    _one_line_refusal(WindowError, lambda: volume_from_nifti(p), "implausible size")
    monkeypatch.undo()
    p.write_bytes(raw)
    assert volume_from_nifti(p).array.shape == (11, 64, 53)


# --------------------------------------------------------------------------- 7. uint32 TIFF
def test_a_32_bit_unsigned_grey_tiff_is_not_wrapped_to_negative(tmp_path):
    """Pillow reads it as signed mode "I": values above 2**31 came back negative."""
    from imaging_assist.inference.images import read_image

    a = _grey().astype(np.uint32) * 16_000_000  # up to 4.0e9
    p = tmp_path / "u32.tif"
    tifffile.imwrite(p, a, photometric="minisblack")
    v = read_image(p)
    ref = tifffile.imread(p)
    assert v.array.dtype == np.uint32 and (a > 2**31).any()
    np.testing.assert_array_equal(v.array[0], ref)
    # signed 32-bit stays Pillow's (it reads it right)
    s = (a.astype(np.int64) - 2**31).astype(np.int32)
    tifffile.imwrite(tmp_path / "i32.tif", s, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "i32.tif").array[0], s)


def test_an_unexpected_error_fails_only_its_slide(tmp_path, monkeypatch, capsys):
    """The slide loop of analyze, as the image and nodule loops: a defect only one slide hits (a
    tifffile ValueError writing a one-plane heat map was one) fails that slide in one line, the
    next slide is still analysed and results.json names both."""
    import shutil

    from imaging_assist.slides import analysis

    svs = need(SHARED / "pathology" / "wsi_aperio_cmu1_small_region" / "CMU-1-Small-Region.svs")
    d = tmp_path / "in"
    d.mkdir()
    for n in ("a_bad.svs", "b_bad.svs"):
        shutil.copy(svs, d / n)

    def broken(sp, *a, **k):
        raise (KeyError if "a_bad" in str(sp) else ValueError)("planarconfig")

    monkeypatch.setattr(analysis, "analyze_slide", broken)
    rc = main(["analyze", str(d), "--model", "path-lung-tissue", "--out", str(tmp_path / "out")])
    items = _items(tmp_path / "out")
    assert rc == 1 and set(items) == {"a_bad.svs", "b_bad.svs"}, items
    assert "internal error: KeyError" in items["a_bad.svs"]["error"]
    assert "ValueError" in items["b_bad.svs"]["error"] and "internal" not in items["b_bad.svs"]["error"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 2, err
