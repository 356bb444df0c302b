"""Label and heat-map NIfTI files of a gantry-tilted or unevenly spaced series.

A NIfTI qform holds only a rotation and voxel sizes.  For the tilted GE series nibabel wrote a
best-fit rotation there (about half the tilt) beside the exact sheared sform, and ITK-based tools
(ITK-SNAP, 3D Slicer, SimpleITK) placed the map by that qform: up to 40 mm off.  Now the qform is
left out (code 0) and the sform is exact: nibabel places the file exactly, SimpleITK refuses it
instead of misplacing it, and the results say so.  Uneven slice gaps (one NIfTI slice step) are
said with the worst slice's offset.  Units are mm."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DICOM, need
from imaging_assist.dicom import load_series, scan
from imaging_assist.inference.results import LPS_TO_RAS, is_sheared, nifti_geometry_warnings, save_nifti

GE = DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset"


@pytest.fixture(scope="module")
def ge():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_series(scan(str(need(GE))).image_series()[0])


def test_a_tilted_series_map_has_its_exact_sform_and_no_fitted_qform(ge, tmp_path):
    import nibabel as nib
    import SimpleITK as sitk

    aff = np.asarray(ge.affine, float)
    assert is_sheared(aff)
    f = tmp_path / "labels.nii.gz"
    save_nifti(np.ones(ge.array.shape, np.uint8), aff, f, like=ge)
    img = nib.load(str(f))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 1
    assert np.allclose(img.get_sform(), LPS_TO_RAS @ aff, atol=1e-4)
    assert img.header.get_xyzt_units()[0] == "mm"
    with pytest.raises(RuntimeError):  # ITK refuses a sheared sform without a qform: never misplaced
        sitk.ReadImage(str(f))
    said = nifti_geometry_warnings(ge, aff)
    assert any("gantry-tilted" in w and "sform only" in w for w in said)
    assert any("unevenly spaced" in w and "mm from where it was acquired" in w for w in said)


def test_an_even_untilted_series_map_keeps_both_transforms(tmp_path):
    import nibabel as nib
    import SimpleITK as sitk

    from _synth import write_ct_series

    write_ct_series(tmp_path / "s", [[0.0, 0.0, 2.0 * k] for k in range(5)])
    vol = load_series(scan(str(tmp_path / "s")).image_series()[0])
    aff = np.asarray(vol.affine, float)
    assert not is_sheared(aff) and nifti_geometry_warnings(vol, aff) == []
    f = tmp_path / "labels.nii.gz"
    save_nifti(np.ones(vol.array.shape, np.uint8), aff, f, like=vol)
    img = nib.load(str(f))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert np.allclose(img.get_qform(), img.get_sform(), atol=1e-5)
    assert img.header.get_xyzt_units()[0] == "mm"
    s = sitk.ReadImage(str(f))
    # ITK is LPS: its origin is the volume's first voxel
    assert np.allclose(s.GetOrigin(), aff[:3, 3], atol=1e-4)
