"""Bridges between a frozen dense model and a weight-sparse one (docs/method.md 6, paper 2.3 and A.3).

At every bridge site (the residual before each attention and each MLP sublayer, optionally the final
residual) an encoder maps the dense model's residual into the sparse model's (linear, then AbsTopK)
and a decoder maps back (linear). Hybrid passes run one model's prefix up to a site, cross the
bridge, and finish in the other model's suffix: both are `SparseGPT.forward` started at the site,
so nothing of the normal pass is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BridgeConfig, ModelConfig
from ..errors import SparseCircuitsError
from ..model.gpt import SparseGPT
from ..model.sparsity import abs_topk
from ..rundir import MODEL_FILE, RUN_INFO_FILE, Run, as_run, file_sha256, read_run_info

BRIDGES_FILE = "bridges.safetensors"


def bridge_sites(n_layer: int, final_site: bool) -> list[str]:
    """The residual before every attention and every MLP sublayer (and the final residual)."""
    sites = [f"{layer}.{kind}" for layer in range(n_layer) for kind in ("resid_in", "resid_mid")]
    return sites + ["final_resid"] if final_site else sites


class Bridges(nn.Module):
    """One encoder (dense -> sparse: linear + AbsTopK) and one decoder (sparse -> dense: linear) per
    site. Dense and outside the L0 budget: the sparse model keeps its own weight sparsity."""

    def __init__(self, sites: list[str], d_dense: int, d_sparse: int, encoder_keep: int):
        super().__init__()
        self.sites = list(sites)
        self.encoder_keep = encoder_keep
        self.encoders = nn.ModuleList(nn.Linear(d_dense, d_sparse) for _ in self.sites)
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in self.sites)

    @classmethod
    def for_models(cls, dense: SparseGPT, sparse: SparseGPT, config: BridgeConfig) -> "Bridges":
        check_bridgeable(dense.config, sparse.config)
        d_sparse = sparse.config.d_model
        keep = max(1, round(config.encoder_keep_fraction * d_sparse))
        return cls(bridge_sites(sparse.config.n_layer, config.final_site), dense.config.d_model, d_sparse, keep)

    def index(self, site: str) -> int:
        if site not in self.sites:
            raise KeyError(f"no bridge at '{site}' (bridges: {', '.join(self.sites)})")
        return self.sites.index(site)

    def encode(self, site: str, dense_residual: torch.Tensor) -> torch.Tensor:
        return abs_topk(self.encoders[self.index(site)](dense_residual), self.encoder_keep)

    def decode(self, site: str, sparse_residual: torch.Tensor) -> torch.Tensor:
        return self.decoders[self.index(site)](sparse_residual)


def check_bridgeable(dense: ModelConfig, sparse: ModelConfig) -> None:
    if dense.n_layer != sparse.n_layer:
        raise SparseCircuitsError(f"the dense model has {dense.n_layer} layers and the sparse config {sparse.n_layer}:"
                                  f" bridged models need the same number of layers (set model.n_layer={dense.n_layer})")


def nmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised MSE as a ratio of sums: sum ||pred - target||^2 / sum ||target - mean(target)||^2,
    the mean taken per channel over every token. Nothing is detached: the target is a model's
    activation that is being trained too."""
    centred = target - target.reshape(-1, target.shape[-1]).mean(0)
    return (prediction - target).float().pow(2).sum() / centred.float().pow(2).sum().clamp_min(1e-12)


class DenseDistribution:
    """The frozen dense model's next-token distribution over the full vocabulary (fp32, detached),
    with the part of every KL from it that does not depend on the other distribution: its
    negative entropy, computed once per batch rather than once per hybrid pass."""

    def __init__(self, logits: torch.Tensor):
        log_probs = F.log_softmax(logits.detach().float(), dim=-1).reshape(-1, logits.shape[-1])
        self.probs = log_probs.exp()
        self.negative_entropy = (self.probs * log_probs).sum() / log_probs.shape[0]


