#!/usr/bin/env python3
"""Build the small demo study shipped in imaging_assist/data/demo from ../shared/data.

* CT: a decimated copy of the Philips head phantom (BSD-2, Chris Rorden's dcm_qa_ct):
  every 5th slice, 256x256 (2x2 mean), RLE Lossless; geometry attributes are rewritten to
  match, UIDs are derived deterministically, the pixel values keep their HU meaning.
* CT chest: LIDC-IDRI-0001's 16-slice slab (TCIA, CC BY 3.0) cropped in-plane to 256x256
  around the left lung and its nodule, RLE Lossless, geometry kept (``ct_chest_nodule``).
* Chest X-rays (CR Image Storage, 8-bit MONOCHROME2, the source JPEG's pixels unchanged):
  two paediatric images of the ORIGINAL TEST split of Kermany et al. (CC BY 4.0; never trained
  on by cxr-pneumonia) and two adult PA images of the ieee8023 COVID-19 collection whose
  per-image licence is CC BY (lung masks: GeneralBlockchain, CC BY 4.0).
* Breast ultrasound (Ultrasound Image Storage): two SYNTHETIC B-mode phantoms made here.
  The licence of the BUSI data set could not be confirmed, so none of its pixels are shipped
  (``--busi-out DIR`` writes BUSI images as DICOM US to a folder of your own, never into the
  package).

Patient names, ids, dates and ages are fake; UIDs are derived deterministically from the
source, so a re-run gives the same files.  No pixel spacing is written for the X-rays and
the ultrasound: it is not known (areas are then in pixels).  Attribution:
imaging_assist/data/licenses/DEMO_ATTRIBUTION.md.

Usage: scripts/make_demo_data.py [SHARED_DATA] [--parts ct,nodule,cxr,us] [--busi-out DIR]
"""

import argparse
import csv
import glob
import os
import shutil
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "imaging_assist", "data", "demo")
LICENSES = os.path.join(ROOT, "imaging_assist", "data", "licenses")
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


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
        ds.compress(RLELossless, generate_instance_uid=False)  # keep the deterministic UID
        ds.save_as(os.path.join(dst, f"ct_{n + 1:03d}.dcm"), enforce_file_format=True)
    # Licences live beside (not inside) the demo folder, so scanning the demo lists no non-DICOM files.
    lic = os.path.join(ROOT, "imaging_assist", "data", "licenses")
    os.makedirs(lic, exist_ok=True)
    shutil.copy(os.path.join(SHARED, "dicom", "ct_head_phantom_philips", "LICENSE_dcm_qa_ct.txt"),
                os.path.join(lic, "demo_ct_head_phantom_LICENSE_dcm_qa_ct.txt"))
    print(f"CT demo: {len(dss[::5])} slices in {dst}")


# =========================================================================== CT chest, nodule
NODULE_CROP = (180, 200, 256)  # first row, first column, size: the left lung with the nodule


