"""Peak resident memory of training and pruning, for the `small` and the reference config.

Each case runs in its own process and reports its peak RSS (`ru_maxrss`), the RSS after imports
(the interpreter and torch), and the model's parameter bytes. Training runs a few full steps
(forward, backward, AdamW, weight top-k). Pruning runs mask training and held-out evaluation on a
built-in task with a model whose weights are top-k'd to the config's L0 (the memory of pruning does
not depend on what the weights have learned); its extra memory is what it needs beyond the loaded
model: activations for the task batch, node means and masks.

Training runs under `train.keep_freed_memory` as `train` sets it (`--no-keep-freed-memory`: without).

    python benchmarks/memory.py [--cases train-small,prune-small,train-reference,prune-reference] [--no-keep-freed-memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CASES = ["train-small", "prune-small", "train-reference", "prune-reference"]


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_case(case: str, keep_freed: bool = True) -> dict:
    import torch

    sys.path.insert(0, "benchmarks")
    from train_step import reference_config

    from sparsecircuits.config import load_config
    from sparsecircuits.model.gpt import SparseGPT
    from sparsecircuits.model.sparsity import apply_weight_topk, sparse_parameters

    after_imports = rss_mib()
    kind, size = case.split("-")
    if size == "small":
        config = load_config("small", [])
        config.model.vocab_size = 2048
    else:
        config = reference_config()
    torch.manual_seed(0)
    model = SparseGPT(config.model)
    sparse = sparse_parameters(model, config.sparsity)
    apply_weight_topk(sparse, config.sparsity.l0_fraction, config.sparsity.min_nonzero_per_neuron, config.sparsity.min_nonzero_on)
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    after_model = rss_mib()
    state_mib = 0.0
    if kind == "train":
        from sparsecircuits.train.runtime import keep_freed_memory
        from sparsecircuits.train.trainer import make_optimizer, training_step

        if keep_freed and config.train.keep_freed_memory:  # as `train` does
            keep_freed_memory()
        optimizer = make_optimizer(model, config.optim)
        shape = (config.train.batch_size, config.model.ctx_len)
        x, y = torch.randint(0, 2048, shape), torch.randint(0, 2048, shape)
        for _ in range(3):
            training_step(model, optimizer, sparse, x, y, config.optim.lr, config.sparsity.l0_fraction, config)
    else:
        from sparsecircuits.circuits.find import CircuitEvaluator, PruneSettings, train_mask
        from sparsecircuits.data.dataset import TokenData, ensure_default_data
        from sparsecircuits.tasks.records import load_task_splits

        tokenizer = TokenData(ensure_default_data(2048)).tokenizer()
        splits = load_task_splits("single_double_quote", tokenizer, warn=False)
        train = splits.train
        means = {site: torch.zeros(width) for site, width in model.node_sites.items()}
        mask = train_mask(model, train, means, PruneSettings(steps=10), show_progress=False)
        keep = {site: tau > 0 for site, tau in mask.scores().items()}
        CircuitEvaluator(model, splits, means).logits(keep)
        tau_bytes = sum(p.numel() * p.element_size() for p in mask.parameters())
        state_mib = (sum(m.numel() * m.element_size() for m in means.values()) + 3 * tau_bytes) / 2**20  # τ + AdamW moments
    return {"case": case, "pruning_state_mib": round(state_mib, 2) if kind == "prune" else None, "model_params_mib": round(model_mib, 1), "rss_after_imports_mib": round(after_imports, 1),
            "rss_after_model_mib": round(after_model, 1), "peak_rss_mib": round(peak_mib(), 1),
            "peak_over_model_load_mib": round(peak_mib() - after_model, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--no-keep-freed-memory", action="store_true", help="train with train.keep_freed_memory=false")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, not args.no_keep_freed_memory)))
        return
    print("MiB:")
    print(f"{'case':16s} {'params':>7s} {'after imports':>13s} {'after model':>11s} {'peak RSS':>9s} {'peak - model load':>17s}"
          f" {'means+masks+optimizer':>21s}")
    for case in args.cases.split(","):
        flags = ["--no-keep-freed-memory"] if args.no_keep_freed_memory else []
        out = subprocess.run([sys.executable, __file__, "--case", case, *flags], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        state = "" if r["pruning_state_mib"] is None else f"{r['pruning_state_mib']:21.2f}"
        print(f"{case:16s} {r['model_params_mib']:7.1f} {r['rss_after_imports_mib']:13.1f} {r['rss_after_model_mib']:11.1f}"
              f" {r['peak_rss_mib']:9.1f} {r['peak_over_model_load_mib']:17.1f} {state}")


if __name__ == "__main__":
    main()
