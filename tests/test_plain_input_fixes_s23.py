"""Plain-image and NIfTI input an audit found misread (session 23): a signed 8-bit TIFF read as
unsigned, 16-bit colour / grey + alpha PNG and TIFF cut to their high byte, Pillow's
decompression-bomb warning on the terminal and not in the results, an identity-affine NIfTI
overlay refused on a plain image, and a nodule NIfTI with trailing singleton axes refused."""

from __future__ import annotations

import gzip
import struct
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from test_nifti_robustness import CROP, DIM, _patch, raw  # noqa: F401


def _png(path, a: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written by hand (filter 0, one IDAT), independent of any PNG decoder."""
    h, w = a.shape[:2]
    rows = a.astype(">u2").reshape(h, -1).tobytes()
    step = len(rows) // h
    data = b"".join(b"\0" + rows[r * step:(r + 1) * step] for r in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))


def _grey12():
    """12-bit data (4096 levels) as a 16-bit container holds them."""
    return (np.arange(40 * 64, dtype=np.uint32).reshape(40, 64) * 4096 // (40 * 64)).astype(np.uint16)


def test_signed_8bit_tiff_keeps_its_negative_values(tmp_path):
    import tifffile

    from imaging_assist.inference.images import read_image

    a = (np.arange(30 * 40).reshape(30, 40) % 256 - 128).astype(np.int8)
    tifffile.imwrite(tmp_path / "s8.tif", a)
    vol = read_image(tmp_path / "s8.tif")
    assert vol.array.dtype == np.int8  # Pillow's mode "L" gave -1 as 255
    np.testing.assert_array_equal(vol.array[0], a)
    assert vol.photometric == "MONOCHROME2"


def test_16bit_colour_and_grey_alpha_keep_their_values(tmp_path):
    import tifffile

    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.preprocess import model_input
    from imaging_assist.models.registry import Registry

    g = _grey12()
    _png(tmp_path / "grey16.png", g, 0)
    _png(tmp_path / "rgb16_grey.png", np.dstack([g] * 3), 2)
    _png(tmp_path / "la16.png", np.dstack([g, np.full_like(g, 65535)]), 4)
    _png(tmp_path / "rgba16_grey.png", np.dstack([g, g, g, np.full_like(g, 65535)]), 6)
    tifffile.imwrite(tmp_path / "rgb16_grey.tif", np.dstack([g] * 3), photometric="rgb")
    tifffile.imwrite(tmp_path / "rgba16_grey.tif", np.dstack([g, g, g, g]), photometric="rgb", extrasamples=[2])
    card = Registry().get("us-breast").card
    ref = model_input(card, read_image(tmp_path / "grey16.png"))
    for name, alpha in (("rgb16_grey.png", False), ("la16.png", True), ("rgba16_grey.png", True),
                        ("rgb16_grey.tif", False), ("rgba16_grey.tif", True)):
        vol = read_image(tmp_path / name)
        assert vol.array.dtype == np.uint16 and vol.photometric == "MONOCHROME2", name  # was 16 levels
        np.testing.assert_array_equal(vol.array[0], g, err_msg=name)
        assert vol.warnings == (["alpha channel ignored"] if alpha else []), (name, vol.warnings)
        assert float((model_input(card, vol) - ref).abs().max()) == 0.0, name


def test_16bit_true_colour_is_reduced_with_a_warning(tmp_path):
    import tifffile

    from imaging_assist.inference.images import read_image

    g = _grey12()
    rgb = np.dstack([g, g // 2, 65535 - g])
    _png(tmp_path / "rgb16.png", rgb, 2)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    for name in ("rgb16.png", "rgb16.tif"):
        vol = read_image(tmp_path / name)
        assert vol.array.dtype == np.uint8 and vol.photometric == "RGB", name
        np.testing.assert_array_equal(vol.array[0], (rgb >> 8).astype(np.uint8), err_msg=name)
        assert any("reduced from 16 to 8 bits per channel" in w for w in vol.warnings), (name, vol.warnings)


def test_decompression_bomb_warning_is_a_volume_warning(tmp_path, monkeypatch):
    """Between Pillow's warning and error sizes: read, said on the volume, nothing on the
    terminal.  The limit is lowered so that a 50 x 50 image stands for a 10000 x 10000 one."""
    from PIL import Image

    from imaging_assist.inference.images import read_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # warns above 2000, refuses above 4000
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "big.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_image(tmp_path / "big.png")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert vol.array.shape == (1, 50, 50)
    (note,) = [w for w in vol.warnings if "decompression-bomb" in w]
    assert "2,500 pixels" in note and "2,000" in note


def test_identity_affine_nifti_overlay_on_a_plain_image(tmp_path):
    import nibabel as nib
    from PIL import Image

    from imaging_assist.inference.images import read_image
    from imaging_assist.layers import LabelLayer, load_overlay

    img = np.zeros((60, 100), np.uint8)
    img[5:15, 5:25] = 200
    Image.fromarray(img).save(tmp_path / "plain.png")
    vol = read_image(tmp_path / "plain.png")
    lab = (img > 0).astype(np.uint8)  # [row, col]
    data = lab.T[:, :, None]  # (column, row, 1), as MONAI writes a PNG's label map
    for name, aff in (("identity", np.eye(4)), ("flipped", np.diag([-1.0, -1.0, 1.0, 1.0]))):
        p = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), p)
        layer = load_overlay(str(p), vol)  # the identity was refused: "shape ... / origin do not match"
        assert isinstance(layer, LabelLayer)
        np.testing.assert_array_equal(layer.array[0], lab, err_msg=name)
        assert any("affine was not used" in w and "no patient geometry" in w for w in layer.warnings), name
    nib.save(nib.Nifti1Image(lab[:, :, None], np.eye(4)), tmp_path / "rows_cols.nii.gz")
    with pytest.raises(ValueError, match=r"rows_cols.nii.gz: shape \(60, 100, 1\) does not match .*\(100, 60, 1\)"):
        load_overlay(str(tmp_path / "rows_cols.nii.gz"), vol)


def test_nodule_nifti_with_trailing_singleton_axes(tmp_path, raw):  # noqa: F811
    import nibabel as nib

    from imaging_assist.nodules.window import volume_from_nifti

    ref = np.asanyarray(nib.load(CROP).dataobj)
    p = tmp_path / "dim5.nii.gz"
    p.write_bytes(gzip.compress(_patch(raw, DIM, "<hhhhhh", 5, *[int(n) for n in ref.shape], 1, 1)))
    assert nib.load(p).shape == ref.shape + (1, 1)
    vol = volume_from_nifti(p)  # was "a 3D NIfTI volume is needed (shape (53, 64, 11, 1, 1))"
    np.testing.assert_array_equal(vol.array, volume_from_nifti(CROP).array)


def test_overlay_dialog_shows_the_layer_warnings(tmp_path, monkeypatch):
    """Overlays ▸ Load overlay from file: the loader's warning (affine not used) reaches the
    banner, not only the API."""
    import nibabel as nib
    from PIL import Image

    import imaging_assist_ui.main_window.overlays as ov
    from imaging_assist.inference.images import read_image

    img = np.zeros((20, 30), np.uint8)
    img[2:5, 3:9] = 200
    Image.fromarray(img).save(tmp_path / "plain.png")
    p = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image((img > 0).astype(np.uint8).T[:, :, None], np.eye(4)), p)
    added, banners = [], []
    win = SimpleNamespace(doc=SimpleNamespace(volume=read_image(tmp_path / "plain.png")),
                          add_layer=added.append, show_banner=lambda t, error=False: banners.append(t))
    monkeypatch.setattr(ov.QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(p), "")))
    ov.load_overlay_dialog(win)
    assert len(added) == 1 and banners and "affine was not used" in banners[0]
