"""Viewer ▸ Overlays ▸ Load overlay from file (``layers.load_overlay``) attacked with mutated real
overlay files (a label map and a heat map as NIfTI and .npy on a CT grid): every file either loads
exactly as written or is refused in one ValueError line; nibabel's repair lines never reach the
terminal.  The one silent difference left is NIfTI's own: a damaged scl_slope / scl_inter is a
valid scaling to any reader (no checksum in the format)."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from imaging_assist.layers import HeatmapLayer, LabelLayer, load_overlay
from imaging_assist.volume import Volume

SCALING = set(range(112, 120))  # scl_slope, scl_inter (NIfTI-1 header offsets)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import nibabel as nib
    d = tmp_path_factory.mktemp("ov")
    vol = Volume(array=np.zeros((6, 8, 10), np.int16), spacing=(0.5, 0.6, 2.0), origin=(10.0, 20.0, 30.0),
                 direction=np.eye(3))
    rng = np.random.default_rng(0)
    arrays = {"lab": rng.integers(0, 3, (6, 8, 10)).astype(np.uint8),
              "heat": rng.random((6, 8, 10)).astype(np.float32)}
    aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine  # LPS -> RAS, as dcm2niix writes it
    out = {}
    for name, arr in arrays.items():
        nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), aff), d / f"{name}.nii")
        np.save(d / f"{name}.npy", arr)
        out[f"{name}.nii"] = arr
        out[f"{name}.npy"] = arr
    return d, vol, out


def _outcome(path, vol, ref):
    try:
        layer = load_overlay(str(path), vol)
    except ValueError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 300, msg
        return "refused"
    kind = LabelLayer if ref.dtype == np.uint8 else HeatmapLayer
    same = isinstance(layer, kind) and np.array_equal(np.asarray(layer.array, float), ref.astype(float))
    return "same" if same else "different"


@pytest.mark.parametrize("name", ["lab.nii", "heat.nii", "lab.npy", "heat.npy"])
def test_mutated_overlay_files_load_as_written_or_are_refused(files, name, tmp_path, capfd):
    d, vol, arrays = files
    raw = (d / name).read_bytes()
    header = 352 if name.endswith(".nii") else 128
    r = random.Random(name)
    seen = {"same": 0, "refused": 0, "different": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(300):
            b = bytearray(raw)
            touched = set()
            if t % 5 == 0:
                b = b[: r.randrange(len(b))]
            else:
                for _ in range(r.randint(1, 3)):
                    i = r.randrange(header)
                    b[i] = r.randrange(256)
                    touched.add(i)
            p = tmp_path / f"m{t}_{name}"
            p.write_bytes(bytes(b))
            got = _outcome(p, vol, arrays[name])
            seen[got] += 1
            if got == "different":  # only a scaling that the format cannot tell from a real one
                assert name.endswith(".nii") and touched & SCALING, (t, sorted(touched))
    assert seen["refused"] > 50 and seen["same"] > 0, seen
    out, err = capfd.readouterr()
    assert "setting" not in err + out and "not valid" not in err + out, err[-500:]


def test_npy_header_that_numpy_cannot_parse_is_one_line(files, tmp_path):
    d, vol, _ = files
    raw = bytearray((d / "lab.npy").read_bytes())
    raw[20] = ord("(")  # an unbalanced bracket: numpy's header tokenizer raised TokenError
    p = tmp_path / "bad.npy"
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"^bad\.npy: not a readable \.npy file"):
        load_overlay(str(p), vol)


def test_npy_of_another_grid_or_too_short_is_refused_before_reading(files, tmp_path):
    d, vol, _ = files
    np.save(tmp_path / "big.npy", np.zeros((6, 8, 11), np.uint8))
    with pytest.raises(ValueError, match="does not match the image"):
        load_overlay(str(tmp_path / "big.npy"), vol)
    raw = (d / "heat.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="holds 2,044 bytes where its header describes 2,048"):
        load_overlay(str(tmp_path / "short.npy"), vol)
    np.save(tmp_path / "text.npy", np.full((6, 8, 10), "a"))
    with pytest.raises(ValueError, match="neither labels nor a heat map"):
        load_overlay(str(tmp_path / "text.npy"), vol)


def test_damaged_nifti_header_is_one_line_not_nibabels_exception(files, tmp_path):
    d, vol, _ = files
    raw = bytearray((d / "lab.nii").read_bytes())
    raw[70:72] = (4096).to_bytes(2, "little")  # a data type code nibabel does not know
    p = tmp_path / "code.nii"
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"^code\.nii: not a readable NIfTI file \(data code 4096"):
        load_overlay(str(p), vol)
    (tmp_path / "junk.nii").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match=r"^junk\.nii: not a readable NIfTI file"):
        load_overlay(str(tmp_path / "junk.nii"), vol)


def test_nifti_on_a_slightly_different_grid_is_refused_not_drawn_shifted(tmp_path):
    """A 512-wide mask with 0.693-mm pixels on a 0.68-mm series (same matrix and first voxel)
    passed the 2% spacing tolerance and was drawn up to 9.6 px off at the far edge: every
    corner of the grid must land within half a voxel; a faithful copy still loads."""
    import nibabel as nib

    vol = Volume(array=np.zeros((3, 512, 512), np.int16), spacing=(0.68, 0.68, 2.0), origin=(-174.0, -170.0, 10.0),
                 direction=np.eye(3))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    mask = np.zeros((512, 512, 3), np.uint8)
    mask[500, 256, 1] = 1
    same = lps_to_ras @ vol.affine
    nib.save(nib.Nifti1Image(mask, same), tmp_path / "same.nii")
    assert isinstance(load_overlay(str(tmp_path / "same.nii"), vol), LabelLayer)
    drift = same.copy()
    drift[:3, 0] *= 0.693 / 0.68  # 1.9% larger pixels along x
    nib.save(nib.Nifti1Image(mask, drift), tmp_path / "drift.nii")
    with pytest.raises(ValueError, match=r"drifts from the image grid by \d+\.\d voxels"):
        load_overlay(str(tmp_path / "drift.nii"), vol)
