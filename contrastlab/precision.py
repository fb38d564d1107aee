"""Where reduced precision helps: the trainer's default precision and bf16 autocast elsewhere.

bf16 pays off on GPUs that support it and on CPUs with AMX tiles (Intel Sapphire Rapids and
later), where oneDNN runs bf16 convolutions on the matrix units: MoCo v2's ResNet-18 step is
3x faster than fp32 there (bench/RESULTS.md). On CPUs with only AVX512-BF16 or AVX2, bf16
autocast measured slower than fp32, so those stay in fp32.
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles and the kernel lets this process use them."""
    try:  # private probes: guard against their absence or failure in other torch releases
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._init_amx())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast speeds up convolutions on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_amx()


def default_precision() -> str:
    """Lightning precision: bf16 autocast where it is fast (GPUs with bf16, CPUs with AMX), fp16
    autocast on older GPUs, fp32 otherwise."""
    if torch.cuda.is_available():
        return "bf16-mixed" if bf16_is_fast("cuda") else "16-mixed"
    return "bf16-mixed" if bf16_is_fast("cpu") else "32-true"


def bf16_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast where it is fast (:func:`bf16_is_fast`), a no-op elsewhere; for the loops
    that run outside the Lightning trainer. Callers cast outputs back to float32."""
    device = torch.device(device)
    return torch.autocast(device.type, torch.bfloat16, enabled=bf16_is_fast(device))
