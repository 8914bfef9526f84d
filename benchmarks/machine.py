"""What a benchmark ran on, for its report's provenance."""
from __future__ import annotations

import platform
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and torch's thread count (CPU speed depends on both)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")]
    return f"{models[0] if models else platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
