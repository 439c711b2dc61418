"""`sparsecircuits eval`: validation loss of a trained run beside count-based baselines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.dataset import TokenData
from ..errors import SparseCircuitsError
from ..model.sparsity import count_nonzeros, sparse_parameters
from ..rundir import Run, as_run, resolve_device
from .trainer import evaluate


def ngram_baselines(data: TokenData, max_tokens: int) -> dict[str, float]:
    """Validation cross-entropy of unigram and bigram models counted on the training split.

    The bigram is interpolated with the unigram, P(b|a) = (c(a,b) + beta P(b)) / (c(a) + beta),
    and the best beta of a small grid is reported, so the baseline is a strong one."""
    vocab = data.vocab_size
    train = np.asarray(data.splits["train"], dtype=np.int64)
    val = np.asarray(data.splits["val"][: max_tokens + 1], dtype=np.int64)
    if max(int(train.max(initial=0)), int(val.max(initial=0))) >= vocab:
        raise SparseCircuitsError(f"{data.directory} holds token ids outside its {vocab}-token vocabulary: prepare the"
                                  " data again")
    unigram = (np.bincount(train, minlength=vocab) + 0.5) / (len(train) + 0.5 * vocab)
    pairs = np.bincount(train[:-1] * vocab + train[1:], minlength=vocab * vocab).reshape(vocab, vocab)
    row_totals = pairs.sum(1)
    prev, nxt = val[:-1], val[1:]
    best = math.inf
    for beta in (0.1, 1.0, 10.0, 100.0):
        p = (pairs[prev, nxt] + beta * unigram[nxt]) / (row_totals[prev] + beta)
        best = min(best, float(-np.log(p).mean()))
    return {"unigram_loss": float(-np.log(unigram[nxt]).mean()), "bigram_loss": best}


def evaluate_run(run: Run | str | Path, data_dir: str | Path | None = None, max_tokens: int = 262144,
                 device: str = "cpu") -> dict[str, float]:
    """`sparsecircuits eval`: on up to `max_tokens` validation tokens of the run's data (or `data_dir`'s), the
    validation loss (nats/token) beside the unigram and bigram baselines', dead neurons, nonzero weights and
    the measured L0 fraction; the model runs on `device` ('cpu', 'cuda' or 'auto')."""
    run, device = as_run(run), resolve_device(device)
    model, data = run.model(device), run.data(data_dir)
    ctx = model.config.ctx_len
    inputs, targets = data.eval_windows("val", ctx, max_tokens)
    result = evaluate(model, inputs, targets, batch_size=16, device=device)
    if not math.isfinite(result["val_loss"]):  # finite weights can still overflow: never a nan reported as a result
        raise SparseCircuitsError(f"{run.path}: the validation loss is {result['val_loss']} (the model's activations overflow"
                                  " on this text): the weights are unusable; train the run again")
    result.update(ngram_baselines(data, inputs.numel()))
    result["val_tokens"] = int(inputs.numel())
    nonzero, total = count_nonzeros(sparse_parameters(model, run.config.sparsity))
    result.update({"nonzero_weights": nonzero, "sparse_weights": total, "l0_fraction_measured": nonzero / max(total, 1)})
    return result
