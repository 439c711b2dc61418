"""The run directory: the one module that knows its files. A trained run and an imported one are
the same kind of thing.

    config.json              the resolved config (written first)
    run.json                 where the data came from (absolute, and relative to the run so a run copied
                             together with its data still finds it), the tokenizer's sha256, the config
                             hash, and for an imported model where it came from
    tokenizer.json           the run's tokenizer
    metrics.jsonl            one JSON record per log / evaluation
    checkpoint/              model.safetensors, optimizer.safetensors, state.json (for --resume)
    model.safetensors        the trained model, written last: a run without it is unfinished
    node_means.safetensors   cached node means for mean ablation, tied to the weights' sha256
    checkpoints/step_NNNNNN/ models kept during training (train.keep_every): model.safetensors,
                             checkpoint.json (step, validation loss, L0, the weights' sha256, the run's
                             id) and their own node-means cache; `Run.at_step` opens one

Commands that read text (prune, eval, explain, view) take `--data DATA_DIR` when the run's own data
is not there (a run copied to another machine, an imported model).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from functools import cached_property
from typing import Any

import torch

from .config import DEVICES, Config
from . import schemas
from .errors import SparseCircuitsError, path_argument
from .model.gpt import SparseGPT
from .schemas import read_json

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT = "checkpoint"
MODEL_FILE = "model.safetensors"
MEANS_FILE = "node_means.safetensors"
KEPT_DIR = "checkpoints"
KEPT_INFO = "checkpoint.json"
_UNCHECKED_WARNED: set[str] = set()  # runs without a weights digest already warned about in this process


# What a run folder holds (what `train --force` may replace): its files, and what commands write into it.
RUN_ENTRIES = frozenset({CONFIG_FILE, RUN_INFO_FILE, TOKENIZER_FILE, METRICS_FILE, CHECKPOINT, MODEL_FILE, MEANS_FILE,
                         KEPT_DIR, "bridges.safetensors", "bridge_eval.json", "bridge_eval.png", "steer", "labels.json",
                         "tensorboard"})


def circuit_device(device: str | None) -> str:
    """Where a command that trains (demo, sweep, bridge demo, train's closing evaluation) runs everything but
    training: `device` when given, else the CPU, where a circuit comes out the same on every machine.
    Training itself follows the config's train.device unless `device` is given."""
    return device or "cpu"


def resolve_device(name: str | torch.device, setting: str = "--device") -> torch.device:
    """'cpu', 'cuda' (an error naming `setting` when there is none) or 'auto' (CUDA when there is one)."""
    if isinstance(name, torch.device):
        return name
    if not isinstance(name, str):
        raise TypeError(f"{setting} must be 'cpu', 'cuda', 'auto' or a torch.device, not {type(name).__name__}")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise SparseCircuitsError(f"{setting} must be 'cpu', 'cuda' or 'auto', not '{name}'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SparseCircuitsError(f"{setting} is '{name}' but no CUDA device is available: use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def kept_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / KEPT_DIR / f"step_{step:06d}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_info(final_run_dir: Path, data_dir: str | Path | None, tokenizer_sha256: str, config: Config,
             **extra: Any) -> str:
    """run.json's text for a run that will live at `final_run_dir`."""
    data = Path(data_dir).resolve() if data_dir is not None else None
    return json.dumps({
        "data": str(data) if data else None,
        "data_relative": os.path.relpath(data, Path(final_run_dir).resolve()) if data else None,
        "tokenizer_sha256": tokenizer_sha256,
        "config_hash": config.hash(),
        **extra,
    }, indent=1)


def write_model(run_dir: Path, tensors: dict[str, torch.Tensor], config: Config) -> str:
    """RUN_DIR/model.safetensors, its sha256 and dtype recorded in run.json first (`weights`): a run
    whose weights file exists always says what the file must hold, and every load checks it."""
    from safetensors.torch import save

    from .io import atomic_write_bytes, atomic_write_text

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"config_hash": config.hash()})
    digest = hashlib.sha256(data).hexdigest()
    info = json.loads((Path(run_dir) / RUN_INFO_FILE).read_text())
    info["weights"] = {"sha256": digest, "dtype": ",".join(sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()}))}
    atomic_write_text(Path(run_dir) / RUN_INFO_FILE, json.dumps(info, indent=1))
    atomic_write_bytes(Path(run_dir) / MODEL_FILE, data)
    return digest


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """run.json: the data directory and the tokenizer hash recorded when the run was made."""
    path = Path(run_dir) / RUN_INFO_FILE
    fix = "it records which tokenizer the run was trained with, so the run cannot be checked; train it again"
    found = schemas.file_problem(path)
    if found:
        raise SparseCircuitsError(f"{path} {found}: {fix}")
    return read_json(path, schemas.RUN_INFO, fix)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records. A torn last line (what a full disk or a killed process leaves) is
    dropped with a warning; a damaged line before it is an error naming the line."""
    found = schemas.file_problem(path)
    if found:
        raise SparseCircuitsError(f"{path} {found}: the run's log is damaged; train the run again with --force")
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError
        except schemas.PARSE_ERRORS:
            if number == len(lines):
                print(f"warning: {path}: its last line is incomplete (a write that was cut off): dropped",
                      file=sys.stderr)
                break
            raise SparseCircuitsError(f"{path} line {number} is not a metrics record: the run's log is damaged;"
                                      " train the run again with --force") from None
        records.append(record)
    return records


def read_run_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        if (run_dir / "manifest.json").is_file():
            raise SparseCircuitsError(f"{run_dir} is a prepared data folder, not a run directory: give the run trained"
                                      " on it (the folder `sparsecircuits train --out` wrote)")
        raise SparseCircuitsError(f"{run_dir} is not a run directory (no {CONFIG_FILE}): train one with `sparsecircuits"
                                  " train` or import one with `sparsecircuits import-openai`")
    return Config.from_dict(read_json(path, {}, "the run directory is damaged; train it again"), origin=str(path))


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Strict loading: a missing, unexpected, misshapen or mistyped tensor, or one holding NaN or
    infinity, is an error naming it."""
    ours = model.state_dict()
    expected = {k: v.shape for k, v in ours.items()}
    found = {k: v.shape for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                  else f"{wrong[0]} has shape {tuple(found[wrong[0]])}, the config says {tuple(expected[wrong[0]])}")
        raise SparseCircuitsError(f"{source} does not fit the model its config describes ({detail}): it comes from another model")
    for name, tensor in tensors.items():
        if tensor.dtype != ours[name].dtype:
            raise SparseCircuitsError(f"{source}: {name} is {str(tensor.dtype).removeprefix('torch.')}, the model's weights are"
                                      f" {str(ours[name].dtype).removeprefix('torch.')}: the file is not this model's weights")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SparseCircuitsError(f"{source}: {name} holds NaN or infinite values: the weights are damaged; train the"
                                      " run again, or resume it from a checkpoint written before they were")
    model.load_state_dict(tensors)