def ct_chest_nodule():
    """LIDC-IDRI-0001's 16-slice slab (../shared/data/ct/lidc_idri_0001_slab), cropped in-plane
    to 256x256 around the left lung and its nodule, RLE Lossless.  ImagePositionPatient moves
    to the crop's first pixel, so every voxel keeps its patient (LPS) position and HU value.
    The readers' nodule (centre of the >=2-of-4 consensus of annotations_69.xml, computed on
    the original slab) goes to imaging_assist/data/nodule_points.json for the demo."""
    import json

    sys.path.insert(0, ROOT)
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.nodules import lidc_xml

    src = os.path.join(SHARED, "ct", "lidc_idri_0001_slab")
    dss = [pydicom.dcmread(f) for f in glob.glob(os.path.join(src, "*.dcm"))]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    dst = os.path.join(OUT, "ct_chest_nodule")
    os.makedirs(dst, exist_ok=True)
    r0, c0, n = NODULE_CROP
    series_uid = _uid("lidc-0001-series")
    study_uid = _uid("lidc-0001-study")
    for k, ds in enumerate(dss):
        ps = [float(x) for x in ds.PixelSpacing]  # row spacing, column spacing
        iop = np.array([float(x) for x in ds.ImageOrientationPatient])
        ipp = np.array([float(x) for x in ds.ImagePositionPatient])
        ipp = ipp + c0 * ps[1] * iop[:3] + r0 * ps[0] * iop[3:]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[r0:r0 + n, c0:c0 + n]).tobytes()
        ds.Rows, ds.Columns = n, n
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.PatientName, ds.PatientID = "DEMO^LIDC^0001", "DEMO-LIDC-IDRI-0001"
        ds.PatientIdentityRemoved = "YES"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = _uid("lidc-0001", k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "DEMO chest CT with a lung nodule (LIDC-IDRI-0001, cropped)"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        if "AcquisitionNumber" not in ds:  # Type 2 in the CT Image module; the LIDC files lack it
            ds.AcquisitionNumber = None
        ds.DerivationDescription = (f"LIDC-IDRI-0001 (TCIA, CC BY 3.0): rows {r0}-{r0 + n - 1}, columns "
                                    f"{c0}-{c0 + n - 1} of the original 512x512, RLE lossless (Imaging Assist demo)")
        for kw in ("LargestImagePixelValue", "SmallestImagePixelValue"):
            if kw in ds:
                del ds[kw]
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(os.path.join(dst, f"ct_chest_{k + 1:02d}.dcm"), enforce_file_format=True)
    vol = load_series(scan(src).all_series()[0])
    nods = lidc_xml.load_for_volume(os.path.join(src, "annotations_69.xml"), vol)
    points = [{"id": f"LIDC-IDRI-0001 {nd.id}",
               "point_lps": [round(float(v), 3) for v in lidc_xml.centre_lps(lidc_xml.consensus_mask(nd), vol)],
               "readers": nd.n_readers, "malignancy_ratings": nd.ratings("malignancy"),
               "source": "centre of the >=2-of-4 reader consensus of LIDC annotations_69.xml"}
              for nd in nods]
    with open(os.path.join(ROOT, "imaging_assist", "data", "nodule_points.json"), "w") as f:
        json.dump({series_uid: points}, f, indent=2)
    print(f"CT chest nodule demo: {len(dss)} slices in {dst}, {len(points)} nodule point(s)")


# =========================================================================== 2D images
def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["imaging-assist-demo", *map(str, parts)])


