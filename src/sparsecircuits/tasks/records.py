"""Tasks as data: records `{prompt, correct, incorrect}`, loading, the tokenisation check, the loss.

Task loss (docs/method.md 2): at the prompt's last position take the log-softmax over just the two
candidate tokens; the loss is the cross-entropy of the correct one, averaged over records.
"""

from __future__ import annotations

import math

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SparseCircuitsError
from ..io import iter_jsonl
from .builtin import ALL_TASKS, generate

MIN_RECORDS = 32
# Three disjoint splits (docs/method.md 3): the mask trains on "train", the node count (and any search
# trial) is chosen on "choose", and "test" is touched only by the figures reported for a circuit.
SPLITS = ("train", "choose", "test")
N_RECORDS = {"train": 512, "choose": 256, "test": 256}
FIELDS = ("prompt", "correct", "incorrect")


def builtin_records(name: str) -> dict[str, list[dict]]:
    """Train records from seed 0; choose and test records from later seeds, each pair's prompts
    new to every split before it."""
    train = generate(name, N_RECORDS["train"] // 2, seed=0)
    seen = {r["prompt"] for r in train}
    held = N_RECORDS["choose"] + N_RECORDS["test"]
    held_out: list[dict] = []
    batch_seed = 1
    while len(held_out) < held and batch_seed < 64:
        for first, second in zip(*[iter(generate(name, held, seed=batch_seed))] * 2):
            if first["prompt"] not in seen and second["prompt"] not in seen and len(held_out) < held:
                held_out += [first, second]
                seen.update((first["prompt"], second["prompt"]))
        batch_seed += 1
    half = 2 * (len(held_out) // 4)  # a task with few distinct prompts shares them evenly, in whole pairs
    cut = N_RECORDS["choose"] if len(held_out) == held else half
    return {"train": train, "choose": held_out[:cut], "test": held_out[cut:]}


def record_problem(record) -> str | None:
    """What is wrong with one task record ({prompt, correct, incorrect}, each text), or None."""
    if not isinstance(record, dict):
        return f"a record must be an object with {', '.join(FIELDS)}, not {type(record).__name__}"
    missing = [f for f in FIELDS if not isinstance(record.get(f), str)]
    if missing:
        return f"missing or non-string field '{missing[0]}' (need {', '.join(FIELDS)})"
    for field in FIELDS:
        try:
            record[field].encode("utf-8")
        except UnicodeEncodeError as err:
            return f"field '{field}' holds a lone surrogate (character {err.start}), which is not text: write the character itself"
    return None


def read_jsonl_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise SparseCircuitsError(f"task file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark some editors write is dropped
    except UnicodeDecodeError as err:
        raise SparseCircuitsError(f"{path} is not UTF-8 text (byte {err.start} is not valid UTF-8): save the task file"
                                  " as UTF-8") from None
    records = []
    for line_no, record in iter_jsonl(path, text):
        if not isinstance(record, dict):
            raise SparseCircuitsError(f"{path}:{line_no}: each line must be a JSON object with {', '.join(FIELDS)}")
        found = record_problem(record)
        if found:
            raise SparseCircuitsError(f"{path}:{line_no}: {found}")
        if record["correct"] == record["incorrect"]:
            raise SparseCircuitsError(f"{path}:{line_no}: 'correct' and 'incorrect' are the same ({record['correct']!r}):"
                                      " the two candidate completions must differ")
        records.append({f: record[f] for f in FIELDS})
    return records


def task_records(name_or_path: str, warn: bool = True) -> tuple[str, dict[str, list[dict]]]:
    """(task name, {split: records}) for a built-in name or a JSONL file.

    A JSONL task's records are taken in consecutive pairs, dealt to the splits five pairs at a time:
    three to train, one to choose, one to test. Repeated records are dropped first, and so are
    records whose prompt already occurs in an earlier split, so no split scores what another holds."""
    if name_or_path in ALL_TASKS:
        return name_or_path, builtin_records(name_or_path)
    path = Path(name_or_path)
    if path.suffix != ".jsonl" and not path.exists():
        raise SparseCircuitsError(
            f"unknown task '{name_or_path}': give a JSONL file or a built-in task (`sparsecircuits tasks list"
            " --suite paper|hard`)"
        )
    records = read_jsonl_records(path)
    unique = list({tuple(r[f] for f in FIELDS): r for r in records}.values())  # in order of first appearance
    deal = {0: "train", 1: "train", 2: "train", 3: "choose", 4: "test"}
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    for split in SPLITS:
        splits[split] = [r for i, r in enumerate(unique) if deal[(i // 2) % 5] == split and r["prompt"] not in seen]
        seen.update(r["prompt"] for r in splits[split])
    repeated, leaked = len(records) - len(unique), len(unique) - sum(map(len, splits.values()))
    if (repeated or leaked) and warn:
        print(f"warning: task {path.stem}: dropped {repeated} repeated records and {leaked} held-out records whose"
              " prompt is also in an earlier split", file=sys.stderr)
    return path.stem, splits


# A pass's fixed cost in padded token positions, and the most groups a batch is split into by width
# (TokenizedTask.width_groups; measured by benchmarks/prune_time.py).
GROUP_COST = 256
MAX_GROUPS = 4


@dataclass
class TokenizedTask:
    """A task's records as token ids, ready for batches. Prompts are right-padded; the loss reads
    the logits at each prompt's own last position, which causal attention keeps independent of
    the padding."""

    name: str
    split: str
    prompts: list[list[int]]
    correct: torch.Tensor
    incorrect: torch.Tensor
    dropped: int
    pad_id: int

    def __len__(self) -> int:
        return len(self.prompts)

    def width_groups(self, indices: torch.Tensor | list[int] | None = None) -> list[list[int]]:
        """`indices` (default: all) in groups of similar prompt width, each to be one batch: a batch
        costs about its rows times its widest prompt, so a batch of prompts 7 to 45 tokens wide spends
        much of its time on padding. The groups minimise the padded positions plus `GROUP_COST` per
        group (a pass's fixed cost), at most `MAX_GROUPS` of them."""
        indices = range(len(self.prompts)) if indices is None else [int(i) for i in indices]
        by_width: dict[int, list[int]] = {}
        for i in indices:
            by_width.setdefault(len(self.prompts[i]), []).append(i)
        widths = sorted(by_width)
        counts = [len(by_width[w]) for w in widths]
        # best[g][j]: the least cost of the first j widths in g groups, and where its last group starts
        best = [[(0.0, 0)] + [(math.inf, 0)] * len(widths)]
        for g in range(1, MAX_GROUPS + 1):
            row = [(math.inf, 0)] * (len(widths) + 1)
            for j in range(1, len(widths) + 1):
                rows = 0
                for i in range(j, 0, -1):  # the last group holds widths i-1 .. j-1
                    rows += counts[i - 1]
                    cost = best[g - 1][i - 1][0] + rows * widths[j - 1] + GROUP_COST
                    if cost < row[j][0]:
                        row[j] = (cost, i - 1)
            best.append(row)
        g = min(range(1, MAX_GROUPS + 1), key=lambda g: best[g][len(widths)][0]) if widths else 0
        groups, j = [], len(widths)
        while g > 0:
            i = best[g][j][1]
            groups.append([k for w in widths[i:j] for k in by_width[w]])
            g, j = g - 1, i
        return groups[::-1]

    def padded_width(self) -> float:
        """Positions a pass over these records computes per record, batches grouped by width: what a
        mask step costs in proportion to."""
        groups = self.width_groups()
        return sum(len(g) * max(len(self.prompts[i]) for i in g) for g in groups) / max(1, len(self.prompts))

    def batch(self, indices: torch.Tensor | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, L), last positions (B,), correct ids (B,), incorrect ids (B,))."""
        if indices is None:
            indices = range(len(self.prompts))
        indices = [int(i) for i in indices]
        width = max(len(self.prompts[i]) for i in indices)
        tokens = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        for row, i in enumerate(indices):
            tokens[row, : len(self.prompts[i])] = torch.tensor(self.prompts[i])
        last = torch.tensor([len(self.prompts[i]) - 1 for i in indices])
        return tokens, last, self.correct[indices], self.incorrect[indices]


def tokenize_records(name: str, split: str, records: list[dict], tokenizer, max_len: int | None = None,
                     warn: bool = True, min_records: int = MIN_RECORDS) -> TokenizedTask:
    """Keep the records whose completions are single tokens that follow the prompt's own tokens
    (at least `min_records` of them)."""
    prompts, correct, incorrect = [], [], []
    dropped = 0
    for number, record in enumerate(records):
        found = record_problem(record)
        if found:
            raise ValueError(f"task {name} ({split}), record {number}: {found}")
        ids = tokenizer.encode(record["prompt"]).ids
        candidates = []
        for completion in (record["correct"], record["incorrect"]):
            completion_ids = tokenizer.encode(completion).ids
            joined = tokenizer.encode(record["prompt"] + completion).ids
            candidates.append(completion_ids[0] if len(completion_ids) == 1 and joined == ids + completion_ids else None)
        if not ids or None in candidates or candidates[0] == candidates[1] or (max_len and len(ids) > max_len):
            dropped += 1
            continue
        prompts.append(ids)
        correct.append(candidates[0])
        incorrect.append(candidates[1])
    if dropped and warn:
        print(f"warning: task {name} ({split}): dropped {dropped} of {len(records)} records whose completions are not"
              " single tokens after the prompt (or whose prompt is empty or too long)", file=sys.stderr)
    if len(records) < min_records:  # too few before any was dropped: the file is short
        raise SparseCircuitsError(
            f"task {name} has {len(records)} records in its {split} split, fewer than {min_records}: pairs are dealt 3 to"
            f" train, 1 to choose and 1 to test, so a task file needs at least {5 * min_records} distinct records"
            f" ({5 * min_records // 2} pairs)")
    if len(prompts) < min_records:
        raise SparseCircuitsError(
            f"task {name} ({split}) has {len(prompts)} usable records of {len(records)}, fewer than {min_records}:"
            " each completion must be one token of this model's tokenizer, and prompt + completion must tokenise as"
            " the prompt's tokens followed by it"
        )
    eot = tokenizer.token_to_id("<|endoftext|>")
    return TokenizedTask(name, split, prompts, torch.tensor(correct), torch.tensor(incorrect), dropped,
                         eot if eot is not None else 0)


def load_task(name_or_path: str, tokenizer, split: str = "train", max_len: int | None = None,
              warn: bool = True) -> TokenizedTask:
    """A built-in task or a JSONL file, tokenised and checked against `tokenizer`."""
    if split not in SPLITS:
        raise SparseCircuitsError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    name, splits = task_records(name_or_path, warn)
    return tokenize_records(name, split, splits[split], tokenizer, max_len, warn)


@dataclass
class TaskSplits:
    """A task's three splits, tokenised for one model."""

    train: TokenizedTask
    choose: TokenizedTask
    test: TokenizedTask

    def __getitem__(self, split: str) -> TokenizedTask:
        return getattr(self, split)

    @property
    def name(self) -> str:
        return self.train.name

    def counts(self) -> dict[str, int]:
        return {split: len(self[split]) for split in SPLITS} | {"dropped": sum(self[s].dropped for s in SPLITS)}


def load_task_splits(name_or_path: str, tokenizer, max_len: int | None = None, warn: bool = True) -> TaskSplits:
    """All three splits, from one read of the task's records."""
    name, splits = task_records(name_or_path, warn)
    return TaskSplits(*(tokenize_records(name, split, splits[split], tokenizer, max_len, warn and split == "train")
                        for split in SPLITS))


def candidate_logits(final: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
    """(B, 2) logits of [correct, incorrect] from each prompt's last-position logits (B, vocab)."""
    return torch.stack([final.gather(-1, correct.to(final.device)[:, None])[:, 0],
                        final.gather(-1, incorrect.to(final.device)[:, None])[:, 0]], dim=-1).float()


def task_loss(pair_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the correct candidate under a softmax over the two candidates."""
    return F.cross_entropy(pair_logits, torch.zeros(len(pair_logits), dtype=torch.long, device=pair_logits.device))


def task_loss_interval(pair_logits: torch.Tensor, seed: int = 0, resamples: int = 1000,
                       level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of the task loss over records (resampled with replacement)."""
    losses = F.cross_entropy(pair_logits.float().cpu(), torch.zeros(len(pair_logits), dtype=torch.long), reduction="none")
    generator = torch.Generator().manual_seed(seed)
    means = losses[torch.randint(len(losses), (resamples, len(losses)), generator=generator)].mean(dim=1)
    low, high = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    return round(low, 5), round(high, 5)


def task_accuracy(pair_logits: torch.Tensor) -> float:
    return float((pair_logits[:, 0] > pair_logits[:, 1]).float().mean())


@torch.no_grad()
def pair_logits(model, task: TokenizedTask, hooks: Mapping | None = None, batch_size: int = 256) -> torch.Tensor:
    """(N, 2) candidate logits of every record, under optional hooks."""
    device = next(model.parameters()).device
    out, order = [], []
    with model.hooks(hooks or {}):
        for group in task.width_groups():
            for start in range(0, len(group), batch_size):
                rows = group[start:start + batch_size]
                tokens, last, correct, incorrect = task.batch(rows)
                out.append(candidate_logits(model(tokens.to(device), at=last), correct, incorrect))
                order += rows
    return torch.cat(out)[torch.tensor(order).argsort()]


def evaluate_task(model, task: TokenizedTask) -> dict[str, float]:
    logits = pair_logits(model, task)
    return {"loss": float(task_loss(logits)), "accuracy": task_accuracy(logits), "records": len(task)}
