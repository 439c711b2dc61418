"""Typed configs: dataclasses loaded from TOML, overridden with `section.key=value`.

A config file has the sections `[model]`, `[sparsity]`, `[optim]` and `[train]`, and may
start with `extends = "NAME_OR_FILE"` to change only some keys of another config.
Built-in configs live in `sparsecircuits/configs/*.toml`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import SparseCircuitsError
from .schemas import PARSE_ERRORS

# model/sparse_kernels.py: measured with `python benchmarks/sparse_kernels.py`: at or below this fraction of nonzero weights,
# CSR forward + input gradient beat dense for most shapes of the small and reference configs.
CSR_MAX_DENSITY = 1 / 32
DEVICES = ("cpu", "cuda", "auto")  # where a model trains or runs: `auto` is CUDA when there is one

CONFIG_DIR = Path(__file__).parent / "configs"

# The kinds of AbsTopK node site inside a block (docs/method.md 1.3).
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

# Where AbsTopK may act on the residual stream itself (the authors' resid_post_attn, resid_post_mlp).
RESIDUAL_TOPK_KINDS = ("after_attn", "after_mlp")


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0: take it from the data's tokenizer
    d_model: int = 128
    n_layer: int = 4
    d_head: int = 16
    n_head: int = 0  # 0: d_model // d_head
    d_mlp: int = 0  # 0: 4 * d_model
    ctx_len: int = 256
    # "none", "learned" (absolute, added to the residual), or positions concatenated to every sublayer's
    # normed input as d_pos channels of their own: "concat" (learned) or "concat_sinusoidal" (fixed)
    positional: str = "none"
    d_pos: int = 0  # width of the concatenated position channels
    attention_sinks: bool = True
    bigram_table: bool = True
    keep_fraction: float = 0.25  # AbsTopK: fraction of channels kept at every node site
    # per site kind, e.g. {"mlp.post_act" = 0.5}; "off" (or 1) turns AbsTopK off at that kind
    site_keep_fraction: dict[str, float | str] = field(default_factory=dict)
    # channels kept: "round" = max(1, round(fraction * width)); "floor" = int(fraction * width), which
    # can be 0 (the authors' rule)
    keep_rounding: str = "round"
    norm: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm)
    norm_eps: float = 1e-6  # the authors' RMSNorm uses fp32's machine epsilon (1.1920929e-07), LayerNorm 1e-5
    norm_bias: bool = False  # LayerNorm only: a learned bias after the gain
    linear_bias: bool = True  # biases in the attention and MLP projections (the unembedding always has one)
    mlp_activation: str = "gelu"  # "gelu" or "relu"
    residual_activation: str = "identity"  # "identity" or "relu" (applied to the residual after every sublayer)
    tied_embedding: bool = False  # unembedding weight = token embedding
    # AbsTopK on the residual stream itself, after the sublayer: {"after_attn" = 0.25, "after_mlp" = 0.25}
    residual_keep_fraction: dict[str, float | str] = field(default_factory=dict)
    init_std: float = 0.02

    @property
    def heads(self) -> int:
        return self.n_head or self.d_model // self.d_head

    @property
    def mlp_width(self) -> int:
        return self.d_mlp or 4 * self.d_model

    def keep_fraction_at(self, kind: str) -> float:
        fraction = self.site_keep_fraction.get(kind, self.keep_fraction)
        return 1.0 if fraction == "off" else fraction

    @property
    def concat_positions(self) -> int:
        """Position channels concatenated to each sublayer's input (0 unless positions are concatenated)."""
        return self.d_pos if self.positional.startswith("concat") else 0

    def keep_count(self, kind: str, width: int) -> int:
        """Channels AbsTopK keeps at a site of this kind and width (width itself: AbsTopK is off).
        Residual kinds are "after_attn" and "after_mlp"; they are off unless set."""
        fraction = self.residual_keep_fraction.get(kind, 1.0) if kind.startswith("after_") else self.keep_fraction_at(kind)
        fraction = 1.0 if fraction == "off" else fraction
        if fraction >= 1:
            return width
        if self.keep_rounding == "floor":
            return int(fraction * width)
        return max(1, round(fraction * width))


@dataclass
class SparsityConfig:
    l0_fraction: float = 1 / 16  # fraction of nonzero weights per sparse matrix after annealing; 1 = dense
    anneal_start: float = 0.01  # fraction of training at which L0 starts falling from dense
    anneal_end: float = 0.5  # fraction of training at which L0 reaches l0_fraction
    min_nonzero_per_neuron: int = 4  # never leave a neuron with fewer nonzero weights
    # "neurons": the minimum holds for what each neuron or channel reads (rows of q/k/v and fc) and
    # writes (columns of the two output projections), as in the authors' code; "rows_and_columns":
    # for every row and column of every matrix, embeddings included (needs a larger L0 budget).
    min_nonzero_on: str = "neurons"
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
    keep_every: int = 0  # keep the model every this many steps in checkpoints/step_NNNNNN/ (`evolve`); 0 keeps none
    device: str = "auto"  # "auto", "cpu" or "cuda"
    cpu_bf16: bool = False  # bf16 autocast for training steps on CPU too (as on CUDA): fast with AMX, not fp32 numerics
    compile: bool = False  # the training loss through torch.compile (fused pointwise work; a minute's compile first)
    tensorboard: bool = False  # also write the metrics as TensorBoard events in RUN_DIR/tensorboard (optional extra)
    keep_freed_memory: bool = True  # glibc keeps freed memory for reuse: no fresh pages faulted in every step


