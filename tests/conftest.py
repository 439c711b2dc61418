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


@pytest.fixture(scope="session")
def task_run(tmp_path_factory):
    """A tiny model trained on text rich in one idiom (lambda vs def), and a JSONL task of that idiom:
    small enough to train in seconds, trained enough to do the task better than chance."""
    import json

    from sparsecircuits.train.trainer import train

    root = tmp_path_factory.mktemp("task_run")
    corpus = write_idiom_corpus(root / "corpus")
    prepare(root / "data", corpus=[corpus], vocab_size=300, show_progress=False)
    config = load_config("tiny", ["model.ctx_len=64", "train.steps=300", "train.batch_size=8", "train.keep_every=100",
                                  "optim.grad_clip=normalize", "optim.lr=0.01"])
    train(config, root / "data", root / "run", show_progress=False)
    task = root / "lambda.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in idiom_records("lambda", 200, 7)))
    return root / "run", task


@pytest.fixture(scope="session")
def circuit_dir(task_run, tmp_path_factory):
    """A circuit pruned (quickly) from the task model, with a target the model reaches."""
    from sparsecircuits.circuits.prune import PruneSettings, prune
    from sparsecircuits.tasks.records import pair_logits
    from sparsecircuits.model.gpt import SparseGPT
    from sparsecircuits.tasks.records import load_task, task_loss

    run, task = task_run
    model = SparseGPT.from_pretrained(run)
    full = float(task_loss(pair_logits(model, load_task(str(task), model.tokenizer, "test"))))
    assert full < 0.5, "the fixture model should do its task"
    out = tmp_path_factory.mktemp("circuits") / "lambda"
    prune(run, str(task), out, PruneSettings(target_loss=min(0.66, full + 0.2), steps=60, calibration_steps=8),
          show_progress=False)
    return out


def idiom_records(idiom: str, n_pairs: int, seed: int) -> list[dict]:
    """Paired records of an idiom a tiny model learns in a few hundred steps: "lambda" (':' after a
    lambda's argument, '(' after a def's name; the other kind defined above) or "while" (':' after
    `while True`, a newline after `return True`). The built-in tasks pose these contrasts in longer,
    more varied prompts, which a tiny model does not learn this fast; these keep the test suite quick.
    The lambda task is also answered by its prompts' length and by the first token of the line above
    (`tasks audit` flags both)."""
    import random

    from sparsecircuits.tasks.builtin import FUNCS, NAMES

    rng, records = random.Random(f"{idiom}:{seed}"), []
    for _ in range(n_pairs):
        f, g, x, y = rng.sample(NAMES + FUNCS, 4)
        if idiom == "lambda":
            records += [{"prompt": f"def {g}({y}):\n    return {y}\n{f} = lambda {x}", "correct": ":", "incorrect": "("},
                        {"prompt": f"{f} = lambda {x}: {x}\ndef {g}", "correct": "(", "incorrect": ":"}]
        else:
            head = f"def {g}({y}):\n    "
            records += [{"prompt": f"{head}while True", "correct": ":", "incorrect": "\n"},
                        {"prompt": f"{head}return True", "correct": "\n", "incorrect": ":"}]
    return records


def write_idiom_corpus(root: Path) -> Path:
    """Text rich in the two idioms of `idiom_records` that a tiny model learns fast."""
    import random

    root.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        records = idiom_records("lambda", 30, 100 + i) + idiom_records("while", 30, 200 + i)
        random.Random(i).shuffle(records)
        (root / f"f{i}.py").write_text("\n\n".join(r["prompt"] + r["correct"] for r in records) + "\n")
    return root
