"""Host-to-device copies made once per tensor: from pinned memory and asynchronous on CUDA."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; a CPU tensor bound for CUDA goes through pinned memory with non_blocking=True.

    The copy is ordered on the current stream, so later work on that stream sees the data; the
    caching host allocator keeps the pinned buffer alive until the copy has run.
    """
    device = torch.device(device)
    if tensor.device == device or (device.type == tensor.device.type == "cpu"):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
