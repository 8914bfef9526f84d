"""Atomic training checkpoints on top of ``Accelerator.save_state``.

A checkpoint is written to ``run/.tmp-step-N`` and renamed to ``run/step-N`` only when it is
complete (rename is atomic on POSIX), with ``trainer.json`` (step, data position) written last
inside it. A kill mid-write leaves only a ``.tmp-*`` directory, which resume ignores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

_STEP = re.compile(r"^step-(\d+)$")
STATE_NAME = "trainer.json"


def save_checkpoint(accelerator, run_dir: Path, *, step: int, sample_pos: int, keep: int = 2,
                    total_steps: int | None = None) -> Path:
    """Save model/optimizer/scheduler/RNG + data position for ``step``; keep the last ``keep``.

    ``total_steps``, the run's length (which ``--time-budget`` may have lowered), is recorded too.
    """
    final = run_dir / f"step-{step}"
    tmp = run_dir / f".tmp-step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {"step": step, "sample_pos": sample_pos,
                 **({"total_steps": total_steps} if total_steps is not None else {})}
        (tmp / STATE_NAME).write_text(json.dumps(state))
        with open(tmp / STATE_NAME) as f:
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir`` ordered by step."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := _STEP.match(p.name)) and (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def read_state(ckpt: Path) -> dict:
    """{"step": int, "sample_pos": int[, "total_steps": int]} of a checkpoint."""
    return json.loads((ckpt / STATE_NAME).read_text())
