"""`sparsecircuits bridge eval`: how well each bridge maps, and how well each hybrid pass predicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io import atomic_write_text
from ..rundir import Run, as_run, resolve_device
from .bridge import load_bridged_run

EVAL_FILE, PLOT_FILE = "bridge_eval.json", "bridge_eval.png"


class _SumOfSquares:
    """Running sums for NMSE over many batches: sum ||pred - target||^2 / sum ||target - mean||^2."""

    def __init__(self):
        self.error = self.total = self.square = 0.0
        self.sum = None
        self.count = 0

    def add(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        flat = target.reshape(-1, target.shape[-1]).double()
        self.error += float((prediction.double() - target.double()).pow(2).sum())
        self.square += float(flat.pow(2).sum())
        self.sum = flat.sum(0) if self.sum is None else self.sum + flat.sum(0)
        self.count += len(flat)

    def value(self) -> float:
        spread = self.square - float(self.sum.pow(2).sum()) / self.count
        return self.error / max(spread, 1e-12)


@torch.no_grad()
def evaluate_bridges(run: Run | str | Path, data_dir: str | Path | None = None, max_tokens: int = 32768,
                     batch_size: int = 8, device: str | torch.device = "cpu") -> dict:
    """Per bridge site: NMSE of the encoder and the decoder, and the cross-entropy of the dense ->
    sparse and sparse -> dense hybrid passes, beside each model's own loss, on validation windows.
    `device`: where the models run ('cpu', 'cuda' or 'auto')."""
    run = as_run(run)
    sparse, dense, bridges = load_bridged_run(run, resolve_device(device))
    inputs, targets = run.data(data_dir).eval_windows("val", sparse.config.ctx_len, max_tokens)
    ce = lambda logits, y: float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
    sites = bridges.sites
    encoder, decoder = {s: _SumOfSquares() for s in sites}, {s: _SumOfSquares() for s in sites}
    hybrid = {s: {"dense_to_sparse": 0.0, "sparse_to_dense": 0.0} for s in sites}
    own = {"dense": 0.0, "sparse": 0.0}
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size].to(next(sparse.parameters()).device)
        dense_logits, dense_cache = dense.run_with_cache(x, sites)
        sparse_logits, sparse_cache = sparse.run_with_cache(x, sites)
        own["dense"] += ce(dense_logits, y)
        own["sparse"] += ce(sparse_logits, y)
        for site in sites:
            encoded, decoded = bridges.encode(site, dense_cache[site]), bridges.decode(site, sparse_cache[site])
            encoder[site].add(encoded, sparse_cache[site])
            decoder[site].add(decoded, dense_cache[site])
            hybrid[site]["dense_to_sparse"] += ce(sparse(x, start=site, residual=encoded), y)
            hybrid[site]["sparse_to_dense"] += ce(dense(x, start=site, residual=decoded), y)
    tokens = inputs.numel()
    rows = [{"site": s, "nmse_dense_to_sparse": encoder[s].value(), "nmse_sparse_to_dense": decoder[s].value(),
             "loss_dense_to_sparse": hybrid[s]["dense_to_sparse"] / tokens,
             "loss_sparse_to_dense": hybrid[s]["sparse_to_dense"] / tokens} for s in sites]
    return {"run_dir": str(run.path), "tokens": tokens, "dense_loss": own["dense"] / tokens,
            "sparse_loss": own["sparse"] / tokens, "sites": rows}


def format_table(result: dict) -> str:
    lines = [f"{result['tokens']:,} validation tokens; dense model {result['dense_loss']:.4f} nats/token, sparse model"
             f" {result['sparse_loss']:.4f}",
             f"{'site':14s} {'NMSE d->s':>10s} {'NMSE s->d':>10s} {'loss d->s':>10s} {'loss s->d':>10s}"]
    for row in result["sites"]:
        lines.append(f"{row['site']:14s} {row['nmse_dense_to_sparse']:10.4f} {row['nmse_sparse_to_dense']:10.4f}"
                     f" {row['loss_dense_to_sparse']:10.4f} {row['loss_sparse_to_dense']:10.4f}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from ..plots import pyplot, save

    plt = pyplot()
    sites = [row["site"] for row in result["sites"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(sites, [r["nmse_dense_to_sparse"] for r in result["sites"]], "o-", label="encoder (dense -> sparse)")
    left.plot(sites, [r["nmse_sparse_to_dense"] for r in result["sites"]], "s-", label="decoder (sparse -> dense)")
    left.set_ylabel("NMSE")
    left.set_title("How well each bridge maps")
    right.plot(sites, [r["loss_dense_to_sparse"] for r in result["sites"]], "o-", label="dense prefix -> sparse suffix")
    right.plot(sites, [r["loss_sparse_to_dense"] for r in result["sites"]], "s-", label="sparse prefix -> dense suffix")
    right.axhline(result["dense_loss"], color="k", linestyle="--", label="dense model")
    right.axhline(result["sparse_loss"], color="gray", linestyle=":", label="sparse model")
    right.set_ylabel("validation loss (nats/token)")
    right.set_title("Hybrid passes from each site")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=8)
    save(fig, path)


def run_bridge_eval(run: Run | str | Path, data_dir: str | Path | None = None, max_tokens: int = 32768,
                    device: str | torch.device = "cpu") -> dict:
    """Evaluate, print the table, and write bridge_eval.json and bridge_eval.png into the run."""
    run = as_run(run)
    run_dir = run.path
    result = evaluate_bridges(run, data_dir, max_tokens, device=device)
    print(format_table(result))
    atomic_write_text(run_dir / EVAL_FILE, json.dumps(result, indent=1))
    plot(result, run_dir / PLOT_FILE)
    print(f"wrote {run_dir / EVAL_FILE} and {run_dir / PLOT_FILE}", file=sys.stderr)
    return result
