"""TF32 for fp32 matmuls and convolutions on CUDA, through whichever API this torch has.

torch 2.9 replaced `torch.backends.cuda.matmul.allow_tf32` / `torch.backends.cudnn.allow_tf32`
with per-backend `fp32_precision` settings ("tf32" or "ieee") and deprecated the old flags
(setting them warns, and mixing the two APIs is an error in some versions). The new setting
is used wherever it exists; the legacy flags only on an older torch.
"""

from __future__ import annotations

import torch


def _set(owner, value: str, legacy_owner, legacy_name: str, enabled: bool) -> str:
    if owner is not None and hasattr(owner, "fp32_precision"):
        owner.fp32_precision = value
        return "fp32_precision"
    setattr(legacy_owner, legacy_name, enabled)
    return legacy_name


def set_tf32(enabled: bool) -> tuple[str, str]:
    """Allow (or forbid) TF32 in CUDA fp32 matmuls and cuDNN convolutions.

    Returns the API used for each, e.g. ('fp32_precision', 'fp32_precision') or
    ('allow_tf32', 'allow_tf32') on a torch without the new setting."""
    value = "tf32" if enabled else "ieee"
    matmul = _set(torch.backends.cuda.matmul, value, torch.backends.cuda.matmul, "allow_tf32", enabled)
    conv = _set(getattr(torch.backends.cudnn, "conv", None), value, torch.backends.cudnn, "allow_tf32", enabled)
    return matmul, conv
