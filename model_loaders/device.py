"""Device and dtype choice, shared by every torch backend."""

from __future__ import annotations

import torch

from model_loaders.protocol import ModelLoadError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must be available here."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(
            f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"--device {device}: no CUDA GPU is visible to torch on this machine"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(
            f"--device {device}: Apple MPS is not available on this machine"
        )
    return resolved


def runs_on_cpu(device: str) -> bool:
    """Whether a model asked to run on ``device`` runs on the CPU (False if invalid)."""
    try:
        return resolve_device(device).type == "cpu"
    except ModelLoadError:
        return False


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPUs that support it, else float16 on GPU, float32 on
    CPU/MPS."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
