"""`sparsecircuits tasks audit`: does a degenerate cue answer the task, and what simple mechanism does?

Each predictor below is fitted on the task's train records and scored on its test records (the
accuracy of choosing the correct of the two candidates; a record it cannot decide counts one half).

Degenerate cues: a task one of these answers is flagged, since then the bigram table or position
carries the answer and a circuit says nothing about a mechanism:
- last token: a lookup table from the prompt's last token to the answer;
- length: one threshold on the prompt's length in tokens;
- bigram table (when a run is given): the run's learned bigram logits from the last token;
- position: a lookup table from the token at one of the first or last POSITIONS positions (or two
  adjacent ones) of the text before the prompt's last line (padding, a header, a comment above) to
  the answer; it flags above POSITION_FLAG, a lower bar. The last line is the line being written,
  the task's own content: its tokens at a fixed offset from the end are a mechanism (`for name`
  decides ` in` from two tokens back), read by the last-token and last-two-token predictors.

Likely mechanisms, reported and never flagged (which tokens appeared is exactly what the paper's
quote and bracket circuits read):
- bag of tokens: logistic regression on the counts of the prompt's tokens (order ignored);
- bag of the last line: the same on the tokens after the prompt's last newline;
- last two tokens: a lookup table from the prompt's last two tokens to the answer.

Every predictor answers in terms of the pair's two candidates: the label is whether the correct
completion is the first of the two in sorted order. With a run, the records are tokenised and
checked exactly as for pruning. Without a run, prompts are split into the
byte-level pre-tokens that `prepare`'s tokenizer starts from (no BPE token spans two of them), so
the last-token and bag predictors see at least as much as with any tokenizer `prepare` trains.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from ..errors import SparseCircuitsError
from .records import MIN_RECORDS, evaluate_task, load_task, load_task_splits, task_records

FLAG_ACCURACY = 0.70  # a task some degenerate cue answers this well on held-out records is flagged
POSITION_FLAG = 0.60  # ... or a token at a fixed position before the last line answers this well
POSITIONS = 4  # the first and last positions the position predictors read
DEGENERATE = ("last_token", "length", "bigram_table")
MECHANISMS = ("bag_of_tokens", "bag_of_last_line", "last_two_tokens")
PREDICTORS = DEGENERATE + MECHANISMS
NEWLINE = "\u010a"  # how the byte-level tokenizer writes "\n" inside a token


@dataclass
class Example:
    tokens: list[str] | list[int]
    label: int  # 1 when the correct completion sorts before the incorrect one
    pair: tuple[str, str]  # the two candidates, sorted (as text, or token ids written as text)
    candidate_ids: tuple[int, int] | None = None  # the pair's token ids, when tokenised by a run
    ids: list[int] | None = None  # the prompt's token ids, when tokenised by a run


def _examples(records: list[dict], split_tokens) -> list[Example]:
    out = []
    for r in records:
        pair = tuple(sorted((r["correct"], r["incorrect"])))
        out.append(Example(split_tokens(r["prompt"]), int(r["correct"] == pair[0]), pair))
    return out


def _accuracy(predictions: list[float], examples: list[Example]) -> float:
    """Mean agreement; a prediction of 0.5 (undecided) scores one half."""
    score = sum(0.5 if p == 0.5 else float((p > 0.5) == bool(e.label)) for p, e in zip(predictions, examples))
    return score / max(len(examples), 1)


def _lookup_accuracy(train: list[Example], test: list[Example], key) -> float:
    """Held-out accuracy of a lookup table from `key(example)` to the majority answer in train."""
    votes: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for e in train:
        votes[key(e)][e.label] += 1
    predictions = []
    for e in test:
        no, yes = votes.get(key(e), (0, 0))
        predictions.append(0.5 if yes == no else float(yes > no))
    return _accuracy(predictions, test)


def lookup_predictor(train: list[Example], test: list[Example], last: int = 1) -> float:
    """A lookup table from the prompt's last `last` tokens (and the candidate pair) to the answer."""
    return _lookup_accuracy(train, test, lambda e: (e.pair, tuple(e.tokens[-last:])))


def last_line(tokens: list[str]) -> list[str]:
    """The tokens after the last one that holds a newline (byte-level text)."""
    return tokens[last_line_start(tokens):]


def last_line_start(tokens: list[str]) -> int:
    """The index of the last line's first token (0 for a prompt of one line)."""
    ends = [i for i, t in enumerate(tokens) if NEWLINE in t]
    return ends[-1] + 1 if ends else 0


