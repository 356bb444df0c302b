"""NIfTI geometry an audit found read or written silently wrong: a qform and sform that
disagree (the sform used without a word, the outputs labelled scanner space with one matrix),
spatial units in metres, and in-plane axes that are not orthogonal (the slice thickness came out
sin(angle) short)."""

import nibabel as nib
import numpy as np
import pytest

from conftest import SHARED, need
from imaging_assist.inference.results import save_nifti
from imaging_assist.nodules.window import WindowError, volume_from_nifti

CROP = SHARED / "ct" / "lidc_nodule_vois" / "images" / "LIDC-IDRI-0001_R_1.nii.gz"


def _variant(tmp_path, name, fn):
    img = nib.load(str(need(CROP)))
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header.copy())
    fn(img)
    p = tmp_path / name
    nib.save(img, str(p))
    return p


def test_qform_and_sform_that_disagree_are_said_and_the_outputs_keep_both(tmp_path):
    def shift(img):
        q = img.get_qform()
        s = q.copy()
        s[0, 3] += 30.0  # an "aligned" sform 30 mm away from the scanner qform
        img.set_qform(q, code=1)
        img.set_sform(s, code=2)
    p = _variant(tmp_path, "qs.nii.gz", shift)
    vol = volume_from_nifti(p)
    assert any("qform (code 1) and sform (code 2) disagree by up to 30.0 mm" in w for w in vol.warnings), vol.warnings
    out = tmp_path / "labels.nii.gz"
    save_nifti(np.zeros(vol.array.shape, np.uint8), vol.affine, out, like=vol)
    src, got = nib.load(str(p)), nib.load(str(out))
    assert int(got.header["qform_code"]) == 1 and int(got.header["sform_code"]) == 2
    np.testing.assert_allclose(got.get_qform(), src.get_qform(), atol=1e-4)
    np.testing.assert_allclose(got.get_sform(), src.get_sform(), atol=1e-4)
    assert got.shape == src.shape


def test_an_unchanged_crop_has_no_transform_warning_and_its_outputs_its_transforms(tmp_path):
    vol = volume_from_nifti(need(CROP))
    assert not any("disagree" in w for w in vol.warnings)
    out = tmp_path / "heat.nii.gz"
    save_nifti(np.zeros(vol.array.shape, np.float32), vol.affine, out, like=vol)
    np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(need(CROP))).affine, atol=1e-4)


def test_spatial_units_in_metres_are_refused(tmp_path):
    def metres(img):
        a = img.affine.copy()
        a[:3, :] /= 1000.0
        img.set_sform(a, code=1)
        img.set_qform(a, code=1)
        img.header.set_xyzt_units(xyz="meter")
    p = _variant(tmp_path, "m.nii.gz", metres)
    with pytest.raises(WindowError, match="unit is meters") as e:
        volume_from_nifti(p)
    assert "\n" not in str(e.value)


def test_in_plane_axes_that_are_not_orthogonal_keep_the_slice_spacing(tmp_path):
    def shear(img):
        a = img.affine.copy()
        col = a[:3, 1].copy()
        r = a[:3, 0] / np.linalg.norm(a[:3, 0])
        ang = np.radians(100)  # 100 degrees between the i and j axes
        perp = col - (col @ r) * r
        a[:3, 1] = np.linalg.norm(col) * (np.cos(ang) * r + np.sin(ang) * perp / np.linalg.norm(perp))
        img.set_sform(a, code=1)
        img.set_qform(None, code=0)
    p = _variant(tmp_path, "shear.nii.gz", shear)
    vol = volume_from_nifti(p)
    k_axis = np.asarray(nib.load(str(p)).affine, float)[:3, 2]
    gaps = np.diff(vol.slice_positions)
    np.testing.assert_allclose(gaps, np.linalg.norm(k_axis), rtol=1e-6)
