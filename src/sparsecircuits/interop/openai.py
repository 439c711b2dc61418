"""The authors' released model format (`openai/circuit_sparsity`): a folder with `beeg_config.json`
(their `GPTConfig`) and `final_model.pt` (a plain state dict of dense fp32 tensors, pruned weights
stored as zeros), read and written without running any of their code.

Reading goes through `torch.load(weights_only=True)` only, which refuses anything but tensors and
plain containers. Every config key is mapped or refused by name, and the state dict must hold
exactly the tensors the config implies.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from pathlib import Path

import torch

from ..circuits.prune import TARGET_LOSS
from ..config import NODE_SITE_KINDS, RESIDUAL_TOPK_KINDS, ModelConfig
from ..errors import SparseCircuitsError
from .. import schemas
from ..rundir import RUN_ENTRIES, Run, as_run
from ..schemas import read_json

CONFIG_FILE = "beeg_config.json"
WEIGHTS_FILE = "final_model.pt"
FP32_EPS = torch.finfo(torch.float32).eps  # their nn.RMSNorm(eps=None) in fp32
LAYER_NORM_EPS = 1e-5  # their LayerNorm

# Their AbsTopK location names -> our node site kinds.
LOCTYPES = {
    "attn_in": "attn.act_in", "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v",
    "attn_out": "attn.resid_delta", "mlp_in": "mlp.act_in", "mlp_neuron": "mlp.post_act",
    "mlp_out": "mlp.resid_delta", "resid_post_attn": "after_attn", "resid_post_mlp": "after_mlp",
}
# Keys that only matter for training or for their runtime, not for what the model computes.
IGNORED_KEYS = {"dropout", "debug_nans", "grad_checkpointing", "flash", "enable_sparse_kernels", "tokenizer_name",
                "learnable_bigram_table", "dropout_cat_pos_emb", "pfrac", "expansion_factor", "expansion_factor_mlp",
                "bigram_table_rank", "n_embd"}
MAPPED_KEYS = {"block_size", "vocab_size", "n_layer", "n_head", "d_head", "d_model", "d_mlp", "n_mlp", "bias", "ln_bias",
               "rms_norm", "residual_activation_type", "activation_type", "afrac", "afrac_loctypes", "tied_unembed",
               "enable_bigram_table", "sink", "d_pos_emb", "sinusoidal_cat_pos_emb", "use_tied_aux_matrix"}


def _refuse(key: str, value, why: str) -> SparseCircuitsError:
    return SparseCircuitsError(f"{CONFIG_FILE}: {key} = {value!r} {why}")


def model_config_from_openai(beeg: dict) -> ModelConfig:
    """Our model config for their `GPTConfig` fields; a key we do not know, or an option we cannot
    represent, is refused by name."""
    if not isinstance(beeg, dict):
        raise SparseCircuitsError(f"{CONFIG_FILE} must hold a JSON object of GPTConfig fields")
    unknown = sorted(set(beeg) - MAPPED_KEYS - IGNORED_KEYS)
    if unknown:
        raise _refuse(unknown[0], beeg[unknown[0]], "is not a GPTConfig field sparsecircuits knows: the folder"
                      " comes from a newer or another release; nothing was imported")
    for key in ("block_size", "vocab_size", "n_layer", "n_head", "d_model"):
        if not isinstance(beeg.get(key), int) or isinstance(beeg.get(key), bool) or beeg[key] <= 0:
            raise _refuse(key, beeg.get(key), "must be a positive integer")
    d_pos = beeg.get("d_pos_emb")
    if d_pos is not None and (not isinstance(d_pos, int) or isinstance(d_pos, bool) or d_pos <= 0):
        raise _refuse("d_pos_emb", d_pos, "must be a positive integer (the width of concatenated positions) or null")
    if beeg.get("use_tied_aux_matrix"):
        raise _refuse("use_tied_aux_matrix", True, "is a training-time option their own loader refuses")
    d_model, n_head = beeg["d_model"], beeg["n_head"]
    d_head = beeg.get("d_head") or d_model // n_head
    d_mlp = beeg.get("d_mlp") or beeg.get("n_mlp") or 4 * d_model
    rms = bool(beeg.get("rms_norm", False))
    keep_fraction, per_site, residual = 1.0, {}, {}
    afrac = beeg.get("afrac")
    if afrac is not None:
        if not isinstance(afrac, (int, float)) or isinstance(afrac, bool) or not 0 < afrac <= 1:
            raise _refuse("afrac", afrac, "must be a fraction in (0, 1]")
        loctypes = [t for t in str(beeg.get("afrac_loctypes", "attn_in,attn_out,mlp_in,mlp_out")).split(",") if t]
        unknown_loctypes = [t for t in loctypes if t not in LOCTYPES]
        if unknown_loctypes:
            raise _refuse("afrac_loctypes", beeg.get("afrac_loctypes"),
                          f": '{unknown_loctypes[0]}' is not a location their code knows ({', '.join(LOCTYPES)})")
        kinds = {LOCTYPES[t] for t in loctypes}
        keep_fraction = float(afrac)
        per_site = {kind: "off" for kind in NODE_SITE_KINDS if kind not in kinds}
        residual = {kind: float(afrac) for kind in RESIDUAL_TOPK_KINDS if kind in kinds}
    for key, allowed in (("residual_activation_type", ("identity", "relu")), ("activation_type", ("gelu", "relu"))):
        if beeg.get(key, allowed[0]) not in allowed:
            raise _refuse(key, beeg[key], f"is not one of {', '.join(allowed)}")
    config = ModelConfig(
        vocab_size=beeg["vocab_size"], d_model=d_model, n_layer=beeg["n_layer"], d_head=d_head, n_head=n_head,
        d_mlp=d_mlp, ctx_len=beeg["block_size"], d_pos=d_pos or 0,
        # their position table is always there: added to the residual, or concatenated to sublayer inputs
        positional=("concat_sinusoidal" if beeg.get("sinusoidal_cat_pos_emb") else "concat") if d_pos else "learned",
        # their sink module exists only with flash attention, so a model saved without flash has none
        attention_sinks=bool(beeg.get("sink", False)) and bool(beeg.get("flash", True)), bigram_table=bool(beeg.get("enable_bigram_table", False)),
        keep_fraction=keep_fraction, site_keep_fraction=per_site,
        keep_rounding="floor", norm="rms" if rms else "layer", norm_eps=FP32_EPS if rms else LAYER_NORM_EPS,
        norm_bias=not rms and bool(beeg.get("ln_bias", True)), linear_bias=bool(beeg.get("bias", True)),
        mlp_activation=beeg.get("activation_type", "gelu"),
        residual_activation=beeg.get("residual_activation_type", "identity"),
        tied_embedding=bool(beeg.get("tied_unembed", True)), residual_keep_fraction=residual,
    )
    return config


def _their_names(config: ModelConfig) -> dict[str, str]:
    """Their state-dict name -> ours, for every tensor except the stacked q/k/v."""
    names = {"transformer.wte.weight": "wte.weight", "transformer.wpe.weight": "wpe.weight",
             "transformer.ln_f.weight": "final_norm.weight", "final_logits_bias": "lm_head.bias"}
    if config.norm_bias:
        names["transformer.ln_f.bias"] = "final_norm.bias"
    if not config.tied_embedding:
        names["lm_head.weight"] = "lm_head.weight"
    if config.bigram_table:
        names["bigram_table"] = "bigram.weight"
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        pairs = {"ln_1": "attn_norm", "ln_2": "mlp_norm"}
        if config.concat_positions:
            pairs.update({"ln_p1": "attn_pos_norm", "ln_p2": "mlp_pos_norm"})
        for their, our in pairs.items():
            names[f"{theirs}{their}.weight"] = f"{ours}{our}.weight"
            if config.norm_bias:
                names[f"{theirs}{their}.bias"] = f"{ours}{our}.bias"
        linears = {"attn.c_proj": "o_proj", "mlp.c_fc": "fc", "mlp.c_proj": "proj"}
        for their, our in linears.items():
            names[f"{theirs}{their}.weight"] = f"{ours}{our}.weight"
            if config.linear_bias:
                names[f"{theirs}{their}.bias"] = f"{ours}{our}.bias"
        if config.attention_sinks:
            names[f"{theirs}attn.attn_imp.sink_logit"] = f"{ours}sink_logit"
    return names


def _stacked_qkv(config: ModelConfig) -> dict[str, list[str]]:
    """Their c_attn tensors -> our q, k, v tensors stacked in it (in that order along dim 0)."""
    stacked = {}
    for i in range(config.n_layer):
        for part in ("weight", "bias") if config.linear_bias else ("weight",):
            stacked[f"transformer.h.{i}.attn.c_attn.{part}"] = [f"blocks.{i}.{p}_proj.{part}" for p in "qkv"]
    return stacked


def load_weights_only(path: Path, what: str):
    """A torch.save file through torch's weights-only unpickler: tensors and plain containers only,
    never arbitrary objects, so loading cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests loading it unsafely: never repeated here
        raise SparseCircuitsError(f"{path} holds Python objects besides tensors, which loading would run as code: it is"
                                  f" refused and nothing was imported; ask for the {what} saved as tensors only") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as err:
        first = next((line for line in str(err).strip().splitlines() if line and "weights_only" not in line), type(err).__name__)
        raise SparseCircuitsError(f"{path} is not a PyTorch {what} that can be read ({first[:160]}): it is damaged or"
                                  " of another kind; nothing was imported") from None