def _image_ds(pixels: np.ndarray, sop_class: str, key: str, patient: dict, study: dict,
              series: dict) -> Dataset:
    """A single-frame 8-bit MONOCHROME2 image with real file meta, deterministic UIDs."""
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError("8-bit grey images only")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = _uid(key, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _uid("implementation")
    meta.ImplementationVersionName = "IA_DEMO_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study["date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study.get("time", "100000")
    ds.AccessionNumber = study["accession"]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study["description"]
    ds.StudyInstanceUID = _uid(key, "study")
    ds.StudyID = study["id"]
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientAge = patient["age"]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Fake demo identity (Imaging Assist)"
    ds.Modality = series["modality"]
    ds.SeriesInstanceUID = _uid(key, "series")
    ds.SeriesNumber = series["number"]
    ds.SeriesDescription = series["description"]
    ds.BodyPartExamined = series["body_part"]
    ds.Manufacturer = ""
    ds.InstitutionName = "Imaging Assist demo (not a real institution)"
    ds.InstanceNumber = 1
    ds.PatientOrientation = series.get("patient_orientation", "")
    ds.ImageType = series.get("image_type", ["DERIVED", "SECONDARY"])
    ds.ImageComments = series["comments"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _save(ds: Dataset, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# (source folder under cxr/, file, fake patient, view, licence, credit, burned-in annotation)
CXR = [
    ("pneumonia_kermany", "test/NORMAL/IM-0001-0001.jpeg", "DEMO^CHEST-1^PAEDIATRIC", "DEMO-CXR-0001", "004Y",
     "AP", "NORMAL", "CC BY 4.0", "Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2",
     "YES"),
    ("pneumonia_kermany", "test/PNEUMONIA/person100_bacteria_475.jpeg", "DEMO^CHEST-2^PAEDIATRIC", "DEMO-CXR-0002",
     "003Y", "AP", "PNEUMONIA (bacterial)", "CC BY 4.0",
     "Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2", "NO"),
    ("lung_masks_covid_generalblockchain", "images/0fc7f55c1dac1528b4459ef3adbae236acab1fee.jpg",
     "DEMO^CHEST-3^ADULT", "DEMO-CXR-0003", "047Y", "PA", "Pneumocystis pneumonia", "CC BY",
     "ieee8023 covid-chestxray-dataset (Cohen et al. 2020, arXiv:2003.11597), "
     "X-ray_of_cyst_in_pneumocystis_pneumonia_1.jpg; lung masks GeneralBlockchain (CC BY 4.0)", "YES"),
    ("lung_masks_covid_generalblockchain", "images/99e0d1ddca3f2d33c8531c868b40e9d39f6c629c.jpg",
     "DEMO^CHEST-4^ADULT", "DEMO-CXR-0004", "052Y", "PA", "Pneumocystis pneumonia", "CC BY",
     "ieee8023 covid-chestxray-dataset (Cohen et al. 2020, arXiv:2003.11597), pneumocystis-pneumonia-1.jpg; "
     "lung masks GeneralBlockchain (CC BY 4.0)", "NO"),
]


def cxr_source(entry) -> str:
    return os.path.join(SHARED, "cxr", entry[0], entry[1])


def cxr_pixels(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def chest_xrays() -> None:
    """Each X-ray is its own patient / study / series (CR, MONOCHROME2, 8-bit)."""
    dst = os.path.join(OUT, "chest_xray")
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    for n, (folder, rel, name, pid, age, view, finding, lic, credit, burned) in enumerate(CXR, 1):
        src = cxr_source(CXR[n - 1])
        px = cxr_pixels(src)
        key = f"cxr:{folder}/{rel}"
        ds = _image_ds(px, CR_STORAGE, key, {"name": name, "id": pid, "age": age},
                       {"date": "20240105", "time": f"{90000 + n * 100:06d}", "accession": f"DEMOACC{n:04d}",
                        "description": "DEMO chest X-ray", "id": f"DEMO{n:02d}"},
                       {"modality": "CR", "number": 1, "body_part": "CHEST",
                        "description": f"DEMO chest {view} ({finding})",
                        # displayed as if facing the patient: columns run to the patient's left,
                        # rows to the feet (the usual radiograph display, PA and AP alike)
                        "patient_orientation": ["L", "F"],
                        "comments": f"Source: {credit}; licence {lic}. Pixels = the source JPEG decoded, "
                                    f"unchanged. Label in the source data set: {finding}. Pixel spacing unknown."})
        ds.ViewPosition = view
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.WindowCenter = 127.5
        ds.WindowWidth = 256
        ds.BurnedInAnnotation = burned
        # the source was JPEG: lossy (ratio unknown, so not given)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.DerivationDescription = f"Converted from {os.path.basename(rel)} by scripts/make_demo_data.py"
        _save(ds, os.path.join(dst, f"cxr_{n:02d}_{view.lower()}.dcm"))
    print(f"CXR demo: {len(CXR)} images in {dst}")


# =========================================================================== ultrasound
def synthetic_breast_us(seed: int, malignant_like: bool, shape=(288, 352)) -> np.ndarray:
    """A B-mode-like SYNTHETIC phantom (not a patient image): correlated speckle over skin, fat
    and fibroglandular layers and muscle, depth attenuation, one hypoechoic mass: oval and
    circumscribed with posterior enhancement, or irregular (spiculated) with posterior shadowing."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fat_lo = 62 + 12 * np.sin(xx / 37.0 + seed) + 5 * np.sin(xx / 11.0)
    gland_lo = 205 + 10 * np.cos(xx / 53.0 + seed)
    echo = np.where(yy < 8, 1.3, np.where(yy < fat_lo, 0.38, np.where(yy < gland_lo, 0.8, 0.5)))
    lobules = gaussian_filter(rng.normal(0, 1, shape), 9) * 6  # fat lobules / gland texture
    echo = echo * (1 + 0.35 * np.tanh(lobules))
    cy, cx = 132.0, w / 2 + (10 if malignant_like else -15)
    ang = np.arctan2(yy - cy, xx - cx)
    if malignant_like:
        r = np.hypot((yy - cy) / 0.85, xx - cx)
        edge = 33 + 5 * np.sin(7 * ang) + 3 * np.sin(13 * ang + 1.0) + 2 * gaussian_filter(rng.normal(0, 3, shape), 2)
        mass = (r < edge).astype(np.float32)
        post = 0.4  # posterior shadowing
        half = 28
    else:
        mass = (np.hypot((yy - cy) / 21.0, (xx - cx) / 37.0) < 1.0).astype(np.float32)
        post = 1.5  # posterior enhancement
        half = 32
    mass = gaussian_filter(mass, 1.5 if not malignant_like else 0.8)
    column = gaussian_filter(((yy > cy + 10) & (np.abs(xx - cx) < half)).astype(np.float32), (12, 4))
    echo = echo * (1 + (post - 1) * column)
    echo = echo * (1 - mass) + 0.1 * mass
    # speckle: complex Gaussian scatterers through a point-spread function wider than tall
    z = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    z = gaussian_filter(z.real, (0.8, 1.8)) + 1j * gaussian_filter(z.imag, (0.8, 1.8))
    speckle = np.abs(z)
    speckle /= speckle.mean()
    img = echo * speckle * np.exp(-yy / (2.5 * h))
    img = np.log1p(6 * img) / np.log1p(6 * 2.2)  # log compression
    out = np.clip(img * 255, 0, 255).astype(np.uint8)
    out[:, :12] = 0  # outside the transducer's field of view
    out[:, -12:] = 0
    return out


US = [  # (file, fake patient, id, age, description, malignant_like, seed)
    ("us_01_breast.dcm", "DEMO^US-BREAST-1^PHANTOM", "DEMO-US-0001", "045Y",
     "DEMO SYNTHETIC breast US phantom: oval circumscribed mass", False, 11),
    ("us_02_breast.dcm", "DEMO^US-BREAST-2^PHANTOM", "DEMO-US-0002", "058Y",
     "DEMO SYNTHETIC breast US phantom: irregular mass", True, 12),
]


def _us_ds(px, key, name, pid, age, desc, n, comments) -> Dataset:
    ds = _image_ds(px, US_STORAGE, key, {"name": name, "id": pid, "age": age},
                   {"date": "20240106", "time": f"{140000 + n * 100:06d}", "accession": f"DEMOUS{n:04d}",
                    "description": "DEMO breast ultrasound", "id": f"DEMOUS{n:02d}"},
                   {"modality": "US", "number": 1, "body_part": "BREAST", "description": desc,
                    "image_type": ["DERIVED", "SECONDARY"], "comments": comments})
    ds.LossyImageCompression = "00"
    # Type 2C for a paired body part (the breast): present and empty, because a synthetic
    # phantom has no side (a made-up "L" or "R" would be a wrong label)
    ds.Laterality = None
    return ds


def breast_ultrasound() -> None:
    dst = os.path.join(OUT, "breast_us")
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    for n, (fname, name, pid, age, desc, mal, seed) in enumerate(US, 1):
        px = synthetic_breast_us(seed, mal)
        ds = _us_ds(px, f"us-synthetic:{seed}", name, pid, age, desc, n,
                    "SYNTHETIC phantom made by scripts/make_demo_data.py (numpy, seed "
                    f"{seed}); not a patient image. Pixel spacing unknown (none).")
        ds.ImageType = ["DERIVED", "SECONDARY"]
        _save(ds, os.path.join(dst, fname))
    print(f"US demo: {len(US)} synthetic images in {dst}")


def busi_to_folder(out: str, per_class: int = 1) -> None:
    """BUSI images as DICOM US in OUT (a folder of your own: the BUSI licence could not be
    confirmed, so these are never shipped)."""
    src = os.path.join(SHARED, "ultrasound", "breast_busi")
    rows = list(csv.DictReader(open(os.path.join(src, "labels.csv"))))
    done = 0
    for label in ("benign", "malignant", "normal"):
        for r in [r for r in rows if r["label"] == label][:per_class]:
            done += 1
            px = cxr_pixels(os.path.join(src, r["file"]))
            ds = _us_ds(px, f"busi:{r['file']}", f"DEMO^BUSI^{done:02d}", f"BUSI-{done:04d}", "050Y",
                        f"BUSI {label} ({os.path.basename(r['file'])})", done,
                        "Al-Dhabyani et al., Data in Brief 28:104863 (2020); licence not confirmed: "
                        "for local use only, do not redistribute.")
            _save(ds, os.path.join(out, f"busi_{done:02d}_{label}.dcm"))
    print(f"BUSI: {done} images in {out} (local use only)")


def licences() -> None:
    os.makedirs(LICENSES, exist_ok=True)
    for f in ("DEMO_ATTRIBUTION.md", "demo_ct_head_phantom_LICENSE_dcm_qa_ct.txt"):
        if not os.path.exists(os.path.join(LICENSES, f)):
            print(f"warning: {f} missing in {LICENSES}", file=sys.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Build the bundled demo study")
    ap.add_argument("shared", nargs="?", default=SHARED, help="the shared data folder (../shared/data)")
    ap.add_argument("--parts", default="ct,nodule,cxr,us", help="comma list of ct, nodule, cxr, us (default: all)")
    ap.add_argument("--busi-out", metavar="DIR", help="also write BUSI images as DICOM US to DIR "
                    "(local use only: not redistributable as far as we know)")
    a = ap.parse_args()
    SHARED = a.shared
    parts = set(a.parts.split(","))
    if "ct" in parts:
        ct_phantom()
    if "nodule" in parts:
        ct_chest_nodule()
    if "cxr" in parts:
        chest_xrays()
    if "us" in parts:
        breast_ultrasound()
    if a.busi_out:
        busi_to_folder(a.busi_out)
    licences()
