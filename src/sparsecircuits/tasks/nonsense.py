"""A consistent but meaningless rule over a task's own prompts: the nonsense-rule control.

The published critique of circuit pruning: a mask can find a small "circuit" for a task whose answer
follows a rule that is learnable but has nothing to do with the task. Shuffled labels alone cannot
test this (they are noise no mask can fit on held-out records), so the control keeps the prompts and
the two candidates and lets a meaningless feature of the prompt choose the answer: the parity of the
length of one of its names. The name is the first position (counting names left to right) whose
parity splits the task's training records most evenly while agreeing with the real answer no more
often than chance allows, so the rule is neither a constant answer nor the task itself.
"""

from __future__ import annotations

import re

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_POSITION = 12  # names scanned from the left


def _names(prompt: str) -> list[str]:
    return NAME.findall(prompt)


def _first_is_right(record: dict) -> bool:
    return record["correct"] < record["incorrect"]


def nonsense_position(records: list[dict]) -> int | None:
    """The name position whose length parity is most balanced over `records` and independent of the
    real answer (agreeing with it on 40% to 60% of records); None if there is none."""
    best, best_balance = None, 0.0
    for position in range(MAX_POSITION):
        named = [(len(names[position]) % 2, _first_is_right(r)) for r, names in
                 ((r, _names(r["prompt"])) for r in records) if len(names) > position]
        if len(named) < len(records):  # every prompt must have a name there
            break
        odd = sum(parity for parity, _ in named) / len(named)
        agreement = sum((parity == 0) == first for parity, first in named) / len(named)
        balance = min(odd, 1 - odd) if abs(agreement - 0.5) <= 0.1 else 0.0
        if balance > best_balance + 0.02:  # the earliest of nearly equal positions
            best, best_balance = position, balance
    return best


def nonsense_rule(splits: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], str]:
    """The same prompts and candidates per split, with the answer set by the rule; and the rule in words.

    Of the two candidates (in sorted order) the first is right when the chosen name's length is even;
    a held-out prompt with fewer names is left out."""
    position = nonsense_position(splits["train"])
    if position is None:
        raise ValueError("no name in these prompts varies in the parity of its length")

    def relabel(record: dict) -> dict | None:
        names = _names(record["prompt"])
        if len(names) <= position:
            return None
        first, second = sorted((record["correct"], record["incorrect"]))
        even = len(names[position]) % 2 == 0
        return {"prompt": record["prompt"], "correct": first if even else second,
                "incorrect": second if even else first}

    rule = (f"the parity of the length of name {position + 1} of the prompt (counted from the left) picks"
            " the answer")
    relabelled = {split: [r for r in map(relabel, records) if r is not None] for split, records in splits.items()}
    return relabelled, rule
