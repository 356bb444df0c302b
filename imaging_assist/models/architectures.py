"""Build a network from the ``architecture`` block of a model card.

Only two well-kept libraries are accepted: torchvision (``torchvision.models.get_model``)
and MONAI (``monai.networks.nets``).  Weights are never downloaded: torchvision models are
built with ``weights=None`` and MONAI ``pretrained`` flags must be false; the weights come
from the model folder after their sha256 matched.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .errors import ArchitectureError

__all__ = ["ArchitectureError", "build_network", "check_network_size", "network_size",
           "last_conv_layer", "get_layer", "MAX_PARAMETERS", "MAX_PARAMETER_BYTES"]

_DOWNLOAD_FLAGS = ("pretrained", "pretrained_backbone", "weights", "weights_backbone")

# A network is built for real only when its estimate (built on the meta device, where no
# memory is allocated) stays under these limits (docs/model_card.md, "Limits").
MAX_PARAMETERS = 500_000_000
MAX_PARAMETER_BYTES = 2 << 30  # parameters + buffers


def network_size(net: nn.Module) -> tuple[int, int]:
    """(number of parameters, bytes of parameters and buffers)."""
    n = sum(p.numel() for p in net.parameters())
    b = sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))
    return n, b


# In-place random initialisers, which a network's constructor calls on every weight
_RANDOM_INIT = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_,
                          torch.Tensor.exponential_, torch.Tensor.log_normal_, torch.Tensor.cauchy_,
                          torch.Tensor.geometric_, torch.Tensor.random_})


class _NoRandomInit(TorchFunctionMode):
    """Skip the random initialisers while a network is built on the meta device.

    A meta tensor holds no values, so initialising it only costs time: its ``normal_`` runs
    PyTorch's Python reference (torch._refs), whose first call imports torch._dynamo (about
    1.1 s, measured with cProfile here).  A batch worker or the command line's ``analyze``,
    which leave torchvision out (:func:`imaging_assist.models.lean.lean_imports`), import
    torch._dynamo nowhere else; elsewhere MONAI's torchvision import loads it anyway.  The
    shapes, and so the size check, are the same either way."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RANDOM_INIT and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **(kwargs or {}))


def check_network_size(make, what: str, field: str = "architecture") -> tuple[int, int]:
    """Call ``make()`` under ``torch.device("meta")`` (nothing is allocated), count its
    parameters and refuse (:class:`ArchitectureError`, a ModelCardError naming ``field``)
    above :data:`MAX_PARAMETERS` / :data:`MAX_PARAMETER_BYTES`."""
    try:
        with torch.device("meta"), _NoRandomInit():
            net = make()
    except ArchitectureError:
        raise
    except (TypeError, ValueError, AssertionError, IndexError, KeyError, AttributeError,
            NotImplementedError, RuntimeError, OverflowError, MemoryError, RecursionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ArchitectureError(f"{what}: {field}: cannot build the network: {first}") from None
    if not isinstance(net, nn.Module):
        raise ArchitectureError(f"{what}: {field} does not build a torch network "
                                f"(got {type(net).__name__})")
    n, b = network_size(net)
    del net
    if n > MAX_PARAMETERS or b > MAX_PARAMETER_BYTES:
        raise ArchitectureError(
            f"{what}: {field} builds a network of {n:,} parameters ({b / 2**30:.2f} GiB), more "
            f"than the limit of {MAX_PARAMETERS:,} parameters / {MAX_PARAMETER_BYTES / 2**30:.0f} "
            "GiB; it was not built")
    return n, b


def build_network(arch: dict, model_id: str = "") -> nn.Module:
    """Build the card's network: its size is estimated on the meta device first."""
    make = _maker(arch, model_id)
    check_network_size(make, f"model {model_id}" if model_id else "model",
                       "architecture.kwargs")
    return make()


def _maker(arch: dict, model_id: str = ""):
    """A function that builds the network (checked names and flags; nothing built yet)."""
    lib = arch.get("library")
    name = arch.get("name", "")
    kwargs = dict(arch.get("kwargs") or {})
    who = f"model {model_id}: " if model_id else ""
    for k in _DOWNLOAD_FLAGS:
        if kwargs.get(k) not in (None, False):
            raise ArchitectureError(
                f"{who}architecture.kwargs.{k} must be false or absent: imaging-assist never "
                "downloads weights, they come from the model folder")
    from .bundle_code import _class_by_name, _file_arg  # the bundle check's rule, one definition

    for k, v in kwargs.items():
        # HoVerNet(pretrained_url=...) downloads in its constructor (even on the meta device),
        # PatchInferer-like *_cls arguments import by name: a card's network is its kwargs only
        if isinstance(k, str) and v not in (None, False, "", [], {}) and (_file_arg(k) or _class_by_name(k, v)):
            raise ArchitectureError(
                f"{who}architecture.kwargs.{k}: a card's network is built from plain values only, "
                "never from files, URLs or classes named by string (weights come from the model folder)")
    if lib == "torchvision":
        import torchvision.models as tvm

        if not isinstance(name, str) or name not in tvm.list_models():
            raise ArchitectureError(f"{who}architecture.name: torchvision has no model named "
                                    f"{str(name)[:80]!r}")

        def make():
            try:
                return tvm.get_model(name, weights=None, **kwargs)
            except (TypeError, ValueError, AssertionError) as e:
                raise ArchitectureError(f"{who}architecture.kwargs: cannot build torchvision "
                                        f"{name}: {_first_line(e)}") from None
        return make
    if lib == "monai":
        import monai.networks.nets as mnets

        cls = getattr(mnets, name, None) if isinstance(name, str) and name.isidentifier() else None
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
            raise ArchitectureError(f"{who}architecture.name: monai.networks.nets has no network "
                                    f"named {str(name)[:80]!r}")

        def make():
            try:
                return cls(**kwargs)
            except (TypeError, ValueError, AssertionError) as e:
                raise ArchitectureError(f"{who}architecture.kwargs: cannot build MONAI "
                                        f"{name}({str(kwargs)[:200]}): {_first_line(e)}") from None
        return make
    raise ArchitectureError(f"{who}architecture.library must be torchvision or monai "
                            f"(got {str(lib)[:80]!r})")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


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
