"""Precision modes and device selection for the frozen backbone (docs/methods.md §2.5, §3.6).

| mode            | frozen matmul weights | residual stream | autocast | prompts (method's job)               |
|-----------------|-----------------------|-----------------|----------|--------------------------------------|
| `fp32`          | fp32                  | fp32            | off      | fp32                                 |
| `amp_bf16`      | bf16                  | fp32            | bf16     | fp32 master                          |
| `amp_fp16`      | fp16                  | fp32            | fp16     | fp32 master + GradScaler (engine)    |
| `fp16_faithful` | fp16                  | fp16            | off      | layer-0 text ctx fp16, others fp32 ¹ |

¹ as the official code: deep text prompts and vision prompts are fp32 parameters cast to fp16 in the forward pass.

"Matmul weights" are those of Conv/Linear/MultiheadAttention layers and the two projections (what open_clip's
``convert_weights_to_lp`` casts); LayerNorms always compute in fp32 and embeddings stay fp32, as in OpenAI's
fp16 model. In the amp modes the towers run under ``torch.autocast``, so low-precision weights are never
mixed with fp32 activations outside it. ``auto`` resolves to ``fp32`` on CPU and ``amp_bf16`` on CUDA.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from dplbench.errors import ConfigError, DplbenchError, unknown_choice_message
from dplbench.vocabulary import Precision as PrecisionMode

# the concrete modes ("auto" resolves to one of them per device)
PRECISION_MODES: tuple[str, ...] = tuple(m for m in PrecisionMode.values() if m != PrecisionMode.auto)


@dataclass(frozen=True)
class Precision:
    """A resolved precision mode (see the module table)."""

    name: str
    weight_dtype: torch.dtype          # dtype of the frozen matmul weights
    stream_dtype: torch.dtype          # dtype of the token stream fed to the blocks
    autocast_dtype: torch.dtype | None

    @property
    def needs_grad_scaler(self) -> bool:
        """Whether the engine must scale the loss (fp16 autocast with fp32 master prompts)."""
        return self.name == "amp_fp16"

    @property
    def prompt_dtype(self) -> torch.dtype:
        """dtype of the learnable tensors the official code creates in CLIP's dtype (the layer-0 text context);
        deep and vision prompts stay fp32 masters in every mode (docs/methods.md §2.5)."""
        return torch.float16 if self.name == "fp16_faithful" else torch.float32


_MODES = {
    "fp32": (torch.float32, torch.float32, None),
    "amp_bf16": (torch.bfloat16, torch.float32, torch.bfloat16),
    "amp_fp16": (torch.float16, torch.float32, torch.float16),
    "fp16_faithful": (torch.float16, torch.float16, None),
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu; an unavailable explicit device is a user error."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"invalid device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DplbenchError(f"device {device!r} requested but CUDA is not available on this machine; "
                                "use run.device=cpu or run.device=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DplbenchError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                                "device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DplbenchError(f"device {device!r} requested but MPS is not available on this machine")
    return dev


def resolve_precision(mode: str | None, device: torch.device) -> Precision:
    """``auto``/None -> fp32 on CPU, amp_bf16 on CUDA; anything else must be one of PRECISION_MODES."""
    if mode is None or mode == "auto":
        mode = "amp_bf16" if device.type == "cuda" else "fp32"
    if mode not in _MODES:
        raise ConfigError(unknown_choice_message("precision", mode, (*PRECISION_MODES, "auto")))
    return Precision(mode, *_MODES[mode])


def cast_model(model: nn.Module, precision: Precision) -> None:
    """Cast the frozen matmul weights in place and make every LayerNorm compute in fp32."""
    if precision.weight_dtype == torch.float32:
        return
    from open_clip.model import convert_weights_to_lp
    from open_clip.transformer import LayerNorm, LayerNormFp32

    convert_weights_to_lp(model, dtype=precision.weight_dtype)
    for module in model.modules():
        # open_clip's plain LayerNorm normalises in the input dtype; OpenAI's fp16 model normalised in fp32
        # with fp32 affine parameters, which is exactly open_clip's LayerNormFp32 (same parameters).
        if type(module) in (LayerNorm, nn.LayerNorm):
            module.__class__ = LayerNormFp32


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (a no-op context in fp32 and fp16_faithful)."""
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.autocast_dtype)

