"""`sparsecircuits` subcommands. Experiments: demo, compare, sweep."""

from __future__ import annotations

import argparse

from ..config import builtin_grids
from ..experiments.budget import DEMO_MINUTES
from ..experiments.claim import CLAIM_SEEDS, CLAIM_TARGETS
from .args import device_argument, POSITIVE, TASK_LOSS, real, targets, suite_argument, prune_default


def cmd_demo(args: argparse.Namespace) -> None:
    from ..experiments.demo import demo

    tasks = args.tasks if args.tasks in ("auto", "all") else [t for t in args.tasks.split(",") if t]
    demo(args.out, minutes=args.minutes, tasks=tasks, max_tasks=args.max_tasks, target_loss=args.target_loss,
         config=args.config, overrides=args.set, corpus=args.corpus, control=not args.no_control, dense_set=args.dense_set,
         suite=args.suite, claim_targets=args.claim_targets, claim_seeds=args.claim_seeds, plan_only=args.plan,
         device=args.device)


def cmd_compare(args: argparse.Namespace) -> None:
    from ..experiments.compare import common_tasks, compare, geomean_edges

    targets = args.targets
    rows = compare(args.run_a, args.run_b, args.out, tasks=args.tasks.split(",") if args.tasks else None,
                   targets=targets, margin=args.margin, keep_flagged=args.keep_flagged, device=args.device)
    labels = list(dict.fromkeys(r["model"] for r in rows))
    print(f"{'target':>7s} " + " ".join(f"{label[:20]:>20s}" for label in labels)
          + "   (geometric-mean edges over the tasks both models reach)")
    for target in sorted(targets):
        cells = [geomean_edges(rows, label, target) for label in labels]
        print(f"{target:7.3f} " + " ".join(f"{c:20.1f}" if c else f"{'-':>20s}" for c in cells)
              + f"   {len(common_tasks(rows, target))} tasks")
    print(f"wrote {args.out}/compare.csv and {args.out}/compare.png")


def cmd_sweep(args: argparse.Namespace) -> None:
    from ..data.dataset import ensure_default_data
    from ..experiments.sweep import sweep

    rows = sweep(args.grid, args.out, args.data or ensure_default_data(), device=args.device)
    print(f"{'run':40s} {'val loss':>8s} {'tasks':>5s} {'edges (geo. mean)':>17s}")
    for r in rows:
        edges = f"{r['edges_geomean']:.1f}" if r["edges_geomean"] else "-"
        print(f"{r['run']:40s} {r['val_loss']:8.4f} {r['tasks_learned']:5d} {edges:>17s}")
    print(f"wrote {args.out}/frontier.csv and {args.out}/frontier.png")


def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: corpus -> sparse and dense models -> validated circuits -> report",
                       description="Prepare the default corpus; train a weight-sparse model, a dense model of the same "
                                   "shape on the same tokens, and dense models of finished schedules until two bracket the "
                                   "sparse model's validation loss; prune, validate, label and view every task the sparse "
                                   "model does; draw claim (a) (weight edges, the best of several pruning seeds, at targets "
                                   "0.075, 0.15, 0.3 and 0.5) against the dense model at the sparse loss and the stronger "
                                   "dense model, over the tasks every model does with margin; write DIR/report.html and "
                                   "DIR/summary.json. Resumable.")
    p.add_argument("--out", default="demo", metavar="DIR", help="output directory (default ./demo)")
    p.add_argument("--minutes", type=real(0, 1e6, low_open=True), default=DEMO_MINUTES,
                   help="wall-time budget of the whole run on this machine: a plan shares it among the stages (training"
                        " keeps the config's steps while they fit half of it) and cuts, aloud, what does not fit"
                        f" (default {DEMO_MINUTES:g}: every stage on 2 CPU cores, claim (a) cut to what fits)")
    p.add_argument("--plan", action="store_true", help="time this machine, print the plan for --minutes and stop")
    p.add_argument("--tasks", default="auto", help="'auto' or 'all' (every task of --suite), or a comma list")
    p.add_argument("--max-tasks", type=POSITIVE, metavar="N",
                   help="circuits for only the N tasks the sparse model does best (default: every task it does)")
    p.add_argument("--target-loss", type=TASK_LOSS, default=prune_default("target_loss"))
    p.add_argument("--config", default="small", metavar="NAME_OR_FILE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--dense-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="an override for both dense models, after --set (e.g. model.d_model=64 for a smaller dense model)")
    p.add_argument("--corpus", nargs="+", metavar="SOURCE", help="corpus instead of the default (the standard library with simple-python): stdlib, simple-python, folders or files (as prepare --corpus)")
    p.add_argument("--no-control", action="store_true", help="skip the nonsense-rule and shuffled-label pruning controls")
    p.add_argument("--claim-targets", type=targets, default=CLAIM_TARGETS, metavar="T1,T2,...",
                   help=f"claim (a)'s target losses (default {','.join(map(str, CLAIM_TARGETS))})")
    p.add_argument("--claim-seeds", type=POSITIVE, default=CLAIM_SEEDS, metavar="N",
                   help=f"pruning seeds per model, task and target in claim (a); the smallest circuit that meets the"
                        f" target on the choose records is kept (default {CLAIM_SEEDS})")
    suite_argument(p)
    device_argument(p, trains=True)
    p.set_defaults(func=cmd_demo)


def register_compare(sub) -> None:
    p = sub.add_parser("compare", help="circuit edges vs target loss for two models (PNG + CSV)")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--out", default="compare", metavar="DIR", help="where compare.csv and compare.png go (default ./compare)")
    p.add_argument("--tasks", help="comma-separated tasks or JSONL files (default: every built-in task both models learned)")
    p.add_argument("--targets", type=targets, default="0.5,0.3,0.15,0.05", help="target losses (default 0.5,0.3,0.15,0.05)")
    p.add_argument("--margin", type=real(0, 1, low_open=True), default=0.5,
                   help="at each target, prune the tasks both models do to loss <= MARGIN x the target (default 0.5)")
    p.add_argument("--keep-flagged", action="store_true",
                   help="also compare tasks `tasks audit` flags (a degenerate cue answers them; left out by default)")
    device_argument(p)
    p.set_defaults(func=cmd_compare)


def register_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="train a grid of models, prune their tasks, plot the capability-interpretability frontier",
                       description="Finished runs and circuits under DIR are reused, so a sweep can be stopped and continued.")
    p.add_argument("--grid", required=True, metavar="GRID", help="a grid TOML file, or a built-in grid: " + ", ".join(builtin_grids()))
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data (default: the default corpus, prepared and cached)")
    device_argument(p, trains=True)
    p.set_defaults(func=cmd_sweep)


# each top-level command and the function that adds it to the parser
COMMANDS = {"demo": register_demo, "compare": register_compare, "sweep": register_sweep}
