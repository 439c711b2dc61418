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
from ..rundir import MEANS_FILE, recorded_data_dir
from ..train.evaluation import run_data


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
                          show_progress: bool = True, data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Means over `data_dir` (default: the run's own data), cached in RUN_DIR/node_means.safetensors,
    tied to the weights' sha256, and recomputed when the weights, n_tokens or a given `data_dir` changed."""
    run_dir = Path(run_dir)
    path = run_dir / MEANS_FILE
    digest = model.weights_sha256
    own = recorded_data_dir(run_dir)
    own = str(own) if own else None
    wanted = str(Path(data_dir).resolve()) if data_dir is not None else own
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                cached = meta.get("data", own)  # caches that predate this key were made from the run's own data
                if meta.get("model") == digest and meta.get("tokens") == str(n_tokens) and wanted in (None, cached):
                    return {site: f.get_tensor(site) for site in model.node_sites}
        except Exception:  # a damaged cache is simply recomputed
            pass
    data = run_data(run_dir, data_dir)
    means = compute_means(model, data, n_tokens, show_progress=show_progress)
    atomic_save_tensors(path, means, metadata={"model": digest, "tokens": str(n_tokens), "data": str(data.directory.resolve())})
    return means
