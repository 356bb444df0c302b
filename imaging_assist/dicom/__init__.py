"""DICOM input: header reading, study indexing and volume assembly."""

from .header import HeaderError, InstanceRecord, read_dataset, read_record
from .index import (PatientInfo, Problem, SeriesInfo, StudyIndex, StudyInfo, check_record,
                    preload_pydicom, scan)
from .loader import LoadError, SeriesLoader, load_series, plan_series

__all__ = ["HeaderError", "InstanceRecord", "read_dataset", "read_record", "PatientInfo", "Problem",
           "SeriesInfo", "StudyIndex", "StudyInfo", "scan", "check_record", "preload_pydicom",
           "LoadError", "SeriesLoader", "load_series", "plan_series"]
