"""Data-parallel training: 2 CPU processes (gloo), straight through or stopped and resumed, end where one
process with the same global batch does."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.conftest import TINY_OVERRIDES

STEPS = ["--set", "train.steps=8", "--set", "train.eval_interval=4", "--set", "train.checkpoint_interval=4"]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "sparsecircuits"]


def run(args, data_dir, out, extra=()):
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    # gloo on CPU, also where CUDA is present (a GPU machine may have fewer devices than processes)
    cmd = args + ["train", "--config", "tiny", "--data", str(data_dir), "--out", str(out), "--set", "train.device=cpu"] + sets + STEPS
    if "--resume" in extra:
        cmd = args + ["train", "--out", str(out), "--resume"]
    cmd += [e for e in extra if e != "--resume"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_two_gloo_processes_match_one_process(tmp_path, data_dir):
    run([sys.executable, "-m", "sparsecircuits"], data_dir, tmp_path / "single")
    run(TORCHRUN, data_dir, tmp_path / "ddp")
    run(TORCHRUN, data_dir, tmp_path / "resumed", ["--stop-after", "5"])
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["step"] == 5
    run(TORCHRUN, data_dir, tmp_path / "resumed", ["--resume"])
    single = load_file(str(tmp_path / "single" / "model.safetensors"))
    for run_name in ("ddp", "resumed"):  # stopped at step 5 under torchrun and resumed there: the same end
        ddp = load_file(str(tmp_path / run_name / "model.safetensors"))
        for name in single:
            torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-6, msg=f"{run_name} {name}")
    # Rank 0 alone wrote the run directory: one metrics log, one checkpoint.
    steps = [line for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in line]
    assert len(steps) == 2 and (tmp_path / "ddp" / "checkpoint" / "state.json").is_file()
