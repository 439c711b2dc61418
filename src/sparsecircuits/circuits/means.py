"""Mean activation of every node over pretraining text, through the same forward the masks see
(after AbsTopK), cached in the run directory."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..data.dataset import TokenData
from ..model.gpt import SparseGPT
from ..io import atomic_save_tensors
from ..train.evaluation import run_data

MEANS_FILE = "node_means.safetensors"


@torch.no_grad()
def compute_means(model: SparseGPT, data: TokenData, n_tokens: int = 65536, batch_size: int = 16,
                  show_progress: bool = True) -> dict[str, torch.Tensor]:
    ctx = model.config.ctx_len
    inputs, _ = data.eval_windows("train", ctx, n_tokens)
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


def load_or_compute_means(model: SparseGPT, run_dir: str | Path, n_tokens: int = 65536,
                          show_progress: bool = True) -> dict[str, torch.Tensor]:
    """Means cached in RUN_DIR/node_means.safetensors, tied to the weights' sha256 and recomputed
    when the weights or n_tokens changed."""
    run_dir = Path(run_dir)
    path = run_dir / MEANS_FILE
    digest = model.weights_sha256
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("model") == digest and meta.get("tokens") == str(n_tokens):
                    return {site: f.get_tensor(site) for site in model.node_sites}
        except Exception:  # a damaged cache is simply recomputed
            pass
    means = compute_means(model, run_data(run_dir, None), n_tokens, show_progress=show_progress)
    atomic_save_tensors(path, means, metadata={"model": digest, "tokens": str(n_tokens)})
    return means
