"""The training loop: AdamW, RMS gradient clipping, the sharkfin LR, weight top-k after every step."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config, OptimConfig
from ..data.dataset import TokenData
from ..errors import SparseCircuitsError
from ..schemas import read_json
from ..model.gpt import SparseGPT
from ..model.sparsity import apply_weight_topk, check_sparsity_budget, l0_fraction_at, sparse_parameters
from ..io import atomic_save_tensors, atomic_write_text, check_output_dir, directory_lock, staged_directory, write_marker
from ..bridges.bridge import BRIDGES_FILE, BridgedObjective, bridged_dense_run, check_bridgeable, dense_run_record
from ..rundir import (CHECKPOINT, CONFIG_FILE, KEPT_INFO, METRICS_FILE, MODEL_FILE, RUN_ENTRIES, RUN_INFO_FILE, TOKENIZER_FILE, Run,
                      file_sha256, kept_dir, read_metrics, resolve_device, read_run_config, read_run_info, run_info,
                      write_model)
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import Distributed
from .runtime import StopOnInterrupt, TrainingInterrupted, check_memory, keep_freed_memory


def autocast(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on CUDA; full precision on CPU unless `cpu_bf16` (`train.cpu_bf16`)."""
    if device.type == "cuda" or cpu_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
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


class TrainingDiverged(SparseCircuitsError):
    """The loss or gradient became NaN or infinite."""


def model_objective(model: torch.nn.Module, config: Config):
    """The plain training loss: `model.loss`, through torch.compile when `train.compile` is set."""
    return torch.compile(model.loss) if config.train.compile else model.loss


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sparse: dict[str, torch.nn.Parameter],
                  x: torch.Tensor, y: torch.Tensor, lr: float, l0_fraction: float, config: Config,
                  group: Distributed = Distributed(), objective=None) -> tuple[torch.Tensor, float]:
    """One full step: forward, backward, gradient averaging across ranks, gradient RMS clip, AdamW,
    weight top-k. `model` holds every trained weight (a SparseGPT, or with bridges a module holding
    it and them); `objective(x, y)` is the loss (default `model.loss`). Returns (loss on this rank's
    rows, grad RMS)."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    with autocast(x.device, config.train.cpu_bf16):
        loss = (objective or model.loss)(x, y)
    loss.backward()
    group.average_gradients(model)
    grad_rms = scale_gradients(model, config.optim)
    if not math.isfinite(grad_rms):  # checked before the update, so the weights stay finite
        raise TrainingDiverged(f"the loss ({float(loss.detach()):.4g}) or its gradient became non-finite")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    apply_weight_topk(sparse, l0_fraction, config.sparsity.min_nonzero_per_neuron, config.sparsity.min_nonzero_on)
    return loss.detach(), grad_rms


def check_new_run_dir(run_dir: Path, force: bool, inputs=()) -> None:
    """A fresh run may go into a missing or empty folder, or (with --force) a run directory; never
    into, around or over what it reads (`inputs`: the data, the dense run, the run it starts from)."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise SparseCircuitsError(f"{run_dir} already exists and is not empty: pass --resume to continue it,"
                                  " --force to start it again, or choose another --out")
    check_output_dir(run_dir, "train", force, replaces=RUN_ENTRIES, inputs=inputs)


def _checked_init_run(init_from: str | Path, model_cfg, data: TokenData, resume: bool) -> Run:
    """The run whose weights a new run starts from: another run, same model config, same tokenizer."""
    if resume:
        raise SparseCircuitsError("--init starts a new run from another run's weights; a resumed run continues from its"
                                  " own checkpoint: drop --init")
    init_run = Run.open(Path(init_from).resolve())
    init_run.model()  # every check a loaded run gets, each with its own message
    ours, theirs = dataclasses.asdict(model_cfg), dataclasses.asdict(init_run.config.model)
    differ = [key for key in ours if theirs.get(key) != ours[key]]
    if differ:
        raise SparseCircuitsError(f"--init {init_from}: its model differs from the config's in model.{', model.'.join(differ)}:"
                                  " give the config the run was trained with")
    if init_run.info["tokenizer_sha256"] != data.manifest["tokenizer_sha256"]:
        raise SparseCircuitsError(f"--init {init_from} was trained with another tokenizer than {data.directory}'s:"
                                  " give --data that run's own data directory")
    return init_run


