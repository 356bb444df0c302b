"""Device choice (CUDA, then Apple MPS, then CPU), GPU out-of-memory detection and the CPU
fast paths (bf16 autocast, channels_last) that are enabled only where they were measured to
be faster *and* accurate.

Measurements behind the CPU defaults (``scripts/bench_infer.py``; AMD EPYC with AVX2 and no
native bf16, 2 cores, torch 2.14.1, see the bench JSON in the report):

* bf16 autocast without native bf16 (no AVX512-BF16/AMX): ResNet-18 224² about 30x slower,
  MONAI 3D UNet (96³ window) 8-20x slower, max |Δp| 0.007 -> never on such CPUs.
* channels_last (2D): ResNet-18 about 5x slower -> off.
* channels_last_3d: within ±10 % of contiguous on a 96³ UNet window (0.47-0.52 s vs
  0.50 s over several runs), not consistently faster -> off (``CPU_CHANNELS_LAST_3D``).

"auto" is fp32 on every CPU: bf16 moves probabilities (max |Δp| 0.007 on a bench UNet window),
enough to flip voxels and threshold decisions near the cut-off, so the same input would give
different results on CPUs with and without native bf16.  bf16 runs only when asked for
(``--precision bf16``), or on CUDA when the card allows it (``inference.precision: "bf16"``).
The result records the precision used.

fp32 on CUDA means IEEE fp32: torch's default lets cuDNN run fp32 convolutions in TF32 (10-bit
mantissa) on Ampere and later cards, which moved near-threshold decisions in a CPU simulation
of it (2 of 60).  :func:`exact_fp32` switches TF32 off before every CUDA run (here, and for
the slide tiles), so fp32 on a GPU gives the numbers fp32 on a CPU gives (to float rounding).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch

from ..errors import UserError

# Set from the bench measurement (see module docstring); bench_infer.py reports both.
CPU_CHANNELS_LAST_3D = False


class DeviceError(UserError):
    pass


class GpuFallbackWarning(RuntimeWarning):
    """Inference fell back to the CPU after the GPU ran out of memory."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(pref: str | None = None) -> torch.device:
    """``None``/"auto": CUDA when available, then MPS, else CPU; or the user's choice."""
    p = (pref or "auto").lower()
    if p == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if p.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {pref}: no CUDA GPU is available to PyTorch here")
        return torch.device(p)
    if p == "mps":
        if not _mps_available():
            raise DeviceError("--device mps: Apple MPS is not available here")
        return torch.device("mps")
    if p == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {pref!r}: use auto, cpu, cuda or mps")


def is_oom(exc: BaseException) -> bool:
    oom_t = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_t is not None and isinstance(exc, oom_t):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_gpu_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _mps_available() and hasattr(torch, "mps"):
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


def native_cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - private probe; absent means no
        return False


@dataclass
class FastPath:
    autocast_dtype: torch.dtype | None
    channels_last: bool
    reason: str

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def memory_format(self, ndim: int):
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last_3d if ndim == 5 else torch.channels_last

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def fast_path(device: torch.device, task: str, spatial_dims: int, precision: str = "auto",
              card_precision: str | None = None) -> FastPath:
    """The precision and memory format to run in.

    ``precision`` is the user's choice: "fp32", "bf16" (honoured on any device; warned on a
    CPU without native bf16) or "auto".  "auto" is fp32 on every CPU (and MPS), so that the
    numbers do not depend on which CPU ran them; on CUDA it is bf16 only when the card allows
    it (``card_precision`` = the card's ``inference.precision`` = "bf16") and the GPU has bf16.
    """
    precision = (precision or "auto").lower()
    if precision not in ("auto", "fp32", "bf16"):
        raise DeviceError(f"unknown precision {precision!r}: use auto, fp32 or bf16")
    cl = device.type == "cpu" and spatial_dims == 3 and CPU_CHANNELS_LAST_3D
    if device.type == "cuda":  # fp32 (and the ops autocast keeps in fp32) without TF32
        exact_fp32()
    if precision == "fp32":
        return FastPath(None, cl, "fp32 requested")
    if precision == "bf16":
        if device.type == "cpu" and not native_cpu_bf16():
            warnings.warn("bf16 requested on a CPU without native bf16: expect it to be much slower",
                          RuntimeWarning, stacklevel=2)
        return FastPath(torch.bfloat16, cl, "bf16 requested")
    if device.type != "cuda":
        return FastPath(None, cl, f"auto: fp32 on {device.type} (results independent of the CPU)")
    card_precision = (card_precision or "auto").lower()
    if card_precision == "bf16" and _cuda_bf16():
        return FastPath(torch.bfloat16, False, "auto: bf16 on CUDA, allowed by the card")
    return FastPath(None, False, "auto: fp32 on GPU (TF32 off)")


def exact_fp32() -> dict:
    """Switch TF32 off for cuDNN convolutions and CUDA matmuls (process-wide torch flags), so
    that fp32 on a GPU is IEEE fp32 as on a CPU; returns :func:`tf32_state`.  The current API
    (``fp32_precision = "ieee"``) where this torch has it, else the legacy ``allow_tf32``.
    Cheap (a flag each); harmless on a build or machine without CUDA."""
    b = torch.backends
    conv = getattr(getattr(b.cudnn, "conv", None), "fp32_precision", None)
    mm = getattr(getattr(b.cuda, "matmul", None), "fp32_precision", None)
    if conv is not None and mm is not None:
        # not mixed with the legacy flags: torch refuses to read allow_tf32 once these are set
        b.cudnn.conv.fp32_precision = "ieee"
        b.cuda.matmul.fp32_precision = "ieee"
    else:
        b.cudnn.allow_tf32 = False
        b.cuda.matmul.allow_tf32 = False
    return tf32_state()


def tf32_state() -> dict:
    """The TF32 flags as torch has them now: ``fp32_precision`` ("ieee" = no TF32, "tf32")
    with the current API, else ``allow_tf32`` (False = no TF32)."""
    b = torch.backends
    conv = getattr(getattr(b.cudnn, "conv", None), "fp32_precision", None)
    mm = getattr(getattr(b.cuda, "matmul", None), "fp32_precision", None)
    if conv is not None and mm is not None:
        return {"cudnn_conv_fp32_precision": str(conv), "cuda_matmul_fp32_precision": str(mm)}
    return {"cudnn_allow_tf32": bool(b.cudnn.allow_tf32), "cuda_matmul_allow_tf32": bool(b.cuda.matmul.allow_tf32)}


def _cuda_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - no usable CUDA: no bf16
        return False


def environment() -> dict:
    """What a number depends on besides the input, the model and its options (results.json
    ``environment``): the libraries, the machine, and on CUDA the card, cuDNN and the TF32
    flags.  ``monai``/``pydicom`` are null when this process did not import them (they took
    no part); ``cuda`` is null when this process never used CUDA.  Cheap: version attributes
    and facts torch already holds (no package metadata is parsed)."""
    import platform
    import sys

    import numpy

    def loaded(name: str):
        return getattr(sys.modules.get(name), "__version__", None)

    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "monai": loaded("monai"), "pydicom": loaded("pydicom"), "torch_cuda_build": torch.version.cuda,
           "machine": platform.machine(), "processor": _cpu_name(), "cuda": None}
    if torch.cuda.is_initialized():
        with contextlib.suppress(Exception):  # a broken driver must not cost the results.json
            env["cuda"] = {"device": torch.cuda.get_device_name(), "cudnn": torch.backends.cudnn.version(),
                           "tf32": tf32_state()}
    return env


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform.processor`` says."""
    import platform

    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip() or None
    return platform.processor() or None
