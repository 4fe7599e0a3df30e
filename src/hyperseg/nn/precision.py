"""Which floating-point type the convolutions run in.

The encoder and decoder convolutions dominate both training and the dense pass
of segmentation. On processors with bfloat16 matrix units (Intel AMX or
AVX512-BF16, recent NVIDIA GPUs) they run several times faster in bfloat16
(8 bits of mantissa, float32's range); everywhere else bfloat16 is emulated
and slower than float32. The ball maths (``exp_0``, distances, the wrapped
normal) never run in it: they stay in float32 or float64 (``latent_float64``).

``"auto"`` picks bfloat16 only where the hardware has those units, so that the
same configuration is fast on such a machine and unchanged elsewhere.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn

from ..config import COMPUTE_DTYPES  # the values of Config.embed_dtype and Config.train_dtype

#: Memory layout of the model's 5-D weights and of the patches during training. Channels-last lets oneDNN skip
#: the layout conversions around every convolution and its backward pass: on 2 cores with AMX, a default step
#: (B = 32, K = 4) went from 88 to 72 ms in bfloat16 and from 130 to 123 ms in float32
#: (benchmarks/results/train_speed.json has the end-to-end numbers). It changes no value a checkpoint holds
#: (weights are saved contiguous) and no result beyond floating-point summation order.
TRAIN_MEMORY_FORMAT = torch.channels_last_3d

#: /proc/cpuinfo flags of x86 processors that multiply bfloat16 matrices natively.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this processor lists one of :data:`BF16_CPU_FLAGS` (Linux; ``False`` where unknown)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` as given; ``"auto"``: bfloat16 where ``device`` multiplies it natively.

    CUDA: ``torch.cuda.is_bf16_supported()``; CPU: :func:`cpu_has_native_bf16`.
    """
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def inference_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of ``module`` whose convolutions run in ``dtype``, channels-last on the CPU.

    The 1x1x1 heads (``loc_head``, ``scale_head``) stay float32: they are cheap, and the latent location
    should not carry bfloat16's rounding (about 3 significant digits) into ``exp_0``.
    ``module`` itself is left untouched (training keeps float32 weights). In float32 on the CPU the copy is
    only made channels-last (the dense pass 1.3-1.4x faster on 2 cores: benchmarks/results/dense_ab.json); on a
    GPU float32 returns ``module`` itself.
    """
    if dtype == torch.float32 and next(module.parameters()).device.type != "cpu":
        return module
    out = copy.deepcopy(module).eval().requires_grad_(False)
    body = getattr(out, "body", out)
    body.to(dtype=dtype, memory_format=torch.channels_last_3d)
    return out
