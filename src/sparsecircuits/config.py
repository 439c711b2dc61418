"""Typed configs: dataclasses loaded from TOML, overridden with `section.key=value`.

A config file has the sections `[model]`, `[sparsity]`, `[optim]` and `[train]`, and may
start with `extends = "NAME_OR_FILE"` to change only some keys of another config.
Built-in configs live in `sparsecircuits/configs/*.toml`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import SparseCircuitsError

CONFIG_DIR = Path(__file__).parent / "configs"

# The kinds of AbsTopK node site inside a block (METHOD.md 1.3).
NODE_SITE_KINDS = (
    "attn.act_in",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.resid_delta",
    "mlp.act_in",
    "mlp.post_act",
    "mlp.resid_delta",
)


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0: take it from the data's tokenizer
    d_model: int = 128
    n_layer: int = 4
    d_head: int = 16
    n_head: int = 0  # 0: d_model // d_head
    d_mlp: int = 0  # 0: 4 * d_model
    ctx_len: int = 256
    positional: str = "none"  # "none" or "learned" (absolute)
    attention_sinks: bool = True
    bigram_table: bool = True
    keep_fraction: float = 0.25  # AbsTopK: fraction of channels kept at every node site
    site_keep_fraction: dict[str, float] = field(default_factory=dict)  # per site kind, e.g. "mlp.post_act"
    init_std: float = 0.02

    @property
    def heads(self) -> int:
        return self.n_head or self.d_model // self.d_head

    @property
    def mlp_width(self) -> int:
        return self.d_mlp or 4 * self.d_model

    def keep_fraction_at(self, kind: str) -> float:
        return self.site_keep_fraction.get(kind, self.keep_fraction)


@dataclass
class SparsityConfig:
    l0_fraction: float = 1 / 16  # fraction of nonzero weights per sparse matrix after annealing; 1 = dense
    anneal_start: float = 0.01  # fraction of training at which L0 starts falling from dense
    anneal_end: float = 0.5  # fraction of training at which L0 reaches l0_fraction
    min_nonzero_per_neuron: int = 4  # never leave a row or column of a matrix with fewer nonzeros
    sparse_embedding: bool = True
    sparse_unembedding: bool = True
    sparse_biases: bool = True


@dataclass
class OptimConfig:
    lr: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 0.1
    weight_decay: float = 0.1
    grad_clip: str = "clip"  # "clip" (RMS <= grad_rms), "normalize" (RMS = grad_rms) or "none"
    grad_rms: float = 1.0
    warmup_fraction: float = 0.01


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16
    seed: int = 0
    eval_interval: int = 200
    eval_batches: int = 8
    log_interval: int = 10
    checkpoint_interval: int = 500
    device: str = "auto"  # "auto", "cpu" or "cuda"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short hash of the model's shape and sparsity: equal hashes mean compatible weights."""
        blob = json.dumps({"model": dataclasses.asdict(self.model), "sparsity": dataclasses.asdict(self.sparsity)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise SparseCircuitsError(
                f"{origin}: unknown config section '{sorted(unknown)[0]}' (sections: {', '.join(sections)})"
            )
        hints = get_type_hints(cls)
        config = cls(**{name: _section_from_dict(hints[name], data.get(name, {}), name, origin) for name in sections})
        config.validate()
        return config

    def validate(self) -> None:
        m, s, o, t = self.model, self.sparsity, self.optim, self.train
        checks = [
            (m.vocab_size >= 0, "model.vocab_size must be >= 0 (0 takes it from the tokenizer)"),
            (m.d_model > 0 and m.n_layer > 0 and m.d_head > 0, "model.d_model, n_layer and d_head must be positive"),
            (m.n_head > 0 or m.d_model % m.d_head == 0, "model.d_model must be a multiple of model.d_head (or set model.n_head)"),
            (m.n_head >= 0 and m.d_mlp >= 0, "model.n_head and model.d_mlp must be >= 0 (0 means the default)"),
            (m.ctx_len > 1, "model.ctx_len must be > 1"),
            (m.positional in ("none", "learned"), "model.positional must be 'none' or 'learned'"),
            (0 < m.keep_fraction <= 1, "model.keep_fraction must be in (0, 1]"),
            (m.init_std > 0, "model.init_std must be positive"),
            (0 < s.l0_fraction <= 1, "sparsity.l0_fraction must be in (0, 1]"),
            (0 <= s.anneal_start <= s.anneal_end <= 1, "sparsity needs 0 <= anneal_start <= anneal_end <= 1"),
            (s.min_nonzero_per_neuron >= 0, "sparsity.min_nonzero_per_neuron must be >= 0"),
            (o.lr > 0 and o.eps > 0 and o.weight_decay >= 0, "optim.lr and optim.eps must be positive, weight_decay >= 0"),
            (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)"),
            (o.grad_clip in ("clip", "normalize", "none"), "optim.grad_clip must be 'clip', 'normalize' or 'none'"),
            (o.grad_rms > 0, "optim.grad_rms must be positive"),
            (0 <= o.warmup_fraction < 1, "optim.warmup_fraction must be in [0, 1)"),
            (t.steps > 0 and t.batch_size > 0, "train.steps and train.batch_size must be positive"),
            (t.eval_interval > 0 and t.eval_batches > 0 and t.log_interval > 0 and t.checkpoint_interval > 0,
             "train.eval_interval, eval_batches, log_interval and checkpoint_interval must be positive"),
            (t.device in ("auto", "cpu", "cuda"), "train.device must be 'auto', 'cpu' or 'cuda'"),
        ]
        for ok, message in checks:
            if not ok:
                raise SparseCircuitsError(f"bad config value: {message}")
        for kind, fraction in m.site_keep_fraction.items():
            if kind not in NODE_SITE_KINDS:
                raise SparseCircuitsError(
                    f"unknown site kind 'model.site_keep_fraction.{kind}' (kinds: {', '.join(NODE_SITE_KINDS)})"
                )
            if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
                raise SparseCircuitsError(f"bad config value: model.site_keep_fraction.{kind} must be in (0, 1]")


def _section_from_dict(section_cls: type, data: Any, section: str, origin: str) -> Any:
    if not isinstance(data, dict):
        raise SparseCircuitsError(f"{origin}: [{section}] must be a table of keys")
    hints = get_type_hints(section_cls)
    values = {}
    for key, value in data.items():
        if key not in hints:
            raise SparseCircuitsError(
                f"{origin}: unknown config key '{section}.{key}' (keys of [{section}]: {', '.join(hints)})"
            )
        values[key] = _check_type(hints[key], value, f"{section}.{key}", origin)
    return section_cls(**values)


def _check_type(expected: Any, value: Any, name: str, origin: str) -> Any:
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(expected, isinstance(value, dict))
    if not ok:
        type_name = getattr(expected, "__name__", "table")
        raise SparseCircuitsError(f"{origin}: bad value for '{name}': expected {type_name}, got {value!r}")
    return float(value) if expected is float else (dict(value) if isinstance(value, dict) else value)


def builtin_config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _read_toml(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.is_file():
        if name_or_path in builtin_config_names():
            path = CONFIG_DIR / f"{name_or_path}.toml"
        elif name_or_path.endswith(".toml") or "/" in name_or_path:
            raise SparseCircuitsError(f"config file not found: {name_or_path}")
        else:
            raise SparseCircuitsError(
                f"unknown config '{name_or_path}': give a TOML file or one of {', '.join(builtin_config_names())}"
            )
    if str(path.resolve()) in seen:
        raise SparseCircuitsError(f"config {path} extends itself")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SparseCircuitsError(f"config {path} is not valid TOML: {err}") from None
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_toml(str(parent), seen + (str(path.resolve()),))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return base


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value), the value read as TOML (bare words are strings)."""
    if "=" not in text:
        raise SparseCircuitsError(f"bad --set '{text}': use section.key=value, e.g. --set train.steps=100")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise SparseCircuitsError(f"bad --set '{text}': the key must be section.key, e.g. optim.lr")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        section = data.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise SparseCircuitsError(f"bad --set '{text}': '{path[0]}' is not a section")
        if path[1] == "site_keep_fraction" and len(path) > 2:  # the site kind itself has a dot
            section.setdefault("site_keep_fraction", {})[".".join(path[2:])] = value
        elif len(path) == 2:
            section[path[1]] = value
        else:
            raise SparseCircuitsError(f"bad --set '{text}': unknown key '{'.'.join(path)}'")
    return data


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    data = apply_overrides(_read_toml(name_or_path), overrides or [])
    return Config.from_dict(data, origin=f"config '{name_or_path}'")
