"""Tokens/s of full training steps (forward, backward, AdamW, weight top-k) on the reference config.

Reference: d_model 256, 4 layers, d_head 16, ctx 256, batch 16, vocab 2048, AbsTopK 1/4 at all
eight node sites, L0 fraction 1/16 (as after annealing), bigram table, attention sinks.
The dense run has the same shape with all sparsity (weights and activations) off.

    python benchmarks/train_step.py [--steps 10] [--warmup 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from sparsecircuits.config import Config
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.sparsity import apply_weight_topk, sparse_parameters
from sparsecircuits.train.trainer import make_optimizer, training_step


def reference_config(sparse: bool) -> Config:
    config = Config()
    m = config.model
    m.vocab_size, m.d_model, m.n_layer, m.d_head, m.ctx_len = 2048, 256, 4, 16, 256
    m.keep_fraction = 0.25 if sparse else 1.0
    config.sparsity.l0_fraction = 1 / 16 if sparse else 1.0
    config.train.batch_size = 16
    return config


def tokens_per_second(config: Config, steps: int, warmup: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = SparseGPT(config.model).to(device)
    optimizer = make_optimizer(model, config.optim)
    sparse = sparse_parameters(model, config.sparsity)
    fraction = config.sparsity.l0_fraction
    apply_weight_topk(sparse, fraction, config.sparsity.min_nonzero_per_neuron)  # start from an annealed model
    batch, ctx = config.train.batch_size, config.model.ctx_len
    x = torch.randint(0, config.model.vocab_size, (batch, ctx), device=device)
    y = torch.randint(0, config.model.vocab_size, (batch, ctx), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        training_step(model, optimizer, sparse, x, y, config.optim.lr, fraction, config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch * ctx / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    sparse = tokens_per_second(reference_config(True), args.steps, args.warmup, device)
    dense = tokens_per_second(reference_config(False), args.steps, args.warmup, device)
    print(f"sparse step: {sparse:,.0f} tokens/s")
    print(f"dense step:  {dense:,.0f} tokens/s")
    print(f"sparse / dense time ratio: {dense / sparse:.2f}x")
    print(f"sparse_tokens_per_s={sparse:.0f} dense_tokens_per_s={dense:.0f}")


if __name__ == "__main__":
    main()
