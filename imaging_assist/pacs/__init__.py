"""PACS connectivity (no Qt): nodes, DIMSE (pynetdicom) and DICOMweb (dicomweb-client)."""