def _prepare_run_dir(config: Config, data: TokenData, run_dir: Path, resume: bool, force: bool,
                     dense_run: Run | None, init_from: Run | None = None) -> None:
    config_json = json.dumps(config.to_dict(), indent=1)
    if resume:
        saved = run_dir / CONFIG_FILE
        if not saved.is_file():
            raise SparseCircuitsError(f"cannot resume: {run_dir} is not a run directory (no config.json)")
        # read through Config so keys added since the run started compare as their defaults
        if Config.from_dict(read_json(saved, {}, "start the run again with --force"), origin=str(saved)).to_dict() != config.to_dict():
            raise SparseCircuitsError(
                f"cannot resume {run_dir} with a different config: drop --config/--set to use the run's own, or train into a new --out"
            )
        recorded = read_run_info(run_dir)
        if recorded["tokenizer_sha256"] != data.manifest["tokenizer_sha256"]:
            raise SparseCircuitsError(f"cannot resume {run_dir} on different data: its tokenizer differs from {data.directory}'s")
        return
    check_new_run_dir(run_dir, force, [("--data", data.directory)])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(run_dir, "train")
    shutil.copyfile(data.tokenizer_path, run_dir / TOKENIZER_FILE)
    extra = {"run_id": uuid.uuid4().hex}  # ties the models kept during training to this run
    if dense_run:
        extra["bridged_to"] = dense_run_record(run_dir, dense_run)
    if init_from is not None:
        extra["initialised_from"] = {"run": str(init_from.path), "model_sha256": init_from.weights_sha256}
    atomic_write_text(run_dir / RUN_INFO_FILE, run_info(run_dir, data.directory, data.manifest["tokenizer_sha256"], config, **extra))
    atomic_write_text(run_dir / CONFIG_FILE, config_json)


