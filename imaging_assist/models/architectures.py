"""Build a network from the ``architecture`` block of a model card.

Only two well-kept libraries are accepted: torchvision (``torchvision.models.get_model``)
and MONAI (``monai.networks.nets``).  Weights are never downloaded: torchvision models are
built with ``weights=None`` and MONAI ``pretrained`` flags must be false; the weights come
from the model folder after their sha256 matched.
"""

from __future__ import annotations

import inspect

import torch.nn as nn

from ..errors import UserError


class ArchitectureError(UserError):
    """The card names an architecture that cannot be built."""


_DOWNLOAD_FLAGS = ("pretrained", "pretrained_backbone", "weights", "weights_backbone")


def build_network(arch: dict, model_id: str = "") -> nn.Module:
    lib = arch.get("library")
    name = arch.get("name", "")
    kwargs = dict(arch.get("kwargs") or {})
    who = f"model {model_id}: " if model_id else ""
    for k in _DOWNLOAD_FLAGS:
        if kwargs.get(k) not in (None, False):
            raise ArchitectureError(
                f"{who}architecture.kwargs.{k} must be false or absent: imaging-assist never "
                "downloads weights, they come from the model folder")
    if lib == "torchvision":
        import torchvision.models as tvm

        if name not in tvm.list_models():
            raise ArchitectureError(f"{who}torchvision has no model named {name!r}")
        try:
            return tvm.get_model(name, weights=None, **kwargs)
        except TypeError as e:
            raise ArchitectureError(f"{who}cannot build torchvision {name}: {e}") from None
    if lib == "monai":
        import monai.networks.nets as mnets

        cls = getattr(mnets, name, None)
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
            raise ArchitectureError(f"{who}monai.networks.nets has no network named {name!r}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, AssertionError) as e:
            raise ArchitectureError(f"{who}cannot build MONAI {name}({kwargs}): {e}") from None
    raise ArchitectureError(f"{who}architecture.library must be torchvision or monai (got {lib!r})")


def last_conv_layer(net: nn.Module) -> str | None:
    """Name of the last convolution module in registration order (Grad-CAM fallback)."""
    last = None
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            last = name
    return last


def get_layer(net: nn.Module, name: str) -> nn.Module:
    mods = dict(net.named_modules())
    if name not in mods:
        close = [n for n in mods if n and (n.endswith(name) or name in n)][:5]
        raise ArchitectureError(f"the network has no layer named {name!r}"
                                + (f" (similar: {', '.join(close)})" if close else ""))
    return mods[name]
