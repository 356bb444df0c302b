#!/usr/bin/env python3
"""Build the small demo study shipped in imaging_assist/data/demo from ../shared/data.

CT: a decimated copy of the Philips head phantom (BSD-2, Chris Rorden's dcm_qa_ct):
every 5th slice, 256x256 (2x2 mean), RLE Lossless; geometry attributes are rewritten to
match, UIDs are derived deterministically, the pixel values keep their HU meaning.
Run once; the output is committed.  Usage: scripts/make_demo_data.py [SHARED_DATA]
"""

import glob
import os
import shutil
import sys

import numpy as np
import pydicom
from pydicom.uid import RLELossless, generate_uid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "imaging_assist", "data", "demo")


def ct_phantom():
    src = os.path.join(SHARED, "dicom", "ct_head_phantom_philips", "series202_STD_BRAIN_1MM_iDose")
    files = glob.glob(os.path.join(src, "*.dcm"))
    dss = [pydicom.dcmread(f) for f in files]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    dst = os.path.join(OUT, "ct_head_phantom")
    os.makedirs(dst, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=["imaging-assist-demo-ct-series"])
    for n, ds in enumerate(dss[::5]):
        raw = ds.pixel_array.astype(np.float32)  # stored values
        small = raw.reshape(256, 2, 256, 2).mean(axis=(1, 3))
        small = np.round(small).astype(np.uint16)
        ds.PixelData = small.tobytes()
        ds.Rows, ds.Columns = 256, 256
        ps = [float(x) * 2 for x in ds.PixelSpacing]
        ds.PixelSpacing = [f"{ps[0]:.6f}", f"{ps[1]:.6f}"]
        # The centre of the first 2x2 block moves by half an original pixel along rows and columns.
        ipp = np.array([float(x) for x in ds.ImagePositionPatient])
        iop = np.array([float(x) for x in ds.ImageOrientationPatient])
        ipp = ipp + 0.5 * ps[1] / 2 * iop[:3] + 0.5 * ps[0] / 2 * iop[3:]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.SliceThickness = "1"
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["imaging-assist-demo-ct", str(n)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "DEMO head phantom (decimated)"
        ds.InstanceNumber = n + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = "Every 5th slice, 2x2 mean downsampling, RLE lossless (Imaging Assist demo)"
        for kw in ("LargestImagePixelValue", "SmallestImagePixelValue"):
            if kw in ds:
                del ds[kw]
        ds.compress(RLELossless)
        ds.save_as(os.path.join(dst, f"ct_{n + 1:03d}.dcm"), enforce_file_format=True)
    # Licences live beside (not inside) the demo folder, so scanning the demo lists no non-DICOM files.
    lic = os.path.join(ROOT, "imaging_assist", "data", "licenses")
    os.makedirs(lic, exist_ok=True)
    shutil.copy(os.path.join(SHARED, "dicom", "ct_head_phantom_philips", "LICENSE_dcm_qa_ct.txt"),
                os.path.join(lic, "demo_ct_head_phantom_LICENSE_dcm_qa_ct.txt"))
    print(f"CT demo: {len(dss[::5])} slices in {dst}")


if __name__ == "__main__":
    ct_phantom()
