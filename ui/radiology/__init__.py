"""Radiology workspace: slice viewer, MPR, study browser, measurements, DICOM tags, overlays panel,
the viewer document and background loading."""
