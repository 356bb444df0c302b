"""Every DICOM file of the bundled demo passes dciodvfy (dicom3tools) without an error: the
demo is what a reader sees first, and other software reads these files too.  (The CT chest
slab lacked the CT Image module's Type 2 AcquisitionNumber, inherited from the LIDC source;
the breast ultrasound lacked the General Series module's Type 2C Laterality, which a paired
body part needs: written empty, since a synthetic phantom has no side.)"""

from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest

from conftest import ROOT

DEMO = ROOT / "imaging_assist" / "data" / "demo"
FILES = sorted(DEMO.rglob("*.dcm"))


def test_demo_has_files():
    assert len(FILES) >= 40


@pytest.mark.parametrize("folder", sorted({f.parent.name for f in FILES}))
def test_demo_files_pass_dciodvfy(folder):
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (Debian package dicom3tools) is missing: scripts/test installs it"
    for path in (f for f in FILES if f.parent.name == folder):
        r = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{path.relative_to(DEMO)}: {errors}"


def test_breast_laterality_is_empty_not_invented():
    for path in sorted((DEMO / "breast_us").glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "Laterality" in ds and not ds.Laterality