def load_openai_state(path: Path) -> dict[str, torch.Tensor]:
    """`final_model.pt` as tensors."""
    state = load_weights_only(path, "state dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise SparseCircuitsError(f"{path} does not hold a flat dict of named tensors (a released model's state dict)")
    return state


def state_dict_from_openai(state: dict[str, torch.Tensor], config: ModelConfig, source: Path) -> dict[str, torch.Tensor]:
    """Our state dict from theirs: strict, every tensor accounted for."""
    state = dict(state)
    for name in [n for n in state if n.endswith(".attn.bias")]:  # their causal-mask buffer, not a weight
        state.pop(name)
    if "final_logits_bias" not in state:
        state["final_logits_bias"] = torch.zeros(config.vocab_size)
    if config.tied_embedding and "lm_head.weight" in state:  # one tensor stored under both names
        if not torch.equal(state["lm_head.weight"], state.get("transformer.wte.weight", state["lm_head.weight"])):
            raise SparseCircuitsError(f"{source}: tied_unembed is set but lm_head.weight differs from transformer.wte.weight")
        state.pop("lm_head.weight")
    names, stacked = _their_names(config), _stacked_qkv(config)
    missing = sorted((set(names) | set(stacked)) - set(state))
    unexpected = sorted(set(state) - set(names) - set(stacked))
    if missing or unexpected:
        detail = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise SparseCircuitsError(f"{source} does not match its {CONFIG_FILE} ({detail}): the two files come from"
                                  " different models; nothing was imported")
    ours = {names[n]: t.float() for n, t in state.items() if n in names}
    for name, parts in stacked.items():
        for part, tensor in zip(parts, state[name].float().chunk(3, dim=0)):
            ours[part] = tensor.contiguous()
    return ours


def read_openai_model(model_dir: str | Path):
    """(our ModelConfig, our state dict, their config dict) of a released model folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SparseCircuitsError(f"model folder not found: {model_dir}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise SparseCircuitsError(f"{model_dir} is not a released model folder: {name} is missing")
    beeg = read_json(model_dir / CONFIG_FILE, schemas.OPENAI_CONFIG, "the folder is not a released model, or it is damaged")
    config = model_config_from_openai(beeg)
    state = state_dict_from_openai(load_openai_state(model_dir / WEIGHTS_FILE), config, model_dir / WEIGHTS_FILE)
    return config, state, beeg


# --- export ---

def openai_config_from_model(config: ModelConfig, tokenizer_name: str, allow_eps_change: bool = False) -> dict:
    """Their GPTConfig fields for our model config; what their code cannot express is refused."""
    def refuse(key: str, why: str) -> SparseCircuitsError:
        return SparseCircuitsError(f"cannot export: model.{key} = {getattr(config, key)!r} {why}")

    if config.d_model % config.heads:
        raise refuse("d_model", f"is not a multiple of the {config.heads} heads, which their GPTConfig requires")
    their_eps = FP32_EPS if config.norm == "rms" else LAYER_NORM_EPS
    if not math.isclose(config.norm_eps, their_eps, rel_tol=1e-6) and not allow_eps_change:
        raise refuse("norm_eps", f"but their {config.norm.upper()}Norm uses {their_eps!r}: through AbsTopK the"
                                 " difference reaches predictions (2% of next-token argmaxes on the default demo's"
                                 f" model); train with --set model.norm_eps={their_eps!r}, or pass --allow-eps-change")
    inner, d_in = config.heads * config.d_head, config.d_model + config.concat_positions
    widths = {"attn.act_in": d_in, "attn.q": inner, "attn.k": inner, "attn.v": inner, "attn.resid_delta": config.d_model,
              "mlp.act_in": d_in, "mlp.post_act": config.mlp_width, "mlp.resid_delta": config.d_model,
              "after_attn": config.d_model, "after_mlp": config.d_model}
    on = [kind for kind in widths if config.keep_count(kind, widths[kind]) < widths[kind]]
    fraction_of = lambda kind: config.residual_keep_fraction[kind] if kind in RESIDUAL_TOPK_KINDS else config.keep_fraction_at(kind)
    fractions = {fraction_of(kind) for kind in on}
    if len(fractions) > 1:
        raise refuse("site_keep_fraction", "keeps different fractions at different site kinds; their afrac is one"
                                           " fraction for every site kind where AbsTopK is on")
    afrac = fractions.pop() if on else None
    for kind in on:
        if int(afrac * widths[kind]) != config.keep_count(kind, widths[kind]):
            raise refuse("keep_rounding", f"keeps {config.keep_count(kind, widths[kind])} channels at {kind} where"
                                          f" theirs would keep int({afrac} * {widths[kind]}) = {int(afrac * widths[kind])}")
    their_loctype = {kind: loctype for loctype, kind in LOCTYPES.items()}
    return {
        "block_size": config.ctx_len, "vocab_size": config.vocab_size, "n_layer": config.n_layer,
        "n_head": config.heads, "d_head": config.d_head, "d_model": config.d_model, "dropout": 0.0,
        "bias": config.linear_bias, "ln_bias": config.norm_bias, "rms_norm": config.norm == "rms",
        "residual_activation_type": config.residual_activation, "activation_type": config.mlp_activation,
        "afrac": afrac, "afrac_loctypes": ",".join(their_loctype[k] for k in on), "debug_nans": False,
        "tied_unembed": config.tied_embedding, "tokenizer_name": tokenizer_name, "grad_checkpointing": False,
        "d_mlp": config.mlp_width, "enable_bigram_table": config.bigram_table, "learnable_bigram_table": config.bigram_table,
        "d_pos_emb": config.concat_positions or None, "dropout_cat_pos_emb": False,
        "sinusoidal_cat_pos_emb": config.positional == "concat_sinusoidal",
        "enable_sparse_kernels": False, "flash": True, "sink": config.attention_sinks,
    }


def openai_state_from_model(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Their state dict from ours (the inverse of `state_dict_from_openai`)."""
    theirs = {their: state[our].detach().float().contiguous() for their, our in _their_names(config).items()
              if our in state}
    if "transformer.wpe.weight" not in theirs:  # no positions: their table is always added, so zeros
        theirs["transformer.wpe.weight"] = torch.zeros(config.ctx_len, config.d_model)
    for name, parts in _stacked_qkv(config).items():
        theirs[name] = torch.cat([state[p].detach().float() for p in parts], dim=0)
    if config.tied_embedding:
        theirs["lm_head.weight"] = theirs["transformer.wte.weight"]
    return theirs


def openai_weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# --- whole folders ---

def _tokenizer_for_import(model_dir: Path, tokenizer_path: str | Path | None, tokenizer_name: str):
    """A tokenizer.json file, a folder holding one, or a data-gym folder (vocab.bpe + encoder.json)."""
    from tokenizers import Tokenizer

    from ..data.dataset import load_tokenizer
    from .datagym import tokenizer_from_datagym

    candidates = [Path(tokenizer_path)] if tokenizer_path is not None else [model_dir]
    for path in candidates:
        if path.is_file():
            try:
                return Tokenizer.from_file(str(path))
            except Exception as err:
                raise SparseCircuitsError(f"{path} is not a tokenizers JSON file ({str(err)[:120]})") from None
        if (path / "tokenizer.json").is_file():
            return load_tokenizer(path / "tokenizer.json")
        if (path / "vocab.bpe").is_file() or (path / "encoder.json").is_file():
            return tokenizer_from_datagym(path)
    if tokenizer_path is not None:
        raise SparseCircuitsError(f"--tokenizer {tokenizer_path}: not a tokenizer.json file nor a folder with tokenizer.json"
                                  " or vocab.bpe + encoder.json")
    raise SparseCircuitsError(f"{model_dir} holds no tokenizer, and the model's ('{tokenizer_name}') cannot be downloaded"
                              " here: pass --tokenizer DIR (a folder with vocab.bpe and encoder.json, or a tokenizer.json)")


def import_openai(model_dir: str | Path, out: str | Path, tokenizer_path: str | Path | None = None,
                  data_dir: str | Path | None = None, force: bool = False, offline: bool = False,
                  show_progress: bool = True) -> Path:
    """A released model folder, or a released model's name (`csp_yolo1`: downloaded with its tokenizer
    into the cache, `interop/download.py`, or read from it with `offline`), as one of our run
    directories (written whole, or not at all)."""
    from ..config import Config
    from ..data.dataset import TokenData
    from ..io import atomic_write_text, check_output_dir, staged_directory
    from ..model.gpt import SparseGPT
    from ..rundir import CONFIG_FILE as RUN_CONFIG, RUN_INFO_FILE, TOKENIZER_FILE, file_sha256, load_state_into, run_info, write_model
    from .download import fetch_released_model, is_model_name, store_url

    source, by_name = None, is_model_name(str(model_dir))
    # --out is checked before anything is downloaded
    check_output_dir(Path(out), "import-openai", force, replaces=RUN_ENTRIES,
                     inputs=[("MODEL_DIR", None if by_name else model_dir), ("--tokenizer", tokenizer_path),
                             ("--data", data_dir)])
    if by_name:
        name = str(model_dir)
        model_dir, tokenizer_dir, digests = fetch_released_model(name, offline, show_progress)
        tokenizer_path = tokenizer_path if tokenizer_path is not None else tokenizer_dir
        source = {"name": name, "store": store_url(), "files_sha256": digests}
    model_dir, out = Path(model_dir), Path(out)
    model_config, state, beeg = read_openai_model(model_dir)
    config = Config(model=model_config)
    config.validate()
    tokenizer = _tokenizer_for_import(model_dir, tokenizer_path, beeg.get("tokenizer_name", "unknown"))
    if tokenizer.get_vocab_size() != model_config.vocab_size:
        raise SparseCircuitsError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocab_size is"
                                  f" {model_config.vocab_size}: give the model's own tokenizer with --tokenizer")
    load_state_into(SparseGPT(model_config), state, model_dir / WEIGHTS_FILE)  # shapes checked before writing
    data = TokenData(data_dir) if data_dir is not None else None
    with staged_directory(out, "import-openai") as staging:
        tokenizer.save(str(staging / TOKENIZER_FILE))
        tokenizer_sha = file_sha256(staging / TOKENIZER_FILE)
        if data is not None and data.manifest["tokenizer_sha256"] != tokenizer_sha:
            raise SparseCircuitsError(f"--data {data_dir} was tokenised with another tokenizer: prepare data with this"
                                      " model's tokenizer (or leave --data out and give it to prune)")
        atomic_write_text(staging / RUN_CONFIG, json.dumps(config.to_dict(), indent=1))
        atomic_write_text(staging / RUN_INFO_FILE, run_info(
            out, data.directory if data is not None else None, tokenizer_sha, config,
            imported_from={"format": "openai/circuit_sparsity", "path": str(model_dir.resolve()),
                           "final_model_sha256": file_sha256(model_dir / WEIGHTS_FILE),
                           "tokenizer_name": beeg.get("tokenizer_name"), **({"downloaded": source} if source else {})}))
        write_model(staging, state, config)
    return out


def export_openai(run: Run | str | Path, out: str | Path, allow_eps_change: bool = False, force: bool = False) -> Path:
    """Our run directory in the authors' format: beeg_config.json, final_model.pt and our tokenizer.json."""
    import shutil

    from ..io import atomic_write_text, check_output_dir, staged_directory
    from ..rundir import TOKENIZER_FILE

    run, out = as_run(run), Path(out)
    check_output_dir(out, "export-openai", force, replaces=frozenset({CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE}),
                     inputs=[("RUN_DIR", run.path)])
    model = run.model()
    name = (run.info.get("imported_from") or {}).get("tokenizer_name") or f"sparsecircuits:{run.path.name}"
    beeg = openai_config_from_model(model.config, name, allow_eps_change)
    weights = openai_weights_bytes(openai_state_from_model(model.state_dict(), model.config))
    with staged_directory(out, "export-openai") as staging:
        atomic_write_text(staging / CONFIG_FILE, json.dumps(beeg, indent=1))
        (staging / WEIGHTS_FILE).write_bytes(weights)
        shutil.copyfile(run.path / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    return out


def import_openai_circuit(viz_data: str | Path, run: Run | str | Path, task: str, out: str | Path,
                          target_loss: float = TARGET_LOSS, data_dir: str | Path | None = None, force: bool = False) -> Path:
    """The authors' published circuit (`viz_data.pt`: `circuit_data` maps a site to its kept channel
    indices) as our circuit directory on an imported run: nodes from `circuit_data`, edges recomputed
    from the run's weights, metrics measured on `task`'s test records with mean ablation."""
    from ..circuits.circuit import CIRCUIT_ENTRIES, ablation_values, load_task_splits
    from ..circuits.find import CircuitEvaluator, PruneSettings
    from ..circuits.prune import circuit_record, write_circuit_dir
    from ..io import check_output_dir

    viz_path, out = Path(viz_data), Path(out)
    check_output_dir(out, "import-openai-circuit", force, replaces=CIRCUIT_ENTRIES,
                     inputs=[("VIZ_DATA", viz_path), ("--run", run if isinstance(run, (str, Path)) else run.path),
                             ("--task", task if Path(task).is_file() else None), ("--data", data_dir)])
    if not viz_path.is_file():
        raise SparseCircuitsError(f"circuit file not found: {viz_path}")
    settings = PruneSettings(target_loss=target_loss)
    settings.validate()
    viz = load_weights_only(viz_path, "circuit file (viz_data.pt)")
    circuit_data = viz.get("circuit_data") if isinstance(viz, dict) else None
    if not isinstance(circuit_data, dict):
        raise SparseCircuitsError(f"{viz_path} has no circuit_data (a dict of site -> kept channels): it is not a"
                                  " published circuit")
    run = as_run(run)
    model = run.model()
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    for site, indices in circuit_data.items():
        if site == "prune_config":  # the settings they pruned with, not a site
            continue
        if site not in keep:
            raise SparseCircuitsError(f"{viz_path}: circuit_data names site '{site}', which is not a node site of"
                                      f" {run.path} (sites look like '0.attn.q'): the circuit belongs to another model")
        indices = torch.as_tensor(indices).long().flatten() if not isinstance(indices, dict) else None
        if indices is None or (len(indices) and not (0 <= int(indices.min()) and int(indices.max()) < len(keep[site]))):
            raise SparseCircuitsError(f"{viz_path}: circuit_data['{site}'] is not a list of channels below"
                                      f" {len(keep[site])}: the circuit belongs to another model")
        keep[site][indices] = True
    splits = load_task_splits(model, task)
    evaluator = CircuitEvaluator(model, splits, ablation_values(model, run, "mean", False, data_dir),
                                 settings.calibration_steps)
    scale = evaluator.calibrated(keep)[2]
    record = circuit_record(run, model, task, splits, settings, keep, scale, evaluator, data_dir, out)
    importances = viz.get("importances") if isinstance(viz.get("importances"), dict) else {}
    # their stored task losses sum both members of a pair: halved, they read like ours
    authors = {name: float(importances[key]) / 2 for name, key in (("loss_full_model", "loss"), ("loss_circuit", "interv_loss"))
               if isinstance(importances.get(key), (int, float, torch.Tensor))}
    record["imported_from"] = {"format": "openai/circuit_sparsity viz_data", "path": str(viz_path.resolve()),
                               "authors_losses_on_their_records": authors}
    write_circuit_dir(out, record, {site: k.float() for site, k in keep.items()}, command="import-openai-circuit")
    return out
