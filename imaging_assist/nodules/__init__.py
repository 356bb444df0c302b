"""CT lung nodules (no Qt): the crop around a clicked point, segmentation, measurements, malignancy."""
