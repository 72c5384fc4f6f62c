"""Where the work runs: `auto` is the GPU when there is one, else the CPU."""

from __future__ import annotations

import torch

from pipeline.errors import UserError


def pick_device(requested: str) -> torch.device:
    """auto | cpu | cuda (or cuda:N) -> a device that exists here."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested} requested but no CUDA device is available")
    return torch.device(requested)
