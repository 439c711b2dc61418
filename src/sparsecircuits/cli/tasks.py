"""`sparsecircuits` subcommands. Tasks: tasks list, audit and eval."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import SparseCircuitsError
from .args import device_argument, NON_NEGATIVE, suite_argument, EXIT_VALIDATION_FAILED


def cmd_tasks_list(args: argparse.Namespace) -> None:
    from ..tasks import DESCRIPTIONS, suite_tasks
    from ..tasks.builtin import FLAGGED

    for name in suite_tasks(args.suite):
        description = DESCRIPTIONS[name]
        flagged = FLAGGED.get(name, [])
        print(f"{name:28s} {description}" + (f"  [FLAGGED by `tasks audit`: {', '.join(flagged)}]" if flagged else ""))


def cmd_tasks_audit(args: argparse.Namespace) -> None:
    from ..model.gpt import SparseGPT
    from ..tasks import suite_tasks
    from ..tasks.audit import audit_task, format_audit

    model = SparseGPT.from_pretrained(args.run_dir) if args.run_dir else None
    names = args.tasks or suite_tasks(args.suite)
    rows = []
    for name in names:
        try:
            rows.append(audit_task(name, model))
        except SparseCircuitsError as err:
            if len(names) == 1:
                raise
            print(f"warning: {name} not audited: {err}", file=sys.stderr)
    print(json.dumps(rows, indent=1) if args.json else format_audit(rows))
    if any(r["flagged"] for r in rows):
        sys.exit(EXIT_VALIDATION_FAILED)


def cmd_tasks_eval(args: argparse.Namespace) -> None:
    from ..rundir import Run
    from ..tasks import suite_tasks
    from ..tasks.audit import score_tasks

    run = Run.open(args.run_dir)
    model = (run if args.step is None else run.at_step(args.step)).model(args.device)
    names = args.task or suite_tasks(args.suite)
    table = score_tasks(model, names, args.split, warn=len(names) == 1)
    if len(names) == 1 and "error" in table[names[0]]:
        raise SparseCircuitsError(table[names[0]]["error"])
    overflowed = [row["task"] for row in table.values() if "loss" in row and not math.isfinite(row["loss"])]
    if overflowed:
        raise SparseCircuitsError(f"{args.run_dir}: the task loss of {overflowed[0]} is not finite (the model's activations"
                                  " overflow): the weights are unusable; train the run again")
    rows = list(table.values())
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'task':28s} {'loss':>7s} {'accuracy':>8s} {'records':>7s}  trivial cue (`tasks audit`)")
    for row in rows:
        if "error" in row:
            print(f"{row['task']:28s} {'-':>7s} {'-':>8s} {'-':>7s}  unavailable: {row['error']}")
        else:
            flagged = ", ".join(row["audit_flagged"]) or "none"
            print(f"{row['task']:28s} {row['loss']:7.4f} {row['accuracy']:8.3f} {row['records']:7d}  {flagged}")


def register_tasks(sub) -> None:
    tasks = sub.add_parser("tasks", help="list the built-in tasks, or score a model on tasks")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    p = tasks_sub.add_parser("list", help="the built-in tasks and what each one tests")
    suite_argument(p)
    p.set_defaults(func=cmd_tasks_list)
    p = tasks_sub.add_parser("audit", help="does a degenerate cue (last token, length, a token at a fixed position, bigram"
                                           " table) answer a task, and what simple mechanism does?",
                             description="Held-out accuracy of predictors fitted on each task's train records. Degenerate "
                                         "cues flag a task: the prompt's last token or its length (above 70%), a token at "
                                         "one of the first or last four positions of the text before the last line, or two "
                                         "adjacent ones (above 60%, the position named), and with --run-dir the run's "
                                         "bigram table (above 70%). Likely mechanisms are reported: a bag of the prompt's "
                                         "tokens, a bag of its last line's tokens, its last two tokens. Exits 1 when a task "
                                         "is flagged.")
    p.add_argument("tasks", nargs="*", metavar="TASK", help="built-in tasks or JSONL files (default: every task of --suite)")
    suite_argument(p)
    p.add_argument("--run-dir", metavar="RUN_DIR", help="tokenise with this run's tokenizer and try its bigram table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks_audit)
    p = tasks_sub.add_parser("eval", help="task loss and accuracy of a trained model",
                             description="Task loss (two-way cross-entropy at the last position) and accuracy per task.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--task", action="append", metavar="NAME_OR_FILE",
                   help="a built-in task or a JSONL file (repeatable; default: every task of --suite)")
    suite_argument(p)
    p.add_argument("--split", choices=["train", "choose", "test"], default="test",
                   help="which records to score (default test; the mask trains on train, node counts are chosen on choose)")
    p.add_argument("--step", type=NON_NEGATIVE, metavar="STEP",
                   help="score the model kept at this training step (train.keep_every) instead of the final one")
    p.add_argument("--json", action="store_true")
    device_argument(p)
    p.set_defaults(func=cmd_tasks_eval)


# each top-level command and the function that adds it to the parser
COMMANDS = {"tasks": register_tasks}
