"""Inference engine (no Qt): device choice, pipelines, result objects, threaded jobs."""

from .device import resolve_device
from .images import read_image
from .jobs import Cancelled, Job, Progress, submit
from .pipelines import InputError, RunOptions, run_model
from .results import ClassificationResult, HeatMap, SegmentationResult

__all__ = ["resolve_device", "read_image", "Cancelled", "Job", "Progress", "submit", "InputError",
           "RunOptions", "run_model", "ClassificationResult", "HeatMap", "SegmentationResult"]