def kl_from(reference: DenseDistribution, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || softmax(logits)) over the full vocabulary in fp32, averaged over tokens:
    sum p log p - sum p log q."""
    log_q = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
    return reference.negative_entropy - (reference.probs * log_q).sum() / log_q.shape[0]


@dataclass
class BridgedLoss:
    total: torch.Tensor
    pretrain: torch.Tensor
    nmse: dict[str, torch.Tensor]
    kl_dense_to_sparse: dict[str, torch.Tensor]
    kl_sparse_to_dense: dict[str, torch.Tensor]

    def detach(self) -> "BridgedLoss":
        """The same figures without their graph (kept for logging after the step's backward)."""
        off = lambda d: {site: v.detach() for site, v in d.items()}
        return BridgedLoss(self.total.detach(), self.pretrain.detach(), off(self.nmse), off(self.kl_dense_to_sparse),
                           off(self.kl_sparse_to_dense))

    def terms(self) -> dict:
        """Every term as floats, per site: what the metrics log records."""
        as_floats = lambda d: {site: float(v) for site, v in d.items()}
        return {"pretrain_loss": float(self.pretrain), "nmse": as_floats(self.nmse),
                "kl_dense_to_sparse": as_floats(self.kl_dense_to_sparse), "kl_sparse_to_dense": as_floats(self.kl_sparse_to_dense)}


def bridged_loss(sparse: SparseGPT, dense: SparseGPT, bridges: Bridges, tokens: torch.Tensor, targets: torch.Tensor,
                 config: BridgeConfig) -> BridgedLoss:
    """The sparse model's cross-entropy plus, at every bridge site, both maps' NMSE and the KL from
    the dense model's distribution to each hybrid pass's. The dense model is frozen: no gradient
    reaches its weights, though the sparse -> dense passes carry gradient through it to the decoder
    and the sparse model. Runs inside the caller's autocast, like the main pass."""
    sites = bridges.sites
    with torch.no_grad():
        dense_logits, dense_cache = dense.run_with_cache(tokens, sites)
        reference = DenseDistribution(dense_logits)
    sparse_logits, sparse_cache = sparse.run_with_cache(tokens, sites, detach=False)
    pretrain = F.cross_entropy(sparse_logits.float().reshape(-1, sparse_logits.shape[-1]), targets.reshape(-1))
    nmse_terms, kl_ds, kl_sd = {}, {}, {}
    for site in sites:
        encoded = bridges.encode(site, dense_cache[site])
        decoded = bridges.decode(site, sparse_cache[site])
        nmse_terms[site] = nmse(encoded, sparse_cache[site]) + nmse(decoded, dense_cache[site])
        kl_ds[site] = kl_from(reference, sparse(tokens, start=site, residual=encoded))
        kl_sd[site] = kl_from(reference, dense(tokens, start=site, residual=decoded))
    total = (pretrain + config.nmse_weight * sum(nmse_terms.values())
             + config.kl_dense_to_sparse_weight * sum(kl_ds.values()) + config.kl_sparse_to_dense_weight * sum(kl_sd.values()))
    return BridgedLoss(total, pretrain, nmse_terms, kl_ds, kl_sd)


class BridgedObjective:
    """What a bridged training step minimises (`bridged_loss`) and the weights it trains: the sparse
    model and the bridges (`trained`), never the dense model, which is frozen here."""

    def __init__(self, sparse: SparseGPT, dense: SparseGPT, config: BridgeConfig):
        self.sparse, self.dense, self.config = sparse, dense.eval().requires_grad_(False), config
        if dense.config.ctx_len < sparse.config.ctx_len:
            raise SparseCircuitsError(f"the dense model's context ({dense.config.ctx_len}) is shorter than the sparse"
                                      f" config's ({sparse.config.ctx_len}): set model.ctx_len={dense.config.ctx_len}")
        self.bridges = Bridges.for_models(dense, sparse, config).to(next(sparse.parameters()).device)
        self.trained = nn.ModuleList([sparse, self.bridges])
        self.last: BridgedLoss | None = None

    def __call__(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result = bridged_loss(self.sparse, self.dense, self.bridges, tokens, targets, self.config)
        self.last = result.detach()
        return result.total

    def last_terms(self) -> dict:
        return self.last.terms() if self.last is not None else {}


def dense_run_record(run_dir: Path, dense_run: Run) -> dict:
    """What a bridged run's run.json says of its dense model: where it is and which weights it holds."""
    where = dense_run.path.resolve()
    return {"run": str(where), "run_relative": os.path.relpath(where, Path(run_dir).resolve()),
            "model_sha256": dense_run.weights_sha256}


def recorded_dense_run(run_dir: Path, record: dict) -> Run:
    """The dense run a bridged run's run.json names (at its absolute or its relative path), checked to
    hold the very weights the bridges were trained against."""
    found = [Path(p) for p in (record["run"], Path(run_dir) / record["run_relative"]) if (Path(p) / MODEL_FILE).is_file()]
    if not found:
        raise SparseCircuitsError(f"the dense run {record['run']} that {run_dir} is bridged to is gone: put it back")
    if file_sha256(found[0] / MODEL_FILE) != record["model_sha256"]:
        raise SparseCircuitsError(f"the dense model in {found[0]} has changed since {run_dir} was bridged to it: bridges"
                                  " trained against other weights no longer fit; train the bridged run again with --force")
    return Run.open(found[0].resolve())


def bridged_dense_run(run_dir: Path, data, dense_run: str | Path | None, resume: bool) -> Run | None:
    """The dense run a bridged training run uses, checked: a trained run with the data's tokenizer;
    on resume, the one the run recorded, with the same weights."""
    if resume and (Path(run_dir) / RUN_INFO_FILE).is_file():
        record = read_run_info(run_dir).get("bridged_to")
        if record is None:
            if dense_run is not None:
                raise SparseCircuitsError(f"{run_dir} was trained without bridges: resume it with `sparsecircuits train --resume`")
            return None
        recorded = recorded_dense_run(run_dir, record)
        if dense_run is not None and Path(dense_run).resolve() != recorded.path:
            raise SparseCircuitsError(f"{run_dir} was bridged to {record['run']}, not {dense_run}: drop --dense to use its own")
        return recorded
    if dense_run is None:
        return None
    dense = Run.open(Path(dense_run).resolve())
    dense.model()  # every check a loaded run gets, each with its own message
    if dense.info["tokenizer_sha256"] != data.manifest["tokenizer_sha256"]:
        raise SparseCircuitsError(f"the dense run {dense_run} was trained with another tokenizer than {data.directory}'s:"
                                  " give --data the dense run's own data directory")
    return dense


def load_bridged_run(run: Run | str | Path, device: str | torch.device = "cpu") -> tuple[SparseGPT, SparseGPT, Bridges]:
    """(sparse model, its frozen dense model, the bridges) of a run made by `bridge train`."""
    from ..io import load_tensors
    from ..rundir import load_state_into

    run = as_run(run)
    sparse = run.model(device)
    record = run.info.get("bridged_to")
    bridges_file = run.path / BRIDGES_FILE
    if record is None or not bridges_file.is_file():
        raise SparseCircuitsError(f"{run.path} is not a bridged run (no {BRIDGES_FILE} or no dense run in its run.json):"
                                  " make one with `sparsecircuits bridge train`")
    dense = recorded_dense_run(run.path, record).model(device).requires_grad_(False)
    bridges = Bridges.for_models(dense, sparse, run.config.bridge)
    load_state_into(bridges, load_tensors(bridges_file), bridges_file)
    return sparse, dense, bridges.to(device).eval()