def summary_writer_class():
    """TensorBoard's SummaryWriter (train.tensorboard = true), or an error saying which package to
    install; `train` asks before the run directory is written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SparseCircuitsError("train.tensorboard = true needs the tensorboard package: pip install"
                                  " 'sparsecircuits[tensorboard]' (or tensorboard), or set it false") from None
    return SummaryWriter


def tensorboard_writer(run_dir: Path):
    """A SummaryWriter into RUN_DIR/tensorboard."""
    return summary_writer_class()(log_dir=str(run_dir / "tensorboard"))


def _truncate_metrics(path: Path, step: int, run_id: str | None) -> None:
    """On resume, drop records written after the checkpoint so the log reads as one run (checked to
    be this run's log: its first record names the run)."""
    if os.path.lexists(path):  # anything there but a file (a pipe, a folder) is refused by read_metrics
        records = read_metrics(path)
        logged = next((record["run_id"] for record in records if "run_id" in record), run_id)
        if logged != run_id:
            raise SparseCircuitsError(f"cannot resume {path.parent}: {path.name} is the log of another run (run id {logged},"
                                      f" run.json says {run_id}): the folder mixes two runs; start it again with --force")
        kept = [record for record in records if record["step"] <= step]
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def _data_for(run_dir: Path, resume: bool, dense_run: str | Path | None) -> Path | str:
    """The data a run trains on when none is given: on resume its own; bridged, the dense run's;
    otherwise the default corpus (prepared on first use)."""
    from ..data.dataset import ensure_default_data

    if resume and (run_dir / RUN_INFO_FILE).is_file():
        run = Run.open(run_dir)
        return run.data_dir() or run.info["data"]  # a missing folder is named by TokenData
    if dense_run is not None:
        data_dir = Run.open(dense_run).data_dir()
        if data_dir is None:
            raise SparseCircuitsError(f"the data directory the dense run {dense_run} was trained on is not where its run.json"
                                      " says: give --data (prepared with the dense run's tokenizer)")
        return data_dir
    return ensure_default_data()


def train(config: Config | None, data_dir: str | Path | None, run_dir: str | Path, resume: bool = False,
          show_progress: bool = True, stop_after: int | None = None, stop_at_val_loss: float | None = None,
          force: bool = False, dense_run: str | Path | None = None, init_from: str | Path | None = None,
          device: str | None = None) -> Path:
    """Train a model into `run_dir`. `config` None continues a run with its own (`resume`);
    `data_dir` None: the run's own data on resume, the dense run's when bridged, else the default
    corpus. `stop_after` ends the run early at that step with a checkpoint
    (as Ctrl-C does), for tests of --resume. `stop_at_val_loss` finishes the run at the first
    evaluation whose validation loss is at or under it (to match another model's loss). `force`
    starts again in a run directory that `train` made (never in any other folder). `dense_run`:
    train the sparse model with bridges to that frozen dense run (`bridges`); on resume, the one
    the run recorded. `init_from`: start from that run's trained weights (same model config and
    tokenizer) instead of a fresh initialisation, e.g. to bridge an existing sparse model. `device`: 'cpu',
    'cuda' or 'auto' instead of the config's train.device (a resumed run may change it).

    A loss or gradient that becomes NaN or infinite stops the run with an error; the last checkpoint
    (written only while every weight is finite) stays for inspection."""
    if resume and force:
        raise SparseCircuitsError("--resume continues a run and --force starts it again: give one of them")
    run_dir = Path(run_dir)
    if config is None:
        if not resume:
            raise SparseCircuitsError("give a config (e.g. --config small), or --resume to continue a run")
        config = read_run_config(run_dir)
    device = resolve_device(device, "--device") if device else resolve_device(config.train.device, "train.device")
    group = Distributed.from_environment(device)
    if not resume and group.is_main:  # before any work, the default data included
        check_new_run_dir(run_dir, force, [("--data", data_dir), ("--dense", dense_run), ("--init", init_from)])
    data = TokenData(data_dir if data_dir is not None else _data_for(run_dir, resume, dense_run))
    dense_run = bridged_dense_run(run_dir, data, dense_run, resume) if dense_run or resume else None
    if config.train.compile and dense_run:
        raise SparseCircuitsError("train.compile applies to plain training; bridged training runs eager: drop"
                                  " --set train.compile=true")
    model_cfg, train_cfg = config.model, config.train
    if model_cfg.vocab_size == 0:
        model_cfg.vocab_size = data.vocab_size
    elif model_cfg.vocab_size != data.vocab_size:
        raise SparseCircuitsError(
            f"model.vocab_size is {model_cfg.vocab_size} but the tokenizer of {data.directory} has {data.vocab_size} tokens:"
            " set model.vocab_size=0 to take it from the tokenizer, or prepare data with that --vocab-size"
        )
    data.check_context(model_cfg.ctx_len)
    if dense_run is not None:  # refused before the run directory is written
        check_bridgeable(dense_run.config.model, model_cfg)
    if train_cfg.tensorboard:
        summary_writer_class()
    if init_from is not None:
        init_from = _checked_init_run(init_from, model_cfg, data, resume)
    if train_cfg.batch_size % group.world_size:
        raise SparseCircuitsError(f"train.batch_size {train_cfg.batch_size} does not split over {group.world_size} processes:"
                                  " make it a multiple of --nproc_per_node")
    if device.type == "cuda" and group.active:
        device = torch.device("cuda", group.local_rank)
    check_memory(config, train_cfg.batch_size // group.world_size, device)
    with torch.device("meta"):  # shapes only: is the L0 budget large enough for the per-neuron minimum?
        check_sparsity_budget(SparseGPT(model_cfg), config.sparsity)
    # Only rank 0 writes (and locks) the run directory; the others wait for it.
    with directory_lock(run_dir) if group.is_main else contextlib.nullcontext():
        if group.is_main:
            _prepare_run_dir(config, data, run_dir, resume, force, dense_run, init_from)
        group.barrier()
        if config.train.keep_freed_memory and device.type == "cpu":
            keep_freed_memory()
        trainer = Trainer(config, data, run_dir, group, device, resume, dense_run, init_from)
        finished = trainer.run(show_progress and group.is_main, stop_after, stop_at_val_loss)
    group.close()
    return finished


class Trainer:
    """One training run in progress: the model (and bridges) with their optimizer, the step, the
    validation windows, the metrics log and checkpoints. `train()` makes one after its checks."""

    def __init__(self, config: Config, data: TokenData, run_dir: Path, group: Distributed, device: torch.device,
                 resume: bool = False, dense_run: Run | None = None, init_from: Run | None = None):
        self.config, self.data, self.run_dir, self.group, self.device = config, data, run_dir, group, device
        model_cfg, train_cfg = config.model, config.train
        torch.manual_seed(train_cfg.seed)
        self.model = SparseGPT(model_cfg).to(device)
        if init_from is not None and not resume:
            self.model.load_state_dict(init_from.model(device).state_dict())
        self.bridged = dense_run is not None
        if self.bridged:  # the bridges are made after the model, so its initial weights are a plain run's
            self.objective = BridgedObjective(self.model, dense_run.model(device), config.bridge)
            self.trained, self.extra = self.objective.trained, {BRIDGES_FILE: self.objective.bridges}
        else:
            self.trained, self.objective, self.extra = self.model, model_objective(self.model, config), {}
        self.optimizer = make_optimizer(self.trained, config.optim)
        self.sparse = sparse_parameters(self.model, config.sparsity)
        self.step, self.last_checkpoint = 0, None
        self.run_id = read_run_info(run_dir).get("run_id")
        if resume:
            self.step = self.last_checkpoint = load_checkpoint(run_dir, self.model, self.optimizer, self.extra,
                                                               config, self.run_id)["step"]
            if group.is_main:  # one writer of the log; models kept after the checkpoint are trained again, as the metrics are
                _truncate_metrics(run_dir / METRICS_FILE, self.step, self.run_id)
                for step in Run.open(run_dir).kept_steps():
                    if step > self.step:
                        shutil.rmtree(kept_dir(run_dir, step))
        self.val_inputs, self.val_targets = data.eval_windows(
            "val", model_cfg.ctx_len, train_cfg.eval_batches * train_cfg.batch_size * model_cfg.ctx_len)
        self.tokens_per_step = train_cfg.batch_size * model_cfg.ctx_len
        self.metrics = open(run_dir / METRICS_FILE if group.is_main else os.devnull, "a")
        self.tensorboard = tensorboard_writer(run_dir) if train_cfg.tensorboard and group.is_main else None
        self.resumed = resume

    def log(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.tensorboard is not None:  # every number of the record, nested ones under their group's name
            for key, value in record.items():
                for name, number in (value.items() if isinstance(value, dict) else [(None, value)]):
                    if isinstance(number, (int, float)) and not isinstance(number, bool) and key not in ("step", "tokens"):
                        self.tensorboard.add_scalar(f"{key}/{name}" if name else key, number, record["step"])
            self.tensorboard.flush()

    def diverged(self, step: int, why: str) -> TrainingDiverged:
        kept = (f"the checkpoint of step {self.last_checkpoint} in {self.run_dir / CHECKPOINT} is kept"
                if self.last_checkpoint else "no checkpoint was written")
        return TrainingDiverged(f"training diverged at step {step}: {why}; {kept}. Lower optim.lr (or model.init_std)"
                                f" and train again with --force")

    def train_step(self) -> tuple[torch.Tensor, float, float, float]:
        """One optimizer step on this rank's rows of the global batch: (loss, grad_rms, lr, l0)."""
        config, train_cfg = self.config, self.config.train
        l0 = l0_fraction_at(self.step, train_cfg.steps, config.sparsity)
        lr = lr_at(self.step, train_cfg.steps, l0, config.optim)
        x, y = (t.to(self.device) for t in self.data.batch("train", train_cfg.batch_size, config.model.ctx_len, train_cfg.seed,
                                                          self.step, self.group.rank, self.group.world_size))
        try:
            loss, grad_rms = training_step(self.trained, self.optimizer, self.sparse, x, y, lr, l0, config, self.group,
                                           self.objective)
        except TrainingDiverged as err:
            raise self.diverged(self.step + 1, str(err)) from None
        self.step += 1
        return loss, grad_rms, lr, l0

    def evaluate(self, l0: float) -> dict:
        """Validation loss and the nonzeros of every sparse matrix at this step, logged."""
        record = {"step": self.step, "tokens": self.step * self.tokens_per_step, "l0_fraction": l0,
                  **evaluate(self.model, self.val_inputs, self.val_targets, self.config.train.batch_size, self.device),
                  "nonzeros": {name: int(p.count_nonzero()) for name, p in self.sparse.items()}}
        self.log(record)
        return record

    def checkpoint(self) -> None:
        """Everything --resume needs, written only while every weight is finite."""
        if not all(bool(torch.isfinite(p).all()) for p in self.trained.parameters()):
            raise self.diverged(self.step, "a weight became non-finite")
        if self.group.is_main:
            save_checkpoint(self.run_dir, self.model, self.optimizer,
                            {"step": self.step, "config_hash": self.config.hash(),
                             "config": self.config.to_dict(), "run_id": self.run_id}, self.extra)
        self.last_checkpoint = self.step

    def keep(self, record: dict) -> None:
        """The model at this step in checkpoints/step_NNNNNN/, with its step, validation loss, L0,
        digest and the run's id (`Run.at_step` checks them)."""
        with staged_directory(kept_dir(self.run_dir, self.step)) as staging:
            atomic_save_tensors(staging / MODEL_FILE, self.model.state_dict(), metadata={"config_hash": self.config.hash()})
            info = {"step": self.step, "val_loss": record["val_loss"], "l0_fraction": record["l0_fraction"],
                    "weights_sha256": file_sha256(staging / MODEL_FILE), "config_hash": self.config.hash(), "run_id": self.run_id}
            atomic_write_text(staging / KEPT_INFO, json.dumps(info, indent=1))

    def finish(self) -> None:
        self.checkpoint()
        if self.group.is_main:
            for file_name, module in self.extra.items():  # bridges first: model.safetensors marks the run finished
                atomic_save_tensors(self.run_dir / file_name, module.state_dict(), metadata={"sites": json.dumps(module.sites)})
            write_model(self.run_dir, self.model.state_dict(), self.config)
        self.group.barrier()

    def run(self, show_progress: bool, stop_after: int | None = None, stop_at_val_loss: float | None = None) -> Path:
        """Train to the configured step count (or `stop_after`, or the first evaluation at or under
        `stop_at_val_loss`), logging, evaluating and checkpointing on the configured intervals."""
        train_cfg, group = self.config.train, self.group
        interrupted = StopOnInterrupt()
        bar = tqdm(total=train_cfg.steps, initial=self.step, desc="train", unit="step", disable=not show_progress,
                   dynamic_ncols=True, file=sys.stderr)
        self.model.train()
        last_time, last_step = time.perf_counter(), self.step
        with interrupted, bar, self.metrics, self.tensorboard or contextlib.nullcontext():
            if not self.resumed:  # the log names its run, so a log from another run is not continued
                self.log({"step": 0, "run_id": self.run_id})
            while self.step < train_cfg.steps:
                loss, grad_rms, lr, l0 = self.train_step()
                step = self.step
                bar.update(1)
                if step % train_cfg.log_interval == 0 or step == train_cfg.steps:
                    now = time.perf_counter()
                    tokens_per_s = (step - last_step) * self.tokens_per_step / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    self.log({"step": step, "tokens": step * self.tokens_per_step, "train_loss": float(loss), "lr": lr,
                              "l0_fraction": l0, "grad_rms": grad_rms, "tokens_per_s": tokens_per_s,
                              **({"bridge": self.objective.last_terms()} if self.bridged else {})})
                    bar.set_postfix(loss=f"{float(loss):.3f}", tok_s=f"{tokens_per_s:,.0f}", l0=f"{l0:.4f}")
                matched = False
                keep_now = train_cfg.keep_every > 0 and step % train_cfg.keep_every == 0
                if (step % train_cfg.eval_interval == 0 or step == train_cfg.steps or keep_now) and group.is_main:
                    record = self.evaluate(l0)
                    if keep_now:
                        self.keep(record)
                    if show_progress:
                        bar.write(f"step {step}: val_loss {record['val_loss']:.4f}, dead neurons {record['dead_neurons']}",
                                  file=sys.stderr)
                    matched = stop_at_val_loss is not None and record["val_loss"] <= stop_at_val_loss
                    if matched:
                        self.log({"step": step, "stopped": f"validation loss reached {stop_at_val_loss:.4f}"})
                if group.any(matched):
                    break
                if step % train_cfg.checkpoint_interval == 0 and step < train_cfg.steps:
                    self.checkpoint()
                interrupted.requested = group.any(interrupted.requested)
                if interrupted.requested or (stop_after is not None and step >= stop_after and step < train_cfg.steps):
                    self.checkpoint()
                    if interrupted.requested:
                        if group.is_main:
                            print(f"interrupted at step {step}: checkpoint written to {self.run_dir / CHECKPOINT};"
                                  " continue with --resume", file=sys.stderr)
                        raise TrainingInterrupted
                    return self.run_dir
        self.finish()
        return self.run_dir


def train_or_continue(config: Config, data_dir: str | Path, run_dir: str | Path, **kwargs) -> Path:
    """For pipelines that own their run directories (demo, sweep): nothing if the run finished,
    --resume if it has a checkpoint, and a fresh start if it was stopped before its first one."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file():
        return run_dir
    resume = (run_dir / CHECKPOINT / "state.json").is_file()
    if resume:
        kwargs.pop("init_from", None)  # the checkpoint holds the weights now
    return train(config, data_dir, run_dir, resume=resume, force=not resume, **kwargs)


