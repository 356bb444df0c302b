"""Write small synthetic DICOM series for geometry tests."""

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(folder, positions, iop=(1, 0, 0, 0, 1, 0), rows=16, cols=12,
                    spacing=(0.5, 0.7), slope=1.0, intercept=-1024.0, names=None,
                    instance_numbers=None, series_uid=None, extra=None):
    """One CT file per position; pixel value encodes the slice index (k * 10 + j)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    paths = []
    for k, ipp in enumerate(positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = "Synthetic^Geometry"
        ds.PatientID = "SYN001"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = (instance_numbers[k] if instance_numbers else k + 1)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{spacing[0]}", f"{spacing[1]}"]
        ds.SliceThickness = "1"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope = f"{slope}"
        ds.RescaleIntercept = f"{intercept}"
        arr = (np.full((rows, cols), 1000 + k * 10, np.uint16) + np.arange(rows, dtype=np.uint16)[:, None])
        ds.PixelData = arr.tobytes()
        for kw, v in (extra or {}).items():
            setattr(ds, kw, v)
        name = names[k] if names else f"img{k:03d}.dcm"
        p = folder / name
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
