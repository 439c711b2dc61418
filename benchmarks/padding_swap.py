"""Does a circuit read its task, or the padding that balanced the task's pairs?

Tasks made before commit "tasks: one comment line above both prompts of a pair" balanced a pair by
padding only its shorter prompt (a leading "\\n" or "# words\\n" line), so the first token named the
answer. This script scores each circuit of a demo on its test records twice: as generated, and with
each pair's padding moved to the other prompt of the pair. A circuit (or model) that reads the
padding goes from below the target to far above chance; one that reads the task barely moves.

Run it with the task code the circuits were pruned on, e.g. a worktree of the older commit:

    git worktree add /tmp/before d987041
    PYTHONPATH=/tmp/before/src python benchmarks/padding_swap.py demo --json padding_swap.json

Prints one row per circuit: records swapped, full-model and circuit loss before and after; with
--run RUN --tasks a,b,... also the full model's loss on tasks it has no circuit for.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparsecircuits.circuits.circuit import Circuit, ablation_values
from sparsecircuits.tasks.records import pair_logits, task_loss, task_records, tokenize_records


def leading_padding(prompt: str) -> str:
    """The padding an old generator put before a prompt: a lone leading newline or a leading comment
    line (no paper-suite prompt starts with either by itself)."""
    if prompt.startswith("\n"):
        return "\n"
    if prompt.startswith("#"):
        return prompt[: prompt.index("\n") + 1]
    return ""


def swap_padding(records: list[dict]) -> tuple[list[dict], int]:
    """Each consecutive pair with its padding moved to the other prompt; the number of pairs changed."""
    out, swapped = [], 0
    for first, second in zip(records[::2], records[1::2]):
        pads = leading_padding(first["prompt"]), leading_padding(second["prompt"])
        if pads[0] != pads[1]:
            swapped += 1
        out += [{**first, "prompt": pads[1] + first["prompt"][len(pads[0]):]},
                {**second, "prompt": pads[0] + second["prompt"][len(pads[1]):]}]
    return out, swapped


def score(model, task_name: str, circuit: Circuit | None = None, means=None) -> dict:
    """Full-model (and circuit) loss on the task's test records as generated and with the padding swapped."""
    name, splits = task_records(task_name, warn=False)
    swapped_records, swapped = swap_padding(splits["test"])
    row = {"task": name, "pairs": len(splits["test"]) // 2, "pairs_swapped": swapped,
           "nodes": circuit.metrics["n_nodes"] if circuit else None}
    for label, records in (("as_generated", splits["test"]), ("padding_swapped", swapped_records)):
        task = tokenize_records(name, "test", records, model.tokenizer, model.config.ctx_len, warn=False)
        row[f"full_model_{label}"] = float(task_loss(pair_logits(model, task)))
        if circuit is not None:
            with circuit.only(model, means):
                row[f"circuit_{label}"] = float(task_loss(pair_logits(model, task)))
    return row


def score_circuit(circuit_dir: Path) -> dict:
    circuit = Circuit.load(circuit_dir)
    run = circuit.open_run()
    model = run.model()
    means = ablation_values(model, run, circuit.data["ablation"], False, circuit.means_data)
    return score(model, circuit.task_source(), circuit, means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path, help="a demo folder (its circuits/sparse/*) or one circuit folder")
    parser.add_argument("--run", type=Path, help="also score this run's full model on --tasks")
    parser.add_argument("--tasks", default="", help="comma list of tasks for --run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    folders = [args.demo] if (args.demo / "circuit.json").is_file() else sorted(
        p for p in (args.demo / "circuits" / "sparse").iterdir() if (p / "circuit.json").is_file())
    rows = [score_circuit(folder) for folder in folders]
    if args.run:
        from sparsecircuits.rundir import Run

        model = Run.open(args.run).model()
        rows += [score(model, t) for t in args.tasks.split(",") if t and t not in {r["task"] for r in rows}]
    print(f"{'task':28s} {'swapped':>8s} {'nodes':>6s} {'full model':>22s} {'circuit':>22s}")
    print(f"{'':28s} {'pairs':>8s} {'':6s} {'generated -> swapped':>22s} {'generated -> swapped':>22s}")
    for r in rows:
        circuit = (f" {r['circuit_as_generated']:10.3f} -> {r['circuit_padding_swapped']:7.3f}" if r["nodes"] else
                   f" {'-':>21s}")
        print(f"{r['task']:28s} {r['pairs_swapped']:4d}/{r['pairs']:<3d} {r['nodes'] or '-':>6}"
              f" {r['full_model_as_generated']:10.3f} -> {r['full_model_padding_swapped']:7.3f}{circuit}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
