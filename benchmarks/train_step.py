"""Tokens/s of full training steps (forward, backward, AdamW, weight top-k) on the reference config.

Reference: d_model 256, 4 layers, d_head 16, ctx 256, batch 16, vocab 2048, AbsTopK 1/4 at all
eight node sites, L0 fraction 1/16 (as after annealing), bigram table, attention sinks.
Four steps are timed, in interleaved rounds: each rate is the median round's, each ratio the median
over rounds of the two steps' times in the same round (so a slow spell of a shared machine slows
both sides of a ratio), shown with its range over rounds:
  sparse:   our step;
  baseline: the same math written the straightforward way (`sparsecircuits.model.reference`:
            AbsTopK by topk + scatter, a full topk per matrix, sinks through a dense mask);
  dense:    our step with the same shape and all sparsity (weights and activations) off;
  dense weights: weight sparsity off, AbsTopK on (the dense model `demo` compares against);
  authors sparse / authors dense: the authors' step on the same shape (`authors_step.py`: their
                                   GPT, Adam eps 0.1, global gradient RMS rescale, their weight
                                   top-k with 4 alive per neuron, manual weight decay), with and
                                   without AbsTopK and weight top-k.
Model FLOP/s counts the matmuls and attention a step executes (dense-equivalent, forward and
backward), against this machine's fp32 matmul FLOP/s measured in the same run.

Goals (issue "Sparsity for free"): sparse / dense time ratio <= 1.05, and ours >= 2x the authors'
sparse step. Where one is not met, what is left is shown: the time budget the authors' step leaves
against this machine's matmul rate, and the per-op profile of our sparse and dense steps
(`profile_step.py`; --no-profile: leave it out).

On CPU every step runs with `train.keep_freed_memory` as training sets it (`--no-keep-freed-memory`:
without).

    python benchmarks/train_step.py [--steps 2] [--rounds 8] [--threads N] [--device cpu|cuda] [--no-authors]
                                    [--cpu-bf16] [--compile] [--no-keep-freed-memory] [--no-profile]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time

import torch

from authors_step import AuthorsStep
from sparsecircuits.config import Config
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.reference import reference_kernels
from sparsecircuits.model.sparsity import apply_weight_topk, sparse_parameters
from sparsecircuits.train.runtime import keep_freed_memory
from sparsecircuits.train.trainer import make_optimizer, model_objective, training_step


def reference_config(sparse_weights: bool = True, sparse_activations: bool = True) -> Config:
    config = Config()
    m = config.model
    m.vocab_size, m.d_model, m.n_layer, m.d_head, m.ctx_len = 2048, 256, 4, 16, 256
    m.keep_fraction = 0.25 if sparse_activations else 1.0
    config.sparsity.l0_fraction = 1 / 16 if sparse_weights else 1.0
    config.train.batch_size = 16
    return config


def step_flops(model: SparseGPT, tokens: int, attention: bool = True) -> float:
    """Forward + backward FLOPs of one step: 6 per weight per token for the linear layers, and
    (unless `attention` is false) causal attention's two matmuls over on average (T + 1) / 2 keys."""
    config = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention_flops = config.n_layer * 2 * 2 * (config.ctx_len + 1) / 2 * config.heads * config.d_head
    return 3 * tokens * (2 * linear + attention_flops * attention)


