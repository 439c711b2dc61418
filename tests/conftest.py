"""Shared fixtures: a small corpus copied from the standard library, prepared once, and tiny configs."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from sparsecircuits.config import Config, load_config
from sparsecircuits.data.prepare import prepare

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY_OVERRIDES = [
    "model.d_model=32", "model.n_layer=2", "model.ctx_len=32",
    "sparsity.l0_fraction=0.25", "sparsity.anneal_end=0.5",
    "train.steps=20", "train.batch_size=4", "train.eval_interval=10", "train.eval_batches=2",
    "train.log_interval=5", "train.checkpoint_interval=10",
]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for package in ("json", "email", "logging"):
        for path in sorted((STDLIB / package).glob("*.py")):
            shutil.copyfile(path, root / f"{package}_{path.name}")
    (root / "latin1.py").write_bytes(b"name = '\xe9t\xe9'\n")  # not UTF-8: skipped and counted
    shutil.copyfile(root / "json_decoder.py", root / "copy_of_decoder.py")  # an exact duplicate
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, corpus_dir) -> Path:
    out = tmp_path_factory.mktemp("data") / "prepared"
    prepare(out, corpus=[corpus_dir], vocab_size=320, val_fraction=0.1, show_progress=False)
    return out


@pytest.fixture
def tiny_config() -> Config:
    return load_config("tiny", TINY_OVERRIDES)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir) -> Path:
    from sparsecircuits.train.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_config("tiny", TINY_OVERRIDES), data_dir, run_dir, show_progress=False)
    return run_dir


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
