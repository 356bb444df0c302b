"""Imaging Assist engine: DICOM and image I/O, geometry, layers, models, explanations.

No Qt is imported anywhere in this package; the desktop app (``imaging_assist_ui``)
builds on it.  NOT FOR CLINICAL USE.
"""

__version__ = "0.1.0"
