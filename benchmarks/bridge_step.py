"""The cost of a bridged training step against a plain one, timed in the same process.

Both steps train the same weight-sparse model (the `small` config's shape: d_model 128, 4 layers,
ctx 128, batch 16, L0 1/8); the bridged step also runs the frozen dense model (the same shape, dense
weights), the 8 encoders and decoders, and the 2 x 8 hybrid passes of `bridged_loss`. Rounds
alternate between the two; the median round counts.

    python benchmarks/bridge_step.py [--steps 5] [--rounds 3] [--config small] [--final-site]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsecircuits.bridges.bridge import BridgedObjective
from sparsecircuits.config import load_config
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.sparsity import apply_weight_topk, sparse_parameters
from sparsecircuits.train.trainer import make_optimizer, training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--final-site", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config, ["model.vocab_size=2048", f"bridge.final_site={str(args.final_site).lower()}"])
    torch.manual_seed(0)
    dense = SparseGPT(load_config(args.config, ["model.vocab_size=2048", "sparsity.l0_fraction=1.0"]).model)
    batch = config.train.batch_size
    x = torch.randint(0, 2048, (batch, config.model.ctx_len))
    y = torch.randint(0, 2048, (batch, config.model.ctx_len))

    setups = {}
    for name in ("plain", "bridged"):
        model = SparseGPT(config.model)
        sparse = sparse_parameters(model, config.sparsity)
        apply_weight_topk(sparse, config.sparsity.l0_fraction, config.sparsity.min_nonzero_per_neuron)
        objective = BridgedObjective(model, dense, config.bridge) if name == "bridged" else None
        trained = objective.trained if objective else model
        setups[name] = (trained, make_optimizer(trained, config.optim), sparse, objective)

    def run(name: str) -> float:
        trained, optimizer, sparse, objective = setups[name]
        start = time.perf_counter()
        for _ in range(args.steps):
            training_step(trained, optimizer, sparse, x, y, config.optim.lr, config.sparsity.l0_fraction, config,
                          objective=objective)
        return (time.perf_counter() - start) / args.steps

    for name in setups:
        run(name)  # warm-up
    times = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name in setups:
            times[name].append(run(name))
    tokens = batch * config.model.ctx_len
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.config} shape, {tokens:,} tokens per step, {torch.get_num_threads()} threads, {args.steps} steps x"
          f" {args.rounds} rounds (median round)")
    for name, seconds in median.items():
        print(f"  {name:8s} {seconds * 1000:8.1f} ms/step  {tokens / seconds:9,.0f} tokens/s")
    sites = len(setups["bridged"][3].bridges.sites)
    print(f"  bridged / plain: {median['bridged'] / median['plain']:.2f}x ({sites} bridge sites)")


if __name__ == "__main__":
    main()