@dataclass
class BridgeConfig:
    """Bridges to a frozen dense model (`sparsecircuits bridge train`; unused by plain training)."""
    nmse_weight: float = 1.0  # both maps' normalised MSE, summed over sites
    kl_dense_to_sparse_weight: float = 1.0  # dense prefix -> encoder -> sparse suffix, against the dense logits
    kl_sparse_to_dense_weight: float = 1.0  # sparse prefix -> decoder -> dense suffix, against the dense logits
    encoder_keep_fraction: float = 0.25  # the encoder's AbsTopK: fraction of sparse residual channels kept
    final_site: bool = False  # also bridge the final residual (before the final norm)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)

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
        m, s, o, t, b = self.model, self.sparsity, self.optim, self.train, self.bridge
        # (key, value, lowest, highest, lowest allowed itself): every number has a sane range.
        ranges = [
            ("model.vocab_size", m.vocab_size, 0, 65535, True),  # 0: from the tokenizer; tokens are uint16
            ("model.d_model", m.d_model, 0, 1 << 16, False),
            ("model.n_layer", m.n_layer, 0, 1024, False),
            ("model.d_head", m.d_head, 0, 1 << 12, False),
            ("model.n_head", m.n_head, 0, 1 << 12, True),  # 0: d_model // d_head
            ("model.d_pos", m.d_pos, 0, 1 << 16, True),
            ("model.d_mlp", m.d_mlp, 0, 1 << 20, True),  # 0: 4 * d_model
            ("model.ctx_len", m.ctx_len, 1, 1 << 20, False),
            ("model.keep_fraction", m.keep_fraction, 0, 1, False),
            ("model.init_std", m.init_std, 0, 10, False),
            ("model.norm_eps", m.norm_eps, 0, 1, False),
            ("sparsity.l0_fraction", s.l0_fraction, 0, 1, False),
            ("sparsity.anneal_start", s.anneal_start, 0, 1, True),
            ("sparsity.anneal_end", s.anneal_end, 0, 1, True),
            ("sparsity.min_nonzero_per_neuron", s.min_nonzero_per_neuron, 0, 1 << 20, True),
            ("optim.lr", o.lr, 0, 10, False),
            ("optim.eps", o.eps, 0, 10, False),
            ("optim.weight_decay", o.weight_decay, 0, 10, True),
            ("optim.beta1", o.beta1, 0, 0.9999, True),
            ("optim.beta2", o.beta2, 0, 0.9999, True),
            ("optim.grad_rms", o.grad_rms, 0, 1e6, False),
            ("optim.warmup_fraction", o.warmup_fraction, 0, 0.99, True),
            ("train.steps", t.steps, 0, 10**9, False),
            ("train.batch_size", t.batch_size, 0, 1 << 20, False),
            ("train.seed", t.seed, 0, 2**63 - 1, True),
            ("train.eval_interval", t.eval_interval, 0, 10**9, False),
            ("train.eval_batches", t.eval_batches, 0, 10**6, False),
            ("train.log_interval", t.log_interval, 0, 10**9, False),
            ("train.checkpoint_interval", t.checkpoint_interval, 0, 10**9, False),
            ("train.keep_every", t.keep_every, 0, 10**9, True),
            ("bridge.nmse_weight", b.nmse_weight, 0, 1e6, True),
            ("bridge.kl_dense_to_sparse_weight", b.kl_dense_to_sparse_weight, 0, 1e6, True),
            ("bridge.kl_sparse_to_dense_weight", b.kl_sparse_to_dense_weight, 0, 1e6, True),
            ("bridge.encoder_keep_fraction", b.encoder_keep_fraction, 0, 1, False),
        ]
        for key, value, low, high, low_allowed in ranges:
            if not (low <= value <= high) or (value == low and not low_allowed):
                show = lambda x: f"{x:g}" if isinstance(x, float) else f"{x:,}"
                interval = f"{'[' if low_allowed else '('}{show(low)}, {show(high)}]"
                raise SparseCircuitsError(f"bad config value: {key} = {value!r} is out of range {interval}")
        checks = [
            (m.n_head > 0 or m.d_model % m.d_head == 0, "model.d_model must be a multiple of model.d_head (or set model.n_head)"),
            (m.positional in ("none", "learned", "concat", "concat_sinusoidal"),
             "model.positional must be 'none', 'learned', 'concat' or 'concat_sinusoidal'"),
            ((m.d_pos > 0) == m.positional.startswith("concat"),
             "model.d_pos (the width of concatenated positions) must be set exactly when model.positional is 'concat*'"),
            (m.keep_rounding in ("round", "floor"), "model.keep_rounding must be 'round' or 'floor'"),
            (m.norm in ("rms", "layer"), "model.norm must be 'rms' or 'layer'"),
            (not m.norm_bias or m.norm == "layer", "model.norm_bias needs model.norm = 'layer' (RMSNorm has no bias)"),
            (m.mlp_activation in ("gelu", "relu"), "model.mlp_activation must be 'gelu' or 'relu'"),
            (m.residual_activation in ("identity", "relu"), "model.residual_activation must be 'identity' or 'relu'"),
            (s.anneal_start <= s.anneal_end, "sparsity.anneal_start must not be after sparsity.anneal_end"),
            (s.min_nonzero_on in ("neurons", "rows_and_columns"), "sparsity.min_nonzero_on must be 'neurons' or 'rows_and_columns'"),
            (o.grad_clip in ("clip", "normalize", "none"), "optim.grad_clip must be 'clip', 'normalize' or 'none'"),
            (t.device in DEVICES, "train.device must be 'auto', 'cpu' or 'cuda'"),
        ]
        for ok, message in checks:
            if not ok:
                raise SparseCircuitsError(f"bad config value: {message}")
        for key, kinds in (("site_keep_fraction", NODE_SITE_KINDS), ("residual_keep_fraction", RESIDUAL_TOPK_KINDS)):
            for kind, fraction in getattr(m, key).items():
                if kind not in kinds:
                    raise SparseCircuitsError(f"unknown site kind 'model.{key}.{kind}' (kinds: {', '.join(kinds)})")
                if fraction != "off" and not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                                              and 0 < fraction <= 1):
                    raise SparseCircuitsError(f"bad config value: model.{key}.{kind} must be in (0, 1] or 'off'")


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
    shown = repr(value)[:40] if not isinstance(value, int) or abs(value) < 10**30 else "a number of more than 30 digits"
    if not ok:
        type_name = getattr(expected, "__name__", "table")
        raise SparseCircuitsError(f"{origin}: bad value for '{name}': expected {type_name}, got {shown}")
    if expected is float and ((isinstance(value, int) and abs(value) >= 10**300) or not math.isfinite(value)):
        # the int test first: math.isfinite of an int too large for a float raises OverflowError
        raise SparseCircuitsError(f"{origin}: bad value for '{name}': {shown} is not a finite number")
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
    except (UnicodeDecodeError, *PARSE_ERRORS) as err:  # TOMLDecodeError is a ValueError
        raise SparseCircuitsError(f"config {path} is not valid TOML: {str(err)[:160]}") from None
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
    except PARSE_ERRORS:  # a number beyond what Python reads, or nesting deeper than its stack
        raise SparseCircuitsError(f"bad --set '{text[:60]}': its value cannot be read (too large or nested too deep)") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set` values over a config's table, in order (a later one wins); a key set both to one value
    and to one per site kind is refused."""
    for text in overrides:
        path, value = parse_override(text)
        section = data.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise SparseCircuitsError(f"bad --set '{text}': '{path[0]}' is not a section")
        if path[1] in ("site_keep_fraction", "residual_keep_fraction") and len(path) > 2:  # a kind may hold a dot
            kinds = section.setdefault(path[1], {})
            if not isinstance(kinds, dict):
                raise SparseCircuitsError(f"bad --set '{text}': {path[0]}.{path[1]} is set to one value, not to one per"
                                          f" site kind: set either {path[0]}.{path[1]}.KIND or nothing")
            kinds[".".join(path[2:])] = value
        elif len(path) == 2:
            section[path[1]] = value
        else:
            raise SparseCircuitsError(f"bad --set '{text}': unknown key '{'.'.join(path)}'")
    return data


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """A built-in config by name (`tiny`, `small`, `paper-1x`) or a TOML file, with `key=value` overrides
    (e.g. "train.steps=100"), checked: an unknown key or a bad value is an error naming it."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_config's name_or_path must be a config name or a TOML file's path, not {type(name_or_path).__name__}")
    if overrides is not None and (isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides)):
        raise TypeError("load_config's overrides must be a list of 'section.key=value' strings, e.g. ['train.steps=100']")
    data = apply_overrides(_read_toml(str(name_or_path)), list(overrides or []))
    return Config.from_dict(data, origin=f"config '{name_or_path}'")


GRID_DIR = Path(__file__).parent / "configs" / "grids"  # the built-in `sweep` grids


def builtin_grids() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.toml"))
