"""How far the nodule workflow's sizes are from the true size, on spheres of known size.

NOT FOR CLINICAL USE. ``ct-nodule-seg`` learned the LIDC-IDRI readers' outlines, which lie
outside the nodule's edge (their consensus masks hold lung voxels around it): its volume and
diameters agree with those masks (the card's volume error) but are larger than the object.
This script measures by how much, on a synthetic CT of solid spheres (4-12 mm, +40 HU in
-850 HU lung, partial volume by 4x supersampling, a Gaussian blur of 1.2 mm FWHM, 15 HU noise,
0.7 x 0.7 x 1.0 mm voxels, written as DICOM and read back like any series), clicked at their
centres through ``imaging_assist.nodules.run.analyze_points``.

    .venv/bin/python scripts/check_nodule_phantom.py [--out weights/ct-nodule-seg/phantom_sizes.json]

Prints one line per sphere and, last, one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIAMETERS_MM = (4, 5, 6, 8, 10, 12)
SPACING = (0.7, 0.7, 1.0)  # column, row, slice (mm)
FWHM_MM, NOISE_HU, LUNG_HU, SOLID_HU, SEED = 1.2, 15.0, -850.0, 40.0, 1


def phantom(folder: Path) -> list[tuple[str, list[float], float]]:
    """Write the phantom as a DICOM CT series into ``folder``; returns (id, centre LPS, diameter)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from scipy.ndimage import gaussian_filter

    nr = nc = 160
    ns = 40
    ps, dz = SPACING[0], SPACING[2]
    org = np.array([-ps * 79.5, -ps * 79.5, -19.5])
    centres = [(-35, -20), (0, -20), (35, -20), (-35, 20), (0, 20), (35, 20)]
    occ = np.zeros((ns, nr, nc))
    ss = 4
    off = (np.arange(ss) + 0.5) / ss - 0.5
    for (x, y), d in zip(centres, DIAMETERS_MM):
        r = d / 2
        for a in off:
            for b in off:
                for c in off:
                    k, j, i = np.meshgrid(np.arange(ns) + a, np.arange(nr) + b, np.arange(nc) + c, indexing="ij")
                    px, py, pz = org[0] + i * ps, org[1] + j * ps, org[2] + k * dz
                    occ += ((px - x) ** 2 + (py - y) ** 2 + pz ** 2 <= r * r) / ss ** 3
    hu = LUNG_HU + occ * (SOLID_HU - LUNG_HU)
    sig = FWHM_MM / 2.355
    hu = gaussian_filter(hu, (sig / dz, sig / ps, sig / ps))
    hu += np.random.default_rng(SEED).normal(0, NOISE_HU, hu.shape)
    stored = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    st, se, fo = generate_uid(), generate_uid(), generate_uid()
    for k in range(ns):
        m = FileMetaDataset()
        m.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        m.MediaStorageSOPInstanceUID = generate_uid()
        m.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=m, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = m.MediaStorageSOPClassUID, m.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "PHANTOM^SPHERES", "PHANTOM"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = st, se, fo
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined = "20200101", 2, k + 1, "CHEST"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(org[0]), float(org[1]), float(org[2] + k * dz)]
        ds.PixelSpacing, ds.SliceThickness, ds.Rows, ds.Columns = [ps, ps], dz, nr, nc
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = stored[k].tobytes()
        pydicom.dcmwrite(folder / f"p{k:03d}.dcm", ds, enforce_file_format=True)
    return [(f"d{d}mm", [float(x), float(y), 0.0], float(d)) for (x, y), d in zip(centres, DIAMETERS_MM)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "weights" / "ct-nodule-seg" / "phantom_sizes.json")
    args = ap.parse_args(argv)
    from imaging_assist.dicom import load_series, scan
    from imaging_assist.nodules.run import analyze_points

    with tempfile.TemporaryDirectory() as tmp:
        spheres = phantom(Path(tmp) / "phantom")
        vol = load_series(scan(str(Path(tmp) / "phantom")).image_series()[0])
        run = analyze_points(vol, [(nid, c) for nid, c, _ in spheres], explain=False)
    rows = []
    for (nid, _c, d), r in zip(spheres, run.nodules):
        true_v = float(np.pi / 6 * d ** 3)
        row = {"id": nid, "true_diameter_mm": d, "true_volume_mm3": round(true_v, 1), "found": bool(r.found)}
        if r.found:
            row.update(long_axis_mm=round(r.long_axis_mm, 2), short_axis_mm=round(r.short_axis_mm, 2),
                       volume_mm3=round(r.volume_mm3, 1), volume_ratio=round(r.volume_mm3 / true_v, 3),
                       long_axis_excess_mm=round(r.long_axis_mm - d, 2), mean_hu=round(r.mean_hu, 1),
                       density=r.density)
        rows.append(row)
        print(f"{nid}: true {d:g} mm / {true_v:.0f} mm3 -> "
              + (f"{r.long_axis_mm:.1f} x {r.short_axis_mm:.1f} mm, {r.volume_mm3:.0f} mm3 "
                 f"(x{r.volume_mm3 / true_v:.2f}), mean {r.mean_hu:.0f} HU, {r.density}" if r.found else r.reason))
    found = [x for x in rows if x["found"]]
    out = {"script": "scripts/check_nodule_phantom.py",
           "phantom": f"solid spheres {SOLID_HU:+g} HU in {LUNG_HU:g} HU lung, partial volume (4x supersampled), "
                      f"Gaussian blur FWHM {FWHM_MM} mm, noise {NOISE_HU:g} HU, voxels {SPACING[0]}x{SPACING[1]}x{SPACING[2]} mm, "
                      f"seed {SEED}; clicked at each sphere's centre",
           "spheres": rows,
           "long_axis_excess_mm": [min(x["long_axis_excess_mm"] for x in found), max(x["long_axis_excess_mm"] for x in found)]
           if found else None,
           "volume_ratio": [min(x["volume_ratio"] for x in found), max(x["volume_ratio"] for x in found)] if found else None}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("long_axis_excess_mm", "volume_ratio")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
