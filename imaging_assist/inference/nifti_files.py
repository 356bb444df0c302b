"""Label and heat-map NIfTI files on a Volume's grid (:func:`save_nifti`), and what such a file
cannot say about its series (:func:`nifti_geometry_warnings`: a gantry tilt, uneven slice gaps).
Kept apart from :mod:`.results` (the results.json items), which re-exports these names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def save_nifti(array_kji: np.ndarray, affine_lps: np.ndarray, path: Path, like=None) -> None:
    """Write ``array_kji`` as NIfTI with ``affine_lps``.  ``like``: the Volume it lies on; when
    that Volume was read from a NIfTI file (``nifti_transforms``) on the same grid, the file's
    own qform and sform with their codes are written, so every tool places the result where it
    places the input (a file whose two transforms disagree included)."""
    import nibabel as nib

    data = np.ascontiguousarray(np.transpose(array_kji, (2, 1, 0)))
    aff = LPS_TO_RAS @ np.asarray(affine_lps, float)
    img = nib.Nifti1Image(data, aff)
    own = getattr(like, "nifti_transforms", None)
    if own is not None and tuple(array_kji.shape[:3]) == tuple(like.array.shape[:3]) \
            and np.allclose(np.asarray(affine_lps, float), np.asarray(like.affine, float), atol=1e-6):
        (q, qc), (sf, sc) = own["qform"], own["sform"]
        # a transform with code 0 is unused: only its code is written (its fields in the source
        # may be garbage nibabel cannot decompose: HeaderDataError at writing)
        img.set_qform(q if int(qc) > 0 else None, code=int(qc))
        img.set_sform(sf if int(sc) > 0 else None, code=int(sc))
    elif is_sheared(aff):
        # a gantry-tilted series: a qform holds only a rotation and voxel sizes, so nibabel would
        # write a best-fit rotation (about half the tilt) that ITK-based tools (ITK-SNAP, Slicer)
        # use, placing the map up to 40 mm off.  The exact sheared affine goes in the sform only;
        # with no qform those tools refuse the file instead of misplacing it
        # (nifti_geometry_warnings says so with the results)
        img.set_qform(None, code=0)
        img.set_sform(aff, code=1)
    else:
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm")
    from ..outputs import written_beside  # never through a link named like the file; never half-written

    with written_beside(path) as tmp:  # its name ends ".nii.gz" as ``path``'s: nibabel compresses by it
        nib.save(img, str(tmp))


def is_sheared(affine, tol: float = 1e-4) -> bool:
    """Whether the 3x3 part of ``affine`` has columns that are not orthogonal (a gantry tilt)."""
    m = np.asarray(affine, float)[:3, :3]
    n = np.linalg.norm(m, axis=0)
    if not np.all(n > 0):
        return False
    u = m / n
    return bool(np.abs(u.T @ u - np.eye(3)).max() > tol)


def nifti_geometry_warnings(volume, affine) -> list[str]:
    """What a label or heat-map NIfTI written on ``volume``'s grid with ``affine`` cannot say:
    a gantry tilt (sform only, see :func:`save_nifti`) and uneven slice gaps (a NIfTI grid has one
    slice step: the slices are placed at the mean step, the worst one this far from where it was
    acquired).  The DICOM SEG places every frame on its own slice."""
    out = []
    if volume is None or getattr(volume, "nifti_transforms", None) is not None:
        return out
    if is_sheared(affine):
        out.append("the NIfTI label and heat-map files of this gantry-tilted series keep the tilt in "
                   "their sform only (no qform): nibabel-based tools place them exactly, ITK-based tools "
                   "(ITK-SNAP, 3D Slicer) refuse them; the DICOM SEG (--dicom) places each frame on its slice")
    sp = getattr(volume, "slice_positions", None)
    n = int(volume.array.shape[0]) if getattr(volume, "array", None) is not None else 0
    if sp is not None and n > 2 and len(sp) == n:
        pos = np.asarray(sp, float)
        even = pos[0] + (pos[-1] - pos[0]) * np.arange(n) / (n - 1)
        worst = float(np.abs(pos - even).max()) if np.all(np.isfinite(pos)) else 0.0
        if worst > 0.1:
            out.append(f"the slices of this series are unevenly spaced: the NIfTI label and heat-map files "
                       f"place them at the mean step, one up to {worst:.1f} mm from where it was acquired; "
                       "the DICOM SEG (--dicom) places each frame on its slice")
    return out
