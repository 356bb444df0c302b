"""The explanation methods by name (no torch: the command line checks ``--explain`` before
loading anything, and a batch driver that only schedules never imports torch)."""

from __future__ import annotations

from ..errors import UserError

METHODS = ("gradcam", "integrated_gradients", "saliency", "occlusion")
_ALIASES = {"gradcam": "gradcam", "grad-cam": "gradcam", "grad_cam": "gradcam",
            "seg-grad-cam": "gradcam", "ig": "integrated_gradients",
            "integrated_gradients": "integrated_gradients",
            "integrated-gradients": "integrated_gradients", "saliency": "saliency",
            "occlusion": "occlusion"}
_REFUSED = {"guided_backprop", "guided-backprop", "guidedbackprop", "guided_gradcam",
            "guided-gradcam", "guided-grad-cam", "guidedgradcam"}


class ExplainError(UserError):
    pass


def canonical_method(name: str | None) -> str:
    n = (name or "gradcam").strip().lower()
    if n in _REFUSED:
        raise ExplainError(f"{name} is not offered: Guided Backprop and Guided Grad-CAM fail the "
                           "model-randomisation sanity check (they show image edges, not the "
                           "model's reasons); use gradcam, ig, saliency or occlusion")
    if n not in _ALIASES:
        raise ExplainError(f"unknown explanation method {name!r}: use gradcam, ig "
                           "(integrated gradients), saliency or occlusion")
    return _ALIASES[n]