class Run:
    """A run directory, opened once: its config, run.json, tokenizer (checked against its digest),
    weights digest, model, data and node means. Every command, pipeline and API function that
    reads a run receives one (`Run.open(path)`; `as_run` accepts a path too)."""

    def __init__(self, path: Path, config: Config, info: dict[str, Any], step: int | None = None,
                 kept: dict[str, Any] | None = None):
        self.path, self.config, self.info = path, config, info
        # A view of the run at a kept checkpoint (`at_step`) reads the weights, and keeps the node
        # means, of checkpoints/step_NNNNNN/; `kept` is its checkpoint.json. None: the final model.
        self.step, self.kept = step, kept
        self.weights_dir = kept_dir(path, step) if step is not None else path

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """The run directory at `path` (config.json and run.json read and checked), opened once."""
        path = path_argument(path, "Run.open's path")
        if not path.is_dir():
            raise SparseCircuitsError(f"run directory not found: {path}")
        return cls(path, read_run_config(path), read_run_info(path))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})" if self.step is None else f"Run({str(self.path)!r}).at_step({self.step})"

    def kept_steps(self) -> list[int]:
        """The steps of the models kept during training (train.keep_every), in order."""
        steps = []
        for folder in (self.path / KEPT_DIR).glob("step_*"):
            if schemas.is_index(folder.name[5:]) and (folder / KEPT_INFO).is_file() and (folder / MODEL_FILE).is_file():
                steps.append(int(folder.name[5:]))
        return sorted(steps)

    def at_step(self, step: int) -> "Run":
        """The run as it was at a kept checkpoint, checked to belong to this run and to hold the
        weights its checkpoint.json names."""
        folder = kept_dir(self.path, step)
        if step not in self.kept_steps():
            kept = ", ".join(map(str, self.kept_steps())) or "none"
            raise SparseCircuitsError(f"{self.path} kept no model at step {step} (kept steps: {kept}): train with"
                                      " --set train.keep_every=N to keep models during training")
        kept_info = read_json(folder / KEPT_INFO, schemas.KEPT_MODEL, f"delete {folder}")
        if kept_info["step"] != step:
            raise SparseCircuitsError(f"{folder / KEPT_INFO} says step {kept_info['step']}, but its folder is step {step}:"
                                      f" the file was edited or moved; delete {folder}")
        for key, ours in (("run_id", self.info.get("run_id")), ("config_hash", self.config.hash())):
            if kept_info[key] != ours:
                raise SparseCircuitsError(f"{folder} was kept by another run than {self.path} (its {KEPT_INFO} {key} is"
                                          f" {kept_info[key]}, the run's is {ours}): delete it")
        if file_sha256(folder / MODEL_FILE) != kept_info["weights_sha256"]:
            raise SparseCircuitsError(f"{folder}/{MODEL_FILE} holds other weights than the ones kept at step {step}"
                                      f" (its sha256 differs from {KEPT_INFO}'s): delete {folder}")
        view = Run(self.path, self.config, self.info, step, kept_info)
        view.weights_sha256 = kept_info["weights_sha256"]  # checked just above: not hashed again on load
        return view

    @property
    def model_file(self) -> Path:
        return self.weights_dir / MODEL_FILE

    @cached_property
    def tokenizer(self):
        """The run's tokenizer, checked to be the one it was trained with and to fit the model."""
        from .data.dataset import load_tokenizer

        tokenizer = load_tokenizer(self.path / TOKENIZER_FILE)
        if file_sha256(self.path / TOKENIZER_FILE) != self.info["tokenizer_sha256"]:
            raise SparseCircuitsError(f"{self.path}/{TOKENIZER_FILE} is not the tokenizer this run was trained with (its sha256"
                                      " differs from run.json's): copy the run's own tokenizer.json back from its data directory")
        if tokenizer.get_vocab_size() != self.config.model.vocab_size:
            raise SparseCircuitsError(
                f"{self.path}/{TOKENIZER_FILE} has {tokenizer.get_vocab_size()} tokens but the model has"
                f" {self.config.model.vocab_size}: the tokenizer belongs to another run")
        return tokenizer

    def _check_trained(self) -> None:
        if not self.model_file.is_file():
            hint = "continue it with `sparsecircuits train --resume`" if (self.path / CHECKPOINT).exists() else "train it first"
            raise SparseCircuitsError(f"{self.path} has no trained model ({MODEL_FILE} is missing): {hint}")

    @cached_property
    def weights_sha256(self) -> str:
        """Identifies the trained weights: circuits, labels and caches are tied to it. Checked against
        the digest the run recorded when it wrote them (run.json, or a kept model's checkpoint.json)."""
        self._check_trained()
        recorded = self.kept["weights_sha256"] if self.kept else (self.info.get("weights") or {}).get("sha256")
        record = f"{self.weights_dir / KEPT_INFO}" if self.kept else f"{self.path / RUN_INFO_FILE}"
        actual = file_sha256(self.model_file)
        if recorded is None:  # a run from before digests were recorded: usable, said aloud (once per process)
            if record not in _UNCHECKED_WARNED:
                _UNCHECKED_WARNED.add(record)
                print(f"warning: {record} records no digest of {self.model_file} (an older sparsecircuits wrote the run),"
                      " so its weights are not checked; train the run again to have them checked", file=sys.stderr)
            return actual
        if actual != recorded:
            raise SparseCircuitsError(f"{self.model_file} is not the file the run wrote (its sha256 differs from the one in"
                                      f" {record}): it was changed or damaged; train the run again or restore the file")
        return recorded

    def model(self, device: str | torch.device = "cpu") -> SparseGPT:
        """The trained model, checked against the config and the tokenizer; `model.tokenizer` is the run's.
        `device`: 'cpu', 'cuda', 'auto' (CUDA when there is one) or a torch.device."""
        from .io import load_tensors

        device = resolve_device(device)
        self.weights_sha256  # the file is the one the run wrote
        tokenizer = self.tokenizer
        model = SparseGPT(self.config.model)
        load_state_into(model, load_tensors(self.model_file), self.model_file)
        model.tokenizer = tokenizer
        return model.to(device).eval()

    def data_dir(self) -> Path | None:
        """The run's own data directory, if it is still where run.json says (absolutely, or relative to the run)."""
        candidates = [self.info.get("data")]
        if self.info.get("data_relative"):
            candidates.append(self.path / self.info["data_relative"])
        for candidate in candidates:
            if candidate and Path(candidate).is_dir():
                return Path(candidate).resolve()
        return None

    def data(self, override: str | Path | None = None):
        """The data the run was trained on, or `override` when given, checked to be tokenised with the
        run's own tokenizer."""
        from .data.dataset import TokenData

        data_dir = override if override is not None else self.data_dir()
        if data_dir is None:
            where = (f"its data directory {self.info['data']} is gone" if self.info.get("data")
                     else "it has no data of its own (imported)")
            raise SparseCircuitsError(f"{self.path}: {where}: pass --data DATA_DIR (data prepared with the run's tokenizer)")
        data = TokenData(data_dir)
        if data.manifest["tokenizer_sha256"] != self.info["tokenizer_sha256"]:
            raise SparseCircuitsError(f"{data.directory} was tokenised with another tokenizer than {self.path} was trained with:"
                                      " pass data prepared for this run (its run.json names it)")
        return data

    def node_means(self, model: SparseGPT, n_tokens: int = 65536, show_progress: bool = True,
                   data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
        """Every node's mean over `data_dir` (default: the run's own data), cached in
        RUN_DIR/node_means.safetensors, tied to the weights' sha256, and recomputed when the
        weights, n_tokens or a given `data_dir` changed."""
        from safetensors import safe_open

        from .io import atomic_save_tensors

        path = self.weights_dir / MEANS_FILE
        own = self.data_dir()
        own = str(own) if own else None
        wanted = str(Path(data_dir).resolve()) if data_dir is not None else own
        if path.is_file():
            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                    cached = meta.get("data", own)  # caches that predate this key were made from the run's own data
                    if meta.get("model") == self.weights_sha256 and meta.get("tokens") == str(n_tokens) and wanted in (None, cached):
                        return {site: f.get_tensor(site) for site in model.node_sites}
            except Exception:  # a damaged cache is simply recomputed
                pass
        data = self.data(data_dir)
        means = compute_means(model, data, n_tokens, show_progress=show_progress)
        atomic_save_tensors(path, means, metadata={"model": self.weights_sha256, "tokens": str(n_tokens),
                                                   "data": str(data.directory.resolve())})
        return means

    def check_circuit(self, circuit_data: dict, circuit_dir: Path) -> None:
        """A circuit is used only with the very weights it was pruned from."""
        expected = circuit_data["model"].get("weights_sha256")
        if not expected:
            raise SparseCircuitsError(f"{circuit_dir} does not record which weights it was pruned from (an older"
                                      " sparsecircuits made it): prune the task again")
        if self.weights_sha256 != expected:
            raise SparseCircuitsError(f"{circuit_dir} was pruned from other weights than {self.model_file}"
                                      " (their sha256 differs): pass the run directory it was pruned from with --run-dir")


def as_run(run: "Run | str | Path") -> Run:
    return run if isinstance(run, Run) else Run.open(run)


@torch.no_grad()
def compute_means(model: SparseGPT, data, n_tokens: int = 65536, batch_size: int = 16,
                  show_progress: bool = True) -> dict[str, torch.Tensor]:
    """Mean activation of every node over pretraining text, through the same forward the masks see
    (after AbsTopK)."""
    from tqdm.auto import tqdm

    inputs, _ = data.eval_windows("train", model.config.ctx_len, n_tokens)
    sums = {site: torch.zeros(width, dtype=torch.float64) for site, width in model.node_sites.items()}
    count = 0

    def accumulate(x: torch.Tensor, site: str) -> None:
        sums[site] += x.detach().double().sum(dim=(0, 1)).cpu()

    with model.hooks({site: accumulate for site in model.node_sites}):
        for start in tqdm(range(0, len(inputs), batch_size), desc="node means", unit="batch", disable=not show_progress):
            batch = inputs[start : start + batch_size].to(next(model.parameters()).device)
            model(batch)
            count += batch.numel()
    return {site: (total / count).float() for site, total in sums.items()}


def _from_pretrained(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> SparseGPT:
    """The trained model of a run directory: `Run.open(run_dir).model(device)`."""
    return Run.open(run_dir).model(device)


# The run layer's convenience on the model class, so that the model imports nothing from it.
SparseGPT.from_pretrained = classmethod(_from_pretrained)
