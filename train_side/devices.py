"""The torch device of a ``--device`` option, for training and inference alike."""

from __future__ import annotations

import torch

from featurestore.errors import UserError


class DeviceError(UserError, ValueError):
    """A ``--device`` this machine cannot give; the message says which to use."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown --device {device!r}; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu or auto")
    return resolved
