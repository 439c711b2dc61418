"""Where CSR kernels beat dense matmuls for frozen sparse weights: the crossover density.

For each linear-layer shape of the `small` and reference configs, times x @ W.T (forward) and
forward + input gradient (what pruning's mask training needs) with dense and CSR weights at a
range of densities, and prints the largest density at which CSR is still faster.

    python benchmarks/sparse_kernels.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

from sparsecircuits.model.sparse_kernels import CSR_MAX_DENSITY, sparse_weight_kernels

DENSITIES = [1 / 64, 1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2]
SHAPES = {  # (in, out, tokens per batch)
    "small attn 128->128": (128, 128, 2560), "small fc 128->512": (128, 512, 2560),
    "small proj 512->128": (512, 128, 2560), "small lm_head 128->2048": (128, 2048, 2560),
    "ref attn 256->256": (256, 256, 4096), "ref fc 256->1024": (256, 1024, 4096),
    "ref proj 1024->256": (1024, 256, 4096), "ref lm_head 256->2048": (256, 2048, 4096),
}


def milliseconds(fn, repeats: int) -> float:
    """Median of single calls: this machine's timings have outliers."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def time_layer(linear: nn.Linear, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    grad = torch.randn(x.shape[0], linear.out_features)
    forward = milliseconds(lambda: linear(x.detach()), repeats)
    both = milliseconds(lambda: linear(x).backward(grad), repeats)
    return forward, both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in ms, dense / csr")
    print(f"{'shape':26s} {'density':>8s} {'forward':>15s} {'fwd+grad(x)':>15s}")
    crossovers = {}
    for name, (fan_in, fan_out, tokens) in SHAPES.items():
        linear = nn.Linear(fan_in, fan_out).requires_grad_(False)
        x = torch.randn(tokens, fan_in, requires_grad=True)
        best = {"forward": 0.0, "fwd+grad": 0.0}
        for density in DENSITIES:
            linear.weight.copy_(torch.randn(fan_out, fan_in) * (torch.rand(fan_out, fan_in) < density))
            dense = time_layer(linear, x, args.repeats)
            with sparse_weight_kernels(linear, max_density=1.0):
                csr = time_layer(linear, x, args.repeats)
            print(f"{name:26s} {density:8.3f} {dense[0]:7.2f} /{csr[0]:6.2f} {dense[1]:7.2f} /{csr[1]:6.2f}")
            for key, d, c in zip(best, dense, csr):
                if c < d:
                    best[key] = density
        crossovers[name] = best
    print("\nlargest density at which CSR was faster (0: never at these densities):")
    for name, best in crossovers.items():
        print(f"  {name:26s} forward {best['forward']:.3f}  forward+input gradient {best['fwd+grad']:.3f}")
    worst = min(min(b.values()) for b in crossovers.values())
    print(f"crossover_density_min={worst:.3f} default_csr_max_density={CSR_MAX_DENSITY}")


if __name__ == "__main__":
    main()
