"""Training checkpoints: Accelerate's ``save_state``, its naming and its rotation.

The run's Accelerator is built with :func:`project_configuration`: ``save_state()`` writes
``RUN/checkpoints/checkpoint_<iteration>`` and first deletes the oldest ones beyond ``keep``
(``ProjectConfiguration.total_limit``, which Accelerate applies only with its automatic
naming). The iteration is set to the step before each save, so ``checkpoint_N`` holds the
state after step N and the rotation goes by step. Inside it, after Accelerate's files,
``train_config.json`` (the run's :class:`~pixellm.train.config.TrainConfig`) and then
``trainer.json`` (step, data position, run length) are written: a directory without
``trainer.json`` (a kill mid-write) is incomplete, resume skips it and the next run removes it.
The rotation deletes before it writes, so with ``keep`` K a kill mid-write leaves K - 1
complete checkpoints (none with ``--keep 1``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from accelerate.utils import ProjectConfiguration

CHECKPOINTS = "checkpoints"  # Accelerate's folder under the project (run) directory
_NAME = re.compile(r"^checkpoint_(\d+)$")
STATE_NAME = "trainer.json"


def project_configuration(run_dir: Path, *, keep: int) -> ProjectConfiguration:
    """Accelerate's project settings of a run: its directory (checkpoints, TensorBoard logs),
    automatic checkpoint naming, and at most ``keep`` checkpoints."""
    return ProjectConfiguration(project_dir=str(run_dir), automatic_checkpoint_naming=True, total_limit=keep)


def save_checkpoint(accelerator, run_dir: Path, *, step: int, sample_pos: int, total_steps: int | None = None,
                    config=None) -> Path:
    """Save model/optimizer/scheduler/RNG (``accelerator.save_state``), then ``config``'s
    ``train_config.json`` and the data position; returns the checkpoint directory.

    ``total_steps``, the run's length (which ``--time-budget`` may have lowered), is recorded too.
    """
    accelerator.project_configuration.iteration = step  # checkpoint_<step>; the rotation sorts by it
    accelerator.save_state()
    path = checkpoint_dir(run_dir, step)
    if accelerator.is_main_process:
        if config is not None:
            config.save(path)
        state = {"step": step, "sample_pos": sample_pos,
                 **({"total_steps": total_steps} if total_steps is not None else {})}
        (path / STATE_NAME).write_text(json.dumps(state))  # last: the mark of a complete checkpoint
        with open(path / STATE_NAME) as f:
            os.fsync(f.fileno())
    accelerator.wait_for_everyone()
    return path


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes."""
    return Path(run_dir) / CHECKPOINTS / f"checkpoint_{step}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir`` ordered by step."""
    return [p for p in _all(run_dir) if (p / STATE_NAME).is_file()]


def clean_checkpoints(accelerator, run_dir: Path, *, resuming: bool) -> list[Path]:
    """Before a run saves anything: remove incomplete checkpoints (a kill mid-write), and, when
    not ``resuming``, an earlier run's (Accelerate refuses to write over one, and its rotation
    would count them). Main process; every process waits. Returns what was removed."""
    gone = [p for p in _all(run_dir) if not resuming or not (p / STATE_NAME).is_file()]
    if accelerator.is_main_process:
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        if gone and not resuming:
            accelerator.print(f"removed {len(gone)} checkpoint(s) of an earlier run in {run_dir} "
                              "(--resume continues one)")
    accelerator.wait_for_everyone()
    return gone


def _all(run_dir: Path) -> list[Path]:
    """Checkpoint directories (complete or not) ordered by step."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def read_state(ckpt: Path) -> dict:
    """{"step": int, "sample_pos": int[, "total_steps": int]} of a checkpoint."""
    return json.loads((ckpt / STATE_NAME).read_text())