def matmul_flops_per_second(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return repeats * 2 * size**3 / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TimedStep:
    """A model, its optimizer and a fixed batch, started from an annealed (top-k applied) state."""

    def __init__(self, config: Config, device: torch.device, kernels=contextlib.nullcontext):
        torch.manual_seed(0)
        self.config, self.kernels = config, kernels
        self.model = SparseGPT(config.model).to(device)
        self.optimizer = make_optimizer(self.model, config.optim)
        self.objective = model_objective(self.model, config)
        self.sparse = sparse_parameters(self.model, config.sparsity)
        apply_weight_topk(self.sparse, config.sparsity.l0_fraction, config.sparsity.min_nonzero_per_neuron, config.sparsity.min_nonzero_on)
        shape = (config.train.batch_size, config.model.ctx_len)
        self.x = torch.randint(0, config.model.vocab_size, shape, device=device)
        self.y = torch.randint(0, config.model.vocab_size, shape, device=device)
        self.seconds: list[float] = []

    def run(self, steps: int) -> None:
        with self.kernels():
            sync(self.x.device)
            start = time.perf_counter()
            for _ in range(steps):
                training_step(self.model, self.optimizer, self.sparse, self.x, self.y, self.config.optim.lr,
                              self.config.sparsity.l0_fraction, self.config, objective=self.objective)
            sync(self.x.device)
        self.seconds.append((time.perf_counter() - start) / steps)

    def tokens_per_second(self) -> float:
        return self.x.numel() / statistics.median(self.seconds)


def paired_ratio(slow: TimedStep, fast: TimedStep) -> tuple[float, float, float]:
    """slow's time over fast's, timed in the same rounds: the median over rounds, the lowest, the highest."""
    ratios = sorted(a / b for a, b in zip(slow.seconds, fast.seconds, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


def ratio_text(ratio: tuple[float, float, float]) -> str:
    return f"{ratio[0]:.2f}x (rounds {ratio[1]:.2f}-{ratio[2]:.2f})"


class TimedAuthorsStep(TimedStep):
    """The authors' step (`authors_step.AuthorsStep`) on the reference shape."""

    def __init__(self, config: Config, device: torch.device, sparse: bool):
        m = config.model
        self.authors = AuthorsStep(m.vocab_size, m.d_model, m.n_layer, m.d_head, m.ctx_len, config.train.batch_size,
                                   sparse, config.sparsity.l0_fraction, m.keep_fraction, m.attention_sinks, device)
        self.x, self.seconds = self.authors.tokens[:, :-1], []

    def run(self, steps: int) -> None:
        sync(self.x.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.authors.step()
        sync(self.x.device)
        self.seconds.append((time.perf_counter() - start) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-authors", action="store_true", help="leave out the authors' step")
    parser.add_argument("--cpu-bf16", action="store_true", help="also our sparse and dense steps with train.cpu_bf16")
    parser.add_argument("--compile", action="store_true", help="also our sparse and dense steps with train.compile")
    parser.add_argument("--no-keep-freed-memory", action="store_true",
                        help="leave glibc's malloc as it is (train.keep_freed_memory=false) for every step")
    parser.add_argument("--no-profile", action="store_true", help="no profile where a goal is not met")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Process-wide, as `train` sets it: every step below, the authors' included, runs under it.
    kept = device.type == "cpu" and not args.no_keep_freed_memory and keep_freed_memory()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"train.keep_freed_memory {'on' if kept else 'off'}")
    steps = {"sparse": TimedStep(reference_config(), device),
             "baseline": TimedStep(reference_config(), device, reference_kernels),
             "dense": TimedStep(reference_config(sparse_weights=False, sparse_activations=False), device),
             "dense weights": TimedStep(reference_config(sparse_weights=False), device)}
    if not args.no_authors:
        steps["authors sparse"] = TimedAuthorsStep(reference_config(), device, sparse=True)
        steps["authors dense"] = TimedAuthorsStep(reference_config(), device, sparse=False)
    if args.cpu_bf16:
        for name, config in (("sparse bf16", reference_config()), ("dense bf16", reference_config(False, False))):
            config.train.cpu_bf16 = True
            steps[name] = TimedStep(config, device)
    if args.compile:
        for name, config in (("sparse compiled", reference_config()), ("dense compiled", reference_config(False, False))):
            config.train.compile = True
            steps[name] = TimedStep(config, device)
    for step in steps.values():
        step.run(args.warmup)
        step.seconds.clear()
    for _ in range(args.rounds):
        for step in steps.values():
            step.run(args.steps)
    machine = matmul_flops_per_second(device)
    rate = {name: step.tokens_per_second() for name, step in steps.items()}
    flops = step_flops(steps["sparse"].model, steps["sparse"].x.numel())
    sparse_flops_per_s = flops * rate["sparse"] / steps["sparse"].x.numel()
    print(f"sparse step:   {rate['sparse']:,.0f} tokens/s")
    print(f"baseline step: {rate['baseline']:,.0f} tokens/s (straightforward kernels, same math)")
    print(f"dense step:    {rate['dense']:,.0f} tokens/s")
    print(f"dense-weights step (AbsTopK on): {rate['dense weights']:,.0f} tokens/s")
    print(f"sparse speed-up over baseline: {ratio_text(paired_ratio(steps['baseline'], steps['sparse']))}")
    sparse_over_dense = paired_ratio(steps["sparse"], steps["dense"])
    print(f"sparse / dense time ratio: {ratio_text(sparse_over_dense)} "
          f"(against dense weights with AbsTopK on: {ratio_text(paired_ratio(steps['sparse'], steps['dense weights']))})")
    goals = {"sparse / dense time ratio <= 1.05": sparse_over_dense[0] <= 1.05}
    if not args.no_authors:
        over_authors = paired_ratio(steps["authors sparse"], steps["sparse"])
        print(f"authors' step: sparse {rate['authors sparse']:,.0f} tokens/s, dense {rate['authors dense']:,.0f} tokens/s")
        print(f"ours / authors': sparse {ratio_text(over_authors)}, "
              f"dense {ratio_text(paired_ratio(steps['authors dense'], steps['dense']))}")
        goals["ours / authors' sparse step >= 2"] = over_authors[0] >= 2
    if args.cpu_bf16:
        print(f"with train.cpu_bf16: sparse {rate['sparse bf16']:,.0f} tokens/s, dense {rate['dense bf16']:,.0f} tokens/s;"
              f" sparse / dense time ratio {ratio_text(paired_ratio(steps['sparse bf16'], steps['dense bf16']))}")
        if not args.no_authors:
            print("ours with train.cpu_bf16 / authors' (fp32): sparse "
                  f"{ratio_text(paired_ratio(steps['authors sparse'], steps['sparse bf16']))}")
    if args.compile:
        print(f"with train.compile: sparse {rate['sparse compiled']:,.0f} tokens/s, dense {rate['dense compiled']:,.0f} tokens/s;"
              f" sparse / dense time ratio {ratio_text(paired_ratio(steps['sparse compiled'], steps['dense compiled']))}; compiled / eager:"
              f" sparse {rate['sparse compiled'] / rate['sparse']:.2f}x, dense {rate['dense compiled'] / rate['dense']:.2f}x")
        if not args.no_authors:
            print(f"ours compiled / authors': sparse {ratio_text(paired_ratio(steps['authors sparse'], steps['sparse compiled']))}")
    print(f"model FLOP/s: {sparse_flops_per_s / 1e9:.1f} GFLOP/s ({flops / 1e9:.1f} GFLOP per step); "
          f"machine fp32 matmul: {machine / 1e9:.1f} GFLOP/s; fraction {sparse_flops_per_s / machine:.2f}")
    print(f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print(f"sparse_tokens_per_s={rate['sparse']:.0f} dense_tokens_per_s={rate['dense']:.0f} "
          f"baseline_tokens_per_s={rate['baseline']:.0f}")
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'not met'}")
    if not all(goals.values()) and not args.no_profile and device.type == "cpu":
        print_what_is_left(steps, machine, max(args.steps, 3))


def print_what_is_left(steps: dict[str, TimedStep], machine_flops_per_s: float, profiled_steps: int) -> None:
    """Where a goal is not met: the time budget against the machine's matmul rate, then the profile."""
    from profile_step import print_profile

    ms = {name: 1000 * statistics.median(step.seconds) for name, step in steps.items()}
    dense = steps["dense"]
    matmul_ms = 1000 * step_flops(dense.model, dense.x.numel(), attention=False) / machine_flops_per_s
    print(f"\nwhat is left: ms/step sparse {ms['sparse']:.0f}, dense {ms['dense']:.0f}; the linear layers' matmuls"
          f" alone take {matmul_ms:.0f} at this machine's fp32 matmul rate")
    if "authors sparse" in ms:
        print(f"2x the authors' sparse step ({ms['authors sparse']:.0f} ms) leaves {ms['authors sparse'] / 2:.0f} ms/step:"
              f" {ms['authors sparse'] / 2 - matmul_ms:.0f} beside those matmuls, where our dense step spends"
              f" {ms['dense'] - matmul_ms:.0f} (attention, softmax, norms, optimizer) and our sparse step"
              f" {ms['sparse'] - matmul_ms:.0f}; fewer matmul FLOPs would need sparse weight matmuls (where they"
              " beat dense on this machine: benchmarks/sparse_kernels.py), or bf16 matmuls (train.cpu_bf16,"
              " --cpu-bf16), which round")
    print("the sparse step's own work is the top-k kernels below (selection in the forward, gradient masking in the"
          " backward, each a pass over an activation after its matmul); removing it needs the selection inside"
          " the matmul (a GEMM with a top-k epilogue)\n")
    print_profile(steps["sparse"], dense, profiled_steps)


if __name__ == "__main__":
    main()