def position_spans() -> list[tuple[int, ...]]:
    """Offsets read by the position predictors in the text before the last line: each of its first and
    last POSITIONS positions, and each two adjacent ones."""
    start = [(i,) for i in range(POSITIONS)] + [(i, i + 1) for i in range(POSITIONS - 1)]
    end = [(-i,) for i in range(1, POSITIONS + 1)] + [(-i - 1, -i) for i in range(1, POSITIONS)]
    return start + end


def span_name(span: tuple[int, ...]) -> str:
    """(0,) -> 'token 1 from start'; (-4, -3) -> 'tokens 4-3 before last line'."""
    numbers = [i + 1 if i >= 0 else -i for i in span]
    side = "from start" if span[0] >= 0 else "before last line"
    return f"token {numbers[0]} {side}" if len(span) == 1 else f"tokens {numbers[0]}-{numbers[1]} {side}"


def position_predictor(train: list[Example], test: list[Example], span: tuple[int, ...]) -> float:
    """The held-out accuracy of a lookup table from the tokens at `span` of the text before the prompt's
    last line (and the candidate pair) to the answer. A position past that text reads as nothing."""
    def key(e: Example) -> tuple:
        context = [str(t) for t in e.tokens[:last_line_start(e.tokens)]]
        if context:  # the last newline's token also holds the last line's indent, which is the line's own
            context[-1] = context[-1][:context[-1].rindex(NEWLINE) + 1]
        n = len(context)
        return e.pair, tuple(context[i] if -n <= i < n else None for i in span)
    return _lookup_accuracy(train, test, key)


def length_predictor(train: list[Example], test: list[Example]) -> float:
    """The best threshold and direction on the train records' lengths, applied to the test records."""
    def predict(e: Example, cut: int, longer_means_first: bool) -> int:
        return int((len(e.tokens) >= cut) == longer_means_first)

    rules = [(cut, direction) for cut in sorted({len(e.tokens) for e in train}) for direction in (True, False)]
    cut, direction = max(rules, key=lambda rule: sum(predict(e, *rule) == e.label for e in train))
    return _accuracy([float(predict(e, cut, direction)) for e in test], test)


