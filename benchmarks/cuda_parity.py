"""The same training steps on CPU and on CUDA: losses, weights and nonzero patterns side by side.

Both copies start from one initialisation and see the same batches. The CUDA run is repeated
twice: in fp32 (autocast off) and under the bf16 autocast that training uses on CUDA (8 bits of
mantissa, about 0.4% relative error per product). The first step's loss and gradients show the
arithmetic itself: fp32 agrees to float rounding, bf16 to a few parts in a thousand. Later steps
drift apart in both, as any two summation orders do under Adam (which turns a gradient's sign,
however small, into a full-size update) and top-k (which flips near-tied weights in or out).
Under bf16, AbsTopK also selects from rounded activations, so near the k-th magnitude it keeps
other channels than fp32 does; `--keep-fraction 1` shows the arithmetic without that selection.

    python benchmarks/cuda_parity.py [--steps 20] [--config small]
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch

from sparsecircuits.config import load_config
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.sparsity import sparse_parameters
from sparsecircuits.train import trainer


def run_steps(model: SparseGPT, config, batches, device: torch.device, bf16: bool) -> list[float]:
    model = model.to(device)
    optimizer = trainer.make_optimizer(model, config.optim)
    sparse = sparse_parameters(model, config.sparsity)
    losses = []
    original = trainer.autocast
    if not bf16:  # training_step picks its autocast through this module attribute
        trainer.autocast = lambda device: contextlib.nullcontext()
    try:
        for step, (x, y) in enumerate(batches):
            lr = trainer.lr_at(step, len(batches), config.sparsity.l0_fraction, config.optim)
            loss, _ = trainer.training_step(model, optimizer, sparse, x.to(device), y.to(device), lr,
                                            config.sparsity.l0_fraction, config)
            losses.append(float(loss))
    finally:
        trainer.autocast = original
    return losses


def first_gradients(model: SparseGPT, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model = copy.deepcopy(model).to(x.device)
    context = trainer.autocast(x.device) if bf16 else contextlib.nullcontext()
    with context:
        loss = model.loss(x, y)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def compare(name: str, reference: tuple[SparseGPT, list[float]], other: tuple[SparseGPT, list[float]],
            first_reference: tuple[float, dict[str, torch.Tensor]], first: tuple[float, dict[str, torch.Tensor]]) -> None:
    (ref_model, ref_losses), (model, losses) = reference, other
    first_loss = abs(first[0] - first_reference[0]) / abs(first_reference[0])
    grads = sorted((relative(g, first[1][n]), n) for n, g in first_reference[1].items())
    print(f"{name}: first step: loss differs by {first_loss:.1e} (relative); gradients by {grads[len(grads) // 2][0]:.1e}"
          f" (median over tensors of the relative norm of the difference), at most {grads[-1][0]:.1e} ({grads[-1][1]})")
    loss_rel = max(abs(a - b) / abs(a) for a, b in zip(ref_losses, losses))
    weights = [(p.detach().cpu(), q.detach().cpu()) for p, q in zip(ref_model.parameters(), model.parameters())]
    worst_weight = max(relative(p, q) for p, q in weights)
    matrices = [(p, q) for p, q in weights if p.dim() >= 2]
    agree = sum(int(((p != 0) == (q != 0)).sum()) for p, q in matrices) / sum(p.numel() for p, _ in matrices)
    print(f"  after {len(losses)} steps: losses differ by at most {loss_rel:.1e} (relative); weights by at most "
          f"{worst_weight:.1e} (relative norm, worst tensor); nonzero pattern agrees on {agree:.4%} of weights")
    print(f"  losses cpu {['%.4f' % v for v in ref_losses[::5]]}")
    print(f"  losses     {['%.4f' % v for v in losses[::5]]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--config", default="small")
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU")
    parser.add_argument("--keep-fraction", type=float, help="AbsTopK's model.keep_fraction (1: off)")
    args = parser.parse_args()
    config = load_config(args.config)
    config.model.vocab_size = 2048
    if args.keep_fraction is not None:
        config.model.keep_fraction = args.keep_fraction
    torch.manual_seed(0)
    initial = SparseGPT(config.model)
    shape = (config.train.batch_size, config.model.ctx_len)
    # Walks through a fixed random permutation of the vocabulary: the next token is learnable, so the
    # gradients carry signal (on random tokens they are a residue of cancelling noise, mostly rounding).
    successor = torch.randperm(config.model.vocab_size)
    walks = torch.empty(args.steps, shape[0], shape[1] + 1, dtype=torch.long)
    walks[..., 0] = torch.randint(0, config.model.vocab_size, walks.shape[:2])
    for t in range(1, shape[1] + 1):
        walks[..., t] = successor[walks[..., t - 1]]
    batches = [(w[:, :-1], w[:, 1:]) for w in walks]
    cuda = torch.device(args.device)
    name = torch.cuda.get_device_name(cuda) if cuda.type == "cuda" else args.device
    print(f"torch {torch.__version__}, {name}, config {args.config}, {args.steps} steps")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x, y = batches[0]
    cpu_first = first_gradients(initial, x, y, bf16=False)
    cpu = copy.deepcopy(initial)
    cpu_run = (cpu, run_steps(cpu, config, batches, torch.device("cpu"), bf16=False))
    for bf16 in (False, True):
        other = copy.deepcopy(initial)
        other_run = (other, run_steps(other, config, batches, cuda, bf16=bf16))
        other_first = first_gradients(initial, x.to(cuda), y.to(cuda), bf16=bf16)
        compare(f"{args.device} {'bf16 autocast' if bf16 else 'fp32'} vs cpu fp32", cpu_run, other_run, cpu_first, other_first)


if __name__ == "__main__":
    main()
