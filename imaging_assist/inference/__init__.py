"""Inference engine (no Qt): device choice, pipelines, result objects, threaded jobs.

The names below are loaded on first use (PEP 562): importing a light submodule such as
:mod:`.images` (the viewer reads plain images with it) must not import torch, which the
pipelines need; a torch import in a GUI process that never runs a model costs a second and
leaves threads behind at exit.
"""

from importlib import import_module

_WHERE = {
    "resolve_device": ".device", "read_image": ".images",
    "Cancelled": ".jobs", "Job": ".jobs", "Progress": ".jobs", "submit": ".jobs",
    "InputError": ".pipelines", "RunOptions": ".pipelines", "run_model": ".pipelines",
    "ClassificationResult": ".results", "HeatMap": ".results", "SegmentationResult": ".results",
}

__all__ = list(_WHERE)


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(mod, __name__), name)
    globals()[name] = value
    return value
