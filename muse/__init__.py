"""MUSE-format data: readers, the procedural shapes dataset, and the metrics
(docs/design.md, Metrics).

Exports are resolved lazily so that ``import pixellm.muse.records`` (or reading data) does not
import torch; ``MultiTargetIoU`` / ``ReferringIoU`` load torchmetrics on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetFormatError": "errors",
    "SkipReport": "errors",
    "Sample": "records",
    "SEG": "records",
    "template_answer": "records",
    "multi_question": "records",
    "MuseDataset": "muse_reader",
    "load_split": "muse_reader",
    "LvisInstances": "lvis_reader",
    "RefCocoDataset": "refcoco",
    "multi_referring": "refcoco",
    "GenConfig": "generate",
    "generate_dataset": "generate",
    "render_example": "generate",
    "MultiTargetIoU": "metrics",
    "ReferringIoU": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
