"""Device and precision choices shared by training and evaluation."""

from __future__ import annotations

import contextlib

import torch


class DeviceError(RuntimeError):
    """The configuration asks for a device this machine does not have."""


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """auto = cuda when visible, else cpu; an explicit cuda on a machine without one is an error
    (``setting`` names the config key in the message)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting}=cuda but no CUDA device is visible on this machine (use {setting}=auto or cpu)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto = bf16 autocast on CUDA, fp32 on CPU (CPU bf16 matmuls are slower than fp32 on most CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; weights and optimizer state stay fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
