"""The run's :class:`accelerate.Accelerator`, and FSDP on CPU.

Accelerate (1.16) enables FSDP only on accelerator devices: a CPU launch of an FSDP config
(``distributed_type: FSDP``, ``use_cpu: true``, and ``ACCELERATE_USE_CPU=1``, which its FSDP
launcher does not set itself) comes up as ``MULTI_CPU``, i.e. DDP over gloo. torch's FSDP2
(``fully_shard``) runs on CPU over gloo, so :func:`make_accelerator` switches such a launch to
FSDP with the plugin its environment describes (``tests/test_fsdp.py`` runs it). Without
``ACCELERATE_USE_CPU`` on a machine without GPUs every process would train alone, each
believing it is the only one: that is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from ..errors import InputError
from .checkpointing import project_configuration
from .config import TrainConfig


def make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    """The Accelerator of a run: gradient accumulation, mixed precision, TensorBoard logs and
    checkpoints (naming, ``--keep``) under ``run_dir``; DDP's unused-parameter search on (a
    family's heads may sit out a batch); FSDP on CPU when the launch asks for it.

    Raises:
        InputError: more processes launched than Accelerate sees (a CPU launch without
            ``ACCELERATE_USE_CPU=1``), or an FSDP1 config on CPU.
    """
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision, log_with="tensorboard",
        project_config=project_configuration(run_dir, keep=cfg.keep),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        raise InputError(f"{launched} processes were launched but Accelerate sees {accelerator.num_processes}: "
                         "on CPU, set ACCELERATE_USE_CPU=1 (accelerate launch's FSDP launcher does not)")
    if accelerator.distributed_type == DistributedType.MULTI_CPU and _env_flag("ACCELERATE_USE_FSDP"):
        _fsdp_on_cpu(accelerator)
    return accelerator


def _fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Turn a MULTI_CPU state that an FSDP launch asked for into FSDP (FSDP2 over gloo)."""
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment
    if plugin.fsdp_version != 2:
        raise InputError("FSDP on CPU runs torch's FSDP2: set fsdp_version: 2 in the accelerate config")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # Both shared states: every AcceleratorState() re-reads PartialState's distributed type.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


__all__ = ["make_accelerator"]
