"""``pixellm-ablate``: each variant of a micro config trains and is scored; the report is written."""
from __future__ import annotations

import json

import pytest
import torch

from pixellm.benchmarks.ablate import main, variant_configs
from pixellm.config import get_model_config
from pixellm.errors import ConfigError

TRAIN = "--batch-size 4 --warmup 1 --lr 3e-3 --threads 1 --seed 7"


def run(tmp_path, family, cfg, shapes, splits):
    argv = ["--family", family, "--base", str(cfg), "--runs", str(tmp_path / "runs"), "--data", str(shapes),
            "--splits", *splits, "--time-budget", "0", "--steps", "2", "--train-args", TRAIN,
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    version = torch.__version__.split("+")[0]
    return json.loads((tmp_path / "out" / f"ablation_{family}_cpu_float32_torch{version}.json").read_text())


def test_lts_with_and_without_the_prior(tmp_path, shapes, micro_lts_cfg):
    report = run(tmp_path, "lts", micro_lts_cfg, shapes, ["multi_ref"])
    rows = report["rows"]
    assert [r["variant"] for r in rows] == ["lts-micro-test-use-prior-true", "lts-micro-test-use-prior-false"]
    assert all(r["steps"] == 2 and 0 <= r["aligned gIoU"] <= 1 and r["expressions"] > 0 for r in rows)
    no_prior = json.loads((tmp_path / "runs" / rows[1]["variant"] / "final" / "config.json").read_text())
    assert no_prior["use_prior"] is False
    md = (tmp_path / "out").glob("*.md")
    assert "| lts-micro-test-use-prior-false | data | multi_ref | 2 |" in next(md).read_text()


def test_lseg_regularisation_depths(tmp_path, shapes, micro_lseg_cfg):
    report = run(tmp_path, "lseg", micro_lseg_cfg, shapes, ["val"])
    depths = [json.loads((tmp_path / "runs" / r["variant"] / "final" / "config.json").read_text())["reg_blocks"]
              for r in report["rows"]]
    assert depths == [0, 1, 2, 4]
    assert all(0 <= r["seen"] <= 1 and 0 <= r["seen colour"] <= 1 for r in report["rows"])


def test_base_must_be_of_the_family(tmp_path):
    with pytest.raises(ConfigError, match="not a lts config"):
        variant_configs("lts", tmp_path, "lseg-tiny")
    assert get_model_config("lts-tiny").use_prior  # the default base is unchanged
