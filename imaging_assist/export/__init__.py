"""Results that leave the workstation: the PDF report and DICOM objects (issue 13). No Qt."""
