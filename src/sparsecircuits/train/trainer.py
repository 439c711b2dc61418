"""The training loop: AdamW, RMS gradient clipping, the sharkfin LR, weight top-k after every step."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config, OptimConfig
from ..data.dataset import TokenData
from ..errors import SparseCircuitsError
from ..model.gpt import SparseGPT
from ..model.sparsity import apply_weight_topk, l0_fraction_at, sparse_parameters
from ..io import atomic_save_tensors, atomic_write_text
from .checkpoint import CHECKPOINT, MODEL_FILE, load_checkpoint, save_checkpoint
from .distributed import Distributed


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SparseCircuitsError("train.device is 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, total_steps: int, l0_fraction: float, optim: OptimConfig) -> float:
    """Linear warmup, linear decay to zero, times 1/sqrt(current L0 fraction)."""
    warmup = max(1, round(optim.warmup_fraction * total_steps))
    if step < warmup:
        shape = (step + 1) / warmup
    else:
        shape = max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return optim.lr * shape / math.sqrt(l0_fraction)


def make_optimizer(model: SparseGPT, optim: OptimConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
    )


@torch.no_grad()
def scale_gradients(model: torch.nn.Module, optim: OptimConfig) -> float:
    """Clip (or normalise) the global gradient RMS; returns the RMS before scaling."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    count = sum(g.numel() for g in grads)
    rms = math.sqrt(float(sum(g.float().pow(2).sum() for g in grads)) / max(count, 1))
    if optim.grad_clip == "normalize" or (optim.grad_clip == "clip" and rms > optim.grad_rms):
        factor = optim.grad_rms / max(rms, 1e-12)
        for g in grads:
            g.mul_(factor)
    return rms


@torch.no_grad()
def evaluate(model: SparseGPT, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
             device: torch.device) -> dict[str, float]:
    """Mean loss over fixed windows, and how many MLP neurons never fired on them."""
    was_training = model.training
    model.eval()
    post_act_sites = [s for s in model.node_sites if s.endswith("mlp.post_act")]
    fired = {s: torch.zeros(model.node_sites[s], dtype=torch.bool, device=device) for s in post_act_sites}

    def mark(x: torch.Tensor, site: str) -> None:
        fired[site] |= (x != 0).flatten(0, -2).any(0)

    total, count = 0.0, 0
    with model.hooks({s: mark for s in post_act_sites}):
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start : start + batch_size].to(device), targets[start : start + batch_size].to(device)
            with autocast(device):
                total += float(model.loss(x, y)) * y.numel()
            count += y.numel()
    model.train(was_training)
    return {"val_loss": total / count, "dead_neurons": int(sum((~f).sum() for f in fired.values()))}