def bag_predictor(train: list[Example], test: list[Example], steps: int = 200, part=lambda tokens: tokens) -> float:
    """L2-regularised logistic regression on token counts (one weight per token seen in train), over
    `part` of each prompt's tokens (all of them by default)."""
    vocab = {t: i for i, t in enumerate(sorted({str(t) for e in train for t in part(e.tokens)}))}

    def counts(examples: list[Example]) -> torch.Tensor:
        x = torch.zeros(len(examples), len(vocab) + 1)
        x[:, -1] = 1.0  # bias
        for row, e in enumerate(examples):
            for token, n in Counter(str(t) for t in part(e.tokens)).items():
                if token in vocab:
                    x[row, vocab[token]] = n
        return x

    x, y = counts(train), torch.tensor([float(e.label) for e in train])
    weights = torch.zeros(x.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weights, y) + 1e-3 * weights[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        logits = counts(test) @ weights
    return _accuracy([0.5 if float(z) == 0 else float(z > 0) for z in logits], test)


def bigram_predictor(test: list[Example], bigram: torch.Tensor) -> float:
    """The run's bigram logits from the last token (nothing fitted: the table was learned in pretraining)."""
    predictions = []
    for e in test:
        row = bigram[e.ids[-1]]
        first, second = float(row[e.candidate_ids[0]]), float(row[e.candidate_ids[1]])
        predictions.append(0.5 if first == second else float(first > second))
    return _accuracy(predictions, test)


def _examples_of(task, tokenizer) -> list[Example]:
    """Examples from a task tokenised for a run (the records whose completions are single tokens), with
    each token as the tokenizer's byte-level text, so a newline can be found in it."""
    out = []
    for prompt, correct, incorrect in zip(task.prompts, task.correct.tolist(), task.incorrect.tolist()):
        pair = (min(correct, incorrect), max(correct, incorrect))
        out.append(Example([tokenizer.id_to_token(i) for i in prompt], int(correct == pair[0]), tuple(map(str, pair)),
                           pair, prompt))
    return out


AUDIT_MIN_RECORDS = 8  # per split


def audit_task(name_or_path: str, model=None, split: str = "test") -> dict:
    """Accuracy on the `split` records of each predictor fitted on the train records; `flagged`: the
    degenerate cues above FLAG_ACCURACY and the position predictors above POSITION_FLAG; `mechanisms`:
    the likely mechanisms above FLAG_ACCURACY. With `model`, prompts are tokenised (and checked) as for
    pruning, and its bigram table is tried. Pipelines that choose tasks by the audit score it on the
    choose records, so the test records decide nothing."""
    if model is None:
        from tokenizers import pre_tokenizers

        pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
        name, splits = task_records(name_or_path, warn=False)
        for part in ("train", split):  # a predictor fitted or scored on a handful of records says nothing
            if len(splits[part]) < AUDIT_MIN_RECORDS:
                raise SparseCircuitsError(
                    f"task {name} has {len(splits[part])} records in its {part} split, too few to audit (at least"
                    f" {AUDIT_MIN_RECORDS}; pruning needs {MIN_RECORDS}): a task file needs at least"
                    f" {5 * AUDIT_MIN_RECORDS} distinct records")
        train, test = (_examples(splits[part], lambda text: [piece for piece, _ in pre.pre_tokenize_str(text)])
                       for part in ("train", split))
    else:
        tokenized = load_task_splits(name_or_path, model.tokenizer, max_len=model.config.ctx_len, warn=False)
        name, train, test = (tokenized.name, _examples_of(tokenized.train, model.tokenizer),
                             _examples_of(tokenized[split], model.tokenizer))
    accuracy = {"last_token": lookup_predictor(train, test), "length": length_predictor(train, test)}
    bigram = getattr(model, "bigram", None) if model is not None else None
    if bigram is not None:
        accuracy["bigram_table"] = bigram_predictor(test, bigram.weight.detach().float().cpu())
    accuracy.update(bag_of_tokens=bag_predictor(train, test), bag_of_last_line=bag_predictor(train, test, part=last_line),
                    last_two_tokens=lookup_predictor(train, test, last=2))
    above = [p for p, a in accuracy.items() if a > FLAG_ACCURACY]
    positions = {span_name(span): position_predictor(train, test, span) for span in position_spans()}
    best = max(positions, key=positions.get)
    flagged = [p for p in above if p in DEGENERATE] + [p for p, a in positions.items() if a > POSITION_FLAG]
    return {"task": name, "records": {"train": len(train), "test": len(test)}, "accuracy": accuracy,
            "positions": positions, "best_position": {"position": best, "accuracy": positions[best]},
            "flagged": flagged, "mechanisms": [p for p in above if p in MECHANISMS]}


def score_tasks(model, names: list[str], split: str, warn: bool = False) -> dict[str, dict]:
    """Per task given: its name, loss, accuracy, records and dropped records on `split`, and which
    trivial cues answer it; a task that cannot be loaded for this model gets {"task", "error"}."""
    table = {}
    for name in names:
        try:
            task = load_task(name, model.tokenizer, split, max_len=model.config.ctx_len, warn=warn)
        except SparseCircuitsError as err:
            table[name] = {"task": name, "error": str(err)}
            continue
        table[name] = {"task": task.name, **evaluate_task(model, task), "dropped": task.dropped,
                       "audit_flagged": audit_task(name, model, split)["flagged"]}
    return table


def format_audit(rows: list[dict]) -> str:
    columns = [p for p in PREDICTORS if any(p in r["accuracy"] for r in rows)]
    degenerate = [c for c in columns if c in DEGENERATE]
    lines = [f"{'':31s}degenerate cues{'':>{16 * len(degenerate) + 32 - 15}s}likely mechanisms",
             f"{'task':30s} " + " ".join(f"{c:>15s}" for c in degenerate) + f" {'best position':>31s} "
             + " ".join(f"{c:>15s}" for c in columns if c in MECHANISMS) + "  verdict"]
    for r in rows:
        best = r["best_position"]
        cells = " ".join(f"{r['accuracy'][c]:15.0%}" if c in r["accuracy"] else f"{'':>15s}" for c in degenerate)
        position = f"{best['accuracy']:.0%} {best['position']}"
        cells += f" {position:>31s} "
        cells += " ".join(f"{r['accuracy'][c]:15.0%}" if c in r["accuracy"] else f"{'':>15s}" for c in columns
                          if c in MECHANISMS)
        verdict = "FLAGGED: " + ", ".join(r["flagged"]) if r["flagged"] else "pass"
        if r.get("mechanisms"):
            verdict += " (mechanism: " + ", ".join(r["mechanisms"]) + ")"
        lines.append(f"{r['task']:30s} {cells}  {verdict}")
    lines.append(f"(held-out accuracy of predictors fitted on the train records; a degenerate cue above {FLAG_ACCURACY:.0%}"
                 " flags the task; a mechanism above it is reported; best position: the most accurate token at a fixed"
                 f" position among the first and last {POSITIONS} before the last line, which flags above {POSITION_FLAG:.0%})")
    return "\n".join(lines)
