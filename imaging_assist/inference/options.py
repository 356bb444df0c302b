"""Run options and the input error shared by every part of the inference pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


class InputError(UserError):
    """The input does not fit the model (dimensions, units, channels, geometry)."""


class ModelOutputError(UserError):
    """The model gave NaN/infinite outputs: no result (a decision on NaN would be a silent
    "negative")."""


def check_finite(t, card, what: str = "outputs") -> None:
    """Raise :class:`ModelOutputError` when tensor/array ``t`` holds NaN or inf."""
    import torch

    t = torch.as_tensor(t)
    if t.is_floating_point():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ModelOutputError(f"model {card.id} gave NaN or infinite {what} on this input "
                                   f"({bad} of {t.numel()} values): no result is reported")


@dataclass
class RunOptions:
    device: str | None = None  # None/"auto", "cpu", "cuda", "mps"
    precision: str = "auto"  # "auto", "fp32", "bf16" (see device.fast_path)
    explain: object | None = None  # explain.ExplainConfig, or None for no explanation
    explain_labels: list[str] | None = None  # None: positive/top label(s), or every structure
    region: np.ndarray | None = None  # user region, bool [k, j, i] on the input grid
    overlap: float | None = None  # sliding-window overlap override
    sw_batch_size: int | None = None
    enlarge_roi: bool = True  # use a larger ROI where the card allows it (roi_multiple)
    keep_probabilities: bool = False  # keep segmentation probabilities on the result
    slice_batch: int = 8  # per-slice classification batch
    fallback_to_cpu: bool = True