def training_step(model: SparseGPT, optimizer: torch.optim.Optimizer, sparse: dict[str, torch.nn.Parameter],
                  x: torch.Tensor, y: torch.Tensor, lr: float, l0_fraction: float, config: Config,
                  group: Distributed = Distributed()) -> tuple[torch.Tensor, float]:
    """One full step: forward, backward, gradient averaging across ranks, gradient RMS clip, AdamW,
    weight top-k. Returns (loss on this rank's rows, grad RMS)."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    with autocast(x.device):
        loss = model.loss(x, y)
    loss.backward()
    group.average_gradients(model)
    grad_rms = scale_gradients(model, config.optim)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    apply_weight_topk(sparse, l0_fraction, config.sparsity.min_nonzero_per_neuron)
    return loss.detach(), grad_rms


def _prepare_run_dir(config: Config, data: TokenData, run_dir: Path, resume: bool) -> None:
    config_json = json.dumps(config.to_dict(), indent=1)
    if resume:
        saved = run_dir / "config.json"
        if not saved.is_file():
            raise SparseCircuitsError(f"cannot resume: {run_dir} is not a run directory (no config.json)")
        if json.loads(saved.read_text()) != config.to_dict():
            raise SparseCircuitsError(
                f"cannot resume {run_dir} with a different config: drop --config/--set to use the run's own, or train into a new --out"
            )
        run_info = json.loads((run_dir / "run.json").read_text())
        if run_info["tokenizer_sha256"] != data.manifest["tokenizer_sha256"]:
            raise SparseCircuitsError(f"cannot resume {run_dir} on different data: its tokenizer differs from {data.directory}'s")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SparseCircuitsError(f"{run_dir} already exists and is not empty: pass --resume to continue it, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data.tokenizer_path, run_dir / "tokenizer.json")
    atomic_write_text(run_dir / "run.json", json.dumps({
        "data": str(data.directory.resolve()),
        "tokenizer_sha256": data.manifest["tokenizer_sha256"],
        "config_hash": config.hash(),
    }, indent=1))
    atomic_write_text(run_dir / "config.json", config_json)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint so the log reads as one run."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(config: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False,
          show_progress: bool = True, stop_after: int | None = None, stop_at_val_loss: float | None = None) -> Path:
    """Train a model into `run_dir`. `stop_after` ends the run early at that step with a checkpoint
    (as Ctrl-C does), for tests of --resume. `stop_at_val_loss` finishes the run at the first
    evaluation whose validation loss is at or under it (to match another model's loss)."""
    data = TokenData(data_dir)
    run_dir = Path(run_dir)
    model_cfg, train_cfg = config.model, config.train
    if model_cfg.vocab_size == 0:
        model_cfg.vocab_size = data.vocab_size
    elif model_cfg.vocab_size != data.vocab_size:
        raise SparseCircuitsError(
            f"model.vocab_size is {model_cfg.vocab_size} but the tokenizer of {data.directory} has {data.vocab_size} tokens:"
            " set model.vocab_size=0 to take it from the tokenizer, or prepare data with that --vocab-size"
        )
    data.check_context(model_cfg.ctx_len)
    group = Distributed.from_environment()
    if train_cfg.batch_size % group.world_size:
        raise SparseCircuitsError(f"train.batch_size {train_cfg.batch_size} does not split over {group.world_size} processes:"
                                  " make it a multiple of --nproc_per_node")
    device = resolve_device(train_cfg.device)
    if device.type == "cuda" and group.active:
        device = torch.device("cuda", group.local_rank)
    if group.is_main:  # only rank 0 writes the run directory; the others wait for it
        _prepare_run_dir(config, data, run_dir, resume)
    group.barrier()
    show_progress = show_progress and group.is_main

    torch.manual_seed(train_cfg.seed)
    model = SparseGPT(model_cfg).to(device)
    optimizer = make_optimizer(model, config.optim)
    sparse = sparse_parameters(model, config.sparsity)
    start = 0
    if resume:
        start = load_checkpoint(run_dir, model, optimizer)["step"]
        _truncate_metrics(run_dir / "metrics.jsonl", start)
    val_inputs, val_targets = data.eval_windows("val", model_cfg.ctx_len, train_cfg.eval_batches * train_cfg.batch_size * model_cfg.ctx_len)
    metrics = open(run_dir / "metrics.jsonl" if group.is_main else os.devnull, "a")
    tokens_per_step = train_cfg.batch_size * model_cfg.ctx_len

    def log(record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    def checkpoint(step: int) -> None:
        if group.is_main:
            save_checkpoint(run_dir, model, optimizer, {"step": step, "config_hash": config.hash()})

    def eval_record(step: int, l0: float) -> dict:
        record = {"step": step, "tokens": step * tokens_per_step, "l0_fraction": l0,
                  **evaluate(model, val_inputs, val_targets, train_cfg.batch_size, device),
                  "nonzeros": {name: int(p.count_nonzero()) for name, p in sparse.items()}}
        log(record)
        return record

    interrupted = _StopOnInterrupt()
    bar = tqdm(total=train_cfg.steps, initial=start, desc="train", unit="step", disable=not show_progress,
               dynamic_ncols=True, file=sys.stderr)
    step = start
    model.train()
    last_time, last_step = time.perf_counter(), start
    with interrupted, bar, metrics:
        while step < train_cfg.steps:
            l0 = l0_fraction_at(step, train_cfg.steps, config.sparsity)
            lr = lr_at(step, train_cfg.steps, l0, config.optim)
            x, y = (t.to(device) for t in data.batch("train", train_cfg.batch_size, model_cfg.ctx_len, train_cfg.seed, step,
                                                    group.rank, group.world_size))  # this rank's rows of the global batch
            loss, grad_rms = training_step(model, optimizer, sparse, x, y, lr, l0, config, group)
            step += 1
            bar.update(1)
            if step % train_cfg.log_interval == 0 or step == train_cfg.steps:
                now = time.perf_counter()
                tokens_per_s = (step - last_step) * tokens_per_step / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                log({"step": step, "tokens": step * tokens_per_step, "train_loss": float(loss), "lr": lr,
                     "l0_fraction": l0, "grad_rms": grad_rms, "tokens_per_s": tokens_per_s})
                bar.set_postfix(loss=f"{float(loss):.3f}", tok_s=f"{tokens_per_s:,.0f}", l0=f"{l0:.4f}")
            matched = False
            if (step % train_cfg.eval_interval == 0 or step == train_cfg.steps) and group.is_main:
                record = eval_record(step, l0)
                if show_progress:
                    bar.write(f"step {step}: val_loss {record['val_loss']:.4f}, dead neurons {record['dead_neurons']}",
                              file=sys.stderr)
                matched = stop_at_val_loss is not None and record["val_loss"] <= stop_at_val_loss
                if matched:
                    log({"step": step, "stopped": f"validation loss reached {stop_at_val_loss:.4f}"})
            if group.any(matched):
                break
            if step % train_cfg.checkpoint_interval == 0 and step < train_cfg.steps:
                checkpoint(step)
            interrupted.requested = group.any(interrupted.requested)
            if interrupted.requested or (stop_after is not None and step >= stop_after and step < train_cfg.steps):
                checkpoint(step)
                if interrupted.requested:
                    if group.is_main:
                        print(f"interrupted at step {step}: checkpoint written to {run_dir / CHECKPOINT};"
                              " continue with --resume", file=sys.stderr)
                    raise KeyboardInterrupt
                return run_dir
    checkpoint(step)
    if group.is_main:
        atomic_save_tensors(run_dir / MODEL_FILE, model.state_dict(), metadata={"config_hash": config.hash()})
    group.barrier()
    return run_dir


def train_or_continue(config: Config, data_dir: str | Path, run_dir: str | Path, **kwargs) -> Path:
    """For pipelines that own their run directories (demo, sweep): nothing if the run finished,
    --resume if it has a checkpoint, and a fresh start if it was stopped before its first one."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file():
        return run_dir
    resume = (run_dir / CHECKPOINT / "state.json").is_file()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    return train(config, data_dir, run_dir, resume=resume, **kwargs)


class _StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop at the end of the current step (so the checkpoint
    is consistent); a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
