"""One small inferer per task (MONAI style): :mod:`.classify`, :mod:`.segment`, :mod:`.bundle`.

Each takes ``(model, volume, options, device, fast_path, progress, warnings)`` and returns a
result on the study grid; preprocessing is :mod:`..preprocess`, placement :mod:`..placement`.
"""

from .bundle import _run_bundle as run_bundle
from .classify import _run_classifier as run_classifier
from .segment import _run_segmenter as run_segmenter

__all__ = ["run_bundle", "run_classifier", "run_segmenter"]
