"""Which mix of generated simple Python and the standard library a small model learns most from.

For each share of simple-Python tokens, prepares a corpus, trains the `small` config for the demo's
step count, and reports: validation loss (whole mix) beside its unigram and bigram baselines; the
loss per character on each part's own validation text (comparable across mixes, whose tokenizers
differ); and how many of the 20 paper-suite tasks the model does on their choose records (the split
choices are made on: a share picked on test records would leak them into every figure reported). Finished stages
are reused, so a rerun after changing the tasks only re-scores them.

    python benchmarks/corpus_mix.py --out /tmp/corpus-mix [--shares 0 0.33 0.67 1] [--steps 3000]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from sparsecircuits.config import load_config
from sparsecircuits.experiments.claim import does_with_margin
from sparsecircuits.data.dataset import TokenData
from sparsecircuits.data.prepare import DEFAULT_GENERATED_TOKENS, MANIFEST, SIMPLE_PYTHON, STDLIB, default_corpus_root, prepare
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.tasks import BUILTIN_TASKS
from sparsecircuits.tasks.audit import score_tasks
from sparsecircuits.train.evaluation import evaluate_run
from sparsecircuits.train.trainer import evaluate, train_or_continue

STDLIB_TOKENS = 10_800_000  # the standard library's training tokens under a 2048-token BPE (a prepared manifest)
TARGET = 0.15


def corpus_for(share: float) -> tuple[list[str], int]:
    if share <= 0:
        return [STDLIB], 0
    if share >= 1:
        return [SIMPLE_PYTHON], DEFAULT_GENERATED_TOKENS
    return [STDLIB, SIMPLE_PYTHON], round(STDLIB_TOKENS * share / (1 - share))


def parts_of(data: TokenData) -> list[dict]:
    """Manifest parts; a manifest written before parts were recorded holds one corpus."""
    if "parts" in data.manifest:
        return data.manifest["parts"]
    corpus = data.manifest["corpus"][0]
    return [{"corpus": STDLIB if corpus == str(default_corpus_root()) else corpus, "tokens": data.manifest["tokens"]}]


def part_losses(model: SparseGPT, data: TokenData, max_tokens: int = 131072) -> dict[str, float]:
    """Nats per character of each part's validation text (the val split holds the parts in order)."""
    ctx, tokenizer, out, start = model.config.ctx_len, data.tokenizer(), {}, 0
    for part in parts_of(data):
        n = part["tokens"]["val"]
        tokens = torch.from_numpy(data.splits["val"][start : start + n].astype("int64"))
        start += n
        windows = min(max_tokens, n - 1) // ctx
        x = tokens[: windows * ctx].view(windows, ctx)
        y = tokens[1 : windows * ctx + 1].view(windows, ctx)
        loss = evaluate(model, x, y, batch_size=16, device=torch.device("cpu"))["val_loss"]
        chars = len(tokenizer.decode(tokens[1 : windows * ctx + 1].tolist(), skip_special_tokens=True))
        out[part["corpus"]] = loss * y.numel() / chars
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/corpus-mix")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.33, 0.67, 1.0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--config", default="small")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data stay those of seed 0): rerun to see seed noise")
    args = parser.parse_args()

    rows = []
    for share in args.shares:
        folder = Path(args.out) / f"share-{share:g}"
        corpus, tokens = corpus_for(share)
        if not (folder / "data" / MANIFEST).is_file():
            prepare(folder / "data", corpus=corpus, generated_tokens=tokens, force=True)
        run = folder / ("run" if args.seed == 0 else f"run-seed{args.seed}")
        train_or_continue(load_config(args.config, [f"train.steps={args.steps}", f"train.seed={args.seed}"]), folder / "data", run)
        data, model = TokenData(folder / "data"), SparseGPT.from_pretrained(run)
        train_tokens = {p["corpus"]: p["tokens"]["train"] for p in parts_of(data)}
        scores = score_tasks(model, list(BUILTIN_TASKS), "choose")
        losses = {t: r["loss"] for t, r in scores.items()}
        row = {"share": share, "simple_share_measured": train_tokens.get(SIMPLE_PYTHON, 0) / sum(train_tokens.values()),
               **evaluate_run(run), "nats_per_char": part_losses(model, data), "task_losses": losses,
               "tasks_at_target": sum(v <= TARGET for v in losses.values()),
               "tasks_at_margin": sum(does_with_margin(v, TARGET) for v in losses.values()),
               "mean_task_loss": sum(losses.values()) / len(losses)}
        rows.append(row)
        (folder / f"result{'' if args.seed == 0 else f'-seed{args.seed}'}.json").write_text(json.dumps(row, indent=1))

    print(f"{'share':>6} {'val':>7} {'bigram':>7} {'unigram':>7} {'stdlib/ch':>9} {'simple/ch':>9} {'tasks<=.15':>10} {'<=.075':>7} {'mean task':>9}")
    for r in rows:
        per_char = r["nats_per_char"]
        print(f"{r['simple_share_measured']:6.2f} {r['val_loss']:7.4f} {r['bigram_loss']:7.4f} {r['unigram_loss']:7.4f}"
              f" {per_char.get(STDLIB, math.nan):9.4f} {per_char.get(SIMPLE_PYTHON, math.nan):9.4f}"
              f" {r['tasks_at_target']:10d} {r['tasks_at_margin']:7d} {r['mean_task_loss']:9.3f}")
    names = list(rows[0]["task_losses"]) if rows else []
    print("\n" + f"{'task':28s}" + "".join(f"{r['simple_share_measured']:8.2f}" for r in rows))
    for name in names:
        print(f"{name:28s}" + "".join(f"{r['task_losses'][name]:8.3f}" for r in rows))


if __name__ == "__main__":
    main()
