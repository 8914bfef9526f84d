"""FSDP: a 2-process CPU run (FSDP2 over gloo) through ``accelerate launch`` on the micro config."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from launching import free_port, launch

import pixellm
from pixellm.train.checkpointing import checkpoint_dir
from pixellm.train.main import main as train_main

CONFIG = Path(__file__).parent / "accelerate_fsdp_cpu.yaml"


def fsdp_args(run, shapes, cfg, *extra):
    return ["--model", str(cfg), "--out", str(run), "--shapes-root", str(shapes), "--steps", "4",
            "--batch-size", "2", "--warmup", "2", "--lr", "3e-3", "--save-every", "2", "--eval-split", "",
            "--no-progress", "--threads", "1", "--seed", "7", *extra]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in json.loads((run / "history.json").read_text())}


@pytest.mark.slow
def test_two_cpu_processes_under_fsdp(tmp_path, shapes, micro_cfg):
    run = tmp_path / "fsdp"
    # accelerate launch's FSDP launcher does not pass the config's use_cpu on: launch's environment does
    launcher = ["accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "2",
                "--main_process_port", str(free_port())]
    rc, err = launch(launcher, fsdp_args(run, shapes, micro_cfg))
    assert rc == 0, err[-3000:]
    two = losses(run)
    assert list(two) == [1, 2, 3, 4] and all(math.isfinite(v) for v in two.values())
    # sharded: Accelerate saved FSDP's distributed checkpoint (not DDP's one-file state)
    assert (checkpoint_dir(run, 4) / "pytorch_model_fsdp_0").is_dir()
    assert not (checkpoint_dir(run, 4) / "model.safetensors").exists()
    assert json.loads((checkpoint_dir(run, 4) / "trainer.json").read_text())["step"] == 4
    # the final model holds the full weights FSDP gathered, and loads as any checkpoint does
    pred = pixellm.load_predictor(run / "final")
    assert isinstance(pred, pixellm.PixelLMPredictor) and pred.model.config.name == "pixellm-micro-test"
    assert json.loads((run / "final" / "train_config.json").read_text())["batch_size"] == 2
    # one process with the whole global batch (2 x 2 = 4) takes the same steps
    one = tmp_path / "one"
    assert train_main(fsdp_args(one, shapes, micro_cfg, "--batch-size", "4")) == 0
    for step, loss in losses(one).items():
        assert two[step] == pytest.approx(loss, rel=1e-4), (step, two[step], loss)
