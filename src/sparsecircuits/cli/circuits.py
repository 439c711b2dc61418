"""`sparsecircuits` subcommands. Circuits: prune, validate, cleanup, paths, view, explain, label."""

from __future__ import annotations

import argparse
import sys

from ..errors import SparseCircuitsError
from .args import (device_argument, force_argument, integer, POSITIVE, NON_NEGATIVE, TASK_LOSS, real, step_list, suite_argument, prune_default,
                   EXIT_VALIDATION_FAILED)


def cmd_prune(args: argparse.Namespace) -> None:
    from ..circuits.prune import PruneSettings, prune
    from ..tasks.builtin import resolve_task

    fixed = {} if args.k_coef is None else {"penalty": "fixed", "k_coef": args.k_coef}
    settings = PruneSettings(target_loss=args.target_loss, ablation=args.ablation, steps=args.steps, lr=args.lr,
                             seed=args.seed, choose_margin=args.choose_margin, csr_max_density=args.csr_max_density,
                             method=args.method, edges=args.edges, **fixed)
    if args.method == "attribution" and (args.search or args.k_coef is not None):
        raise SparseCircuitsError("--search and --k-coef tune the learned mask: drop them with --method attribution")
    circuit = prune(args.run_dir, resolve_task(args.task, args.suite), args.out, settings, search_trials=args.search,
                    force=args.force, data_dir=args.data, device=args.device)
    m = circuit.metrics
    # the random draws each get a fitted logit scale: they stand beside the circuit's calibrated loss
    print(f"{circuit.task}: {m['n_nodes']} nodes, {m['n_edges']} weight edges; task loss: full model {m['loss_full_model']:.4f},"
          f" circuit {m['loss_circuit']:.4f}, circuit ablated {m['loss_circuit_ablated']:.4f}; with fitted logit scales:"
          f" circuit {m['loss_circuit_calibrated']:.4f}, random same size {m['loss_random_same_size']:.4f};"
          f" wrote {args.out}/circuit.json ({m['seconds']:.0f} s)")
    if "edge_circuit" in circuit.data:
        e = circuit.data["edge_circuit"]["metrics"]
        print(f"edge circuit: {e['n_nodes']} nodes, {e['n_edges']} weight edges (of {e['weight_edges_before']});"
              f" task loss {e['loss_circuit']:.4f} (test), {e['loss_choose']:.4f} (choose)"
              + ("" if e["reached"] else "; no edge count met the target"))


def cmd_validate(args: argparse.Namespace) -> None:
    from ..circuits.validate import format_validation, validate

    result = validate(args.circuit_dir, args.run_dir, control=not args.no_control, task=args.task, device=args.device)
    print(format_validation(result))
    if not result["evidence"]:
        sys.exit(EXIT_VALIDATION_FAILED)


def cmd_cleanup(args: argparse.Namespace) -> None:
    from ..circuits.cleanup import cleanup, format_cleanup

    print(format_cleanup(cleanup(args.circuit_dir, args.run_dir, task=args.task, device=args.device)))
    print(f"wrote {args.circuit_dir}/cleanup.json")


def cmd_paths(args: argparse.Namespace) -> None:
    from ..circuits.paths import format_paths, paths

    result = paths(args.circuit_dir, args.run_dir, task=args.task, device=args.device)
    for which in ("node", "edge"):
        if result[which] is not None:
            print(f"{which} circuit: " + format_paths(result[which], top=args.top))
    print(f"wrote {args.circuit_dir}/paths.json")


def cmd_view(args: argparse.Namespace) -> None:
    from ..viewer import view

    view(args.circuit_dir, args.out, args.run_dir, force=args.force, task=args.task, device=args.device)


def cmd_evolve(args: argparse.Namespace) -> None:
    from ..circuits.prune import PruneSettings
    from ..experiments.evolve import evolve, format_evolution
    from ..tasks.builtin import resolve_task

    result = evolve(args.run_dir, resolve_task(args.task, args.suite), args.out, PruneSettings(target_loss=args.target_loss),
                    steps=args.steps, control=not args.no_control, device=args.device)
    print(format_evolution(result))
    print(f"wrote {args.out}/evolution.json, evolution.png and evolution.html")


def cmd_explain(args: argparse.Namespace) -> None:
    from ..circuits.explain import format_contexts, node_examples
    from ..rundir import Run

    run = Run.open(args.run_dir)
    examples = node_examples(run.model(args.device), run.data(args.data), node_names=args.node, top=args.top,
                             n_tokens=args.tokens)
    for name, example in examples.items():
        print(f"== {name}")
        print(format_contexts(example, color=sys.stdout.isatty() and not args.no_color))


def cmd_label(args: argparse.Namespace) -> None:
    from ..circuits.labels import format_labels, label_run

    result, out = label_run(args.run_dir, args.node, args.circuit, args.tokens, args.data, args.threshold, args.out,
                            force=args.force, device=args.device)
    if len(result["nodes"]) <= 200:
        print(format_labels(result))
    labelled = sum(bool(node["labels"]) for node in result["nodes"])
    print(f"{labelled} of {len(result['nodes'])} nodes labelled above threshold; wrote {out}")


def register_prune(sub) -> None:
    p = sub.add_parser("prune", help="find the smallest circuit that does a task",
                       description="Learn a node mask, bisect the number of kept nodes to meet --target-loss on held-out "
                                   "records, calibrate a logit scale, count edges, and write CIRCUIT_DIR/circuit.json.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--task", required=True, metavar="NAME_OR_FILE",
                   help="a built-in task (see `tasks list`) or a JSONL file; with --suite hard, a paper task's name means"
                        " its hard form")
    suite_argument(p)
    p.add_argument("--out", required=True, metavar="CIRCUIT_DIR")
    p.add_argument("--target-loss", type=TASK_LOSS, default=prune_default("target_loss"), help="held-out task loss the circuit must reach (default %(default)s)")
    p.add_argument("--ablation", choices=["mean", "zero"], default="mean", help="what pruned nodes are frozen at (default mean)")
    p.add_argument("--data", metavar="DATA_DIR", help="text the node means are taken over (default: the run's own data;"
                                                      " needed for an imported run), tokenised with the run's tokenizer")
    p.add_argument("--method", choices=["mask", "attribution"], default=prune_default("method"),
                   help="rank nodes by a learned mask (default), or by attribution patching: gradient x (mean -"
                        " activation) over the training records, the first-order estimate of how much ablating each"
                        " node raises the task loss, one forward and backward per batch, no training; the node count"
                        " is chosen the same way")
    p.add_argument("--search", type=NON_NEGATIVE, default=0, metavar="N", help="run N Optuna trials over the pruning hyperparameters")
    p.add_argument("--edges", action="store_true",
                   help="after the nodes, learn a mask over the weight edges between them (a removed edge carries its"
                        " source node's mean) to the same target with the fewest edges, drop the nodes left on no path"
                        " from input to answer, and keep both circuits in circuit.json")
    p.add_argument("--steps", type=POSITIVE, default=prune_default("steps"), help="mask training steps")
    p.add_argument("--k-coef", type=real(0, 1e3), metavar="K",
                   help="a fixed penalty per active node (default: a penalty that adapts until the mask just meets the"
                        " target)")
    p.add_argument("--choose-margin", type=real(0, 1, high_open=True), default=prune_default("choose_margin"), metavar="FRACTION",
                   help="the node count meets (1 - FRACTION) x the target on the choose records, so that the circuit"
                        " meets the target on the test records (default %(default)s)")
    p.add_argument("--lr", type=real(0, 10, low_open=True), default=prune_default("lr"), help="mask learning rate")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--csr-max-density", type=real(0, 1), default=prune_default("csr_max_density"), metavar="FRACTION",
                   help="on CPU, layers with at most this fraction of nonzero weights multiply through sparse CSR kernels"
                        " (default %(default)s, the measured crossover; 0 = always dense)")
    force_argument(p, "CIRCUIT_DIR", "prune")
    device_argument(p)
    p.set_defaults(func=cmd_prune)


def moved_arguments(p) -> None:
    """--run-dir and --task: where a circuit's run and task file are now, if they moved."""
    p.add_argument("--run-dir", metavar="RUN_DIR", help="the model's run directory, if it moved")
    p.add_argument("--task", metavar="FILE", help="the circuit's task file, if it moved (the same records)")


def register_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a circuit's sufficiency, necessity and controls",
                       description="Writes CIRCUIT_DIR/validation.json and prints a table. Exit status 0: the circuit is"
                                   " evidence (sufficient, necessary, every control passed); 1: it is not; 2: bad input.")
    p.add_argument("circuit_dir", metavar="CIRCUIT_DIR")
    moved_arguments(p)
    p.add_argument("--no-control", action="store_true",
                   help="skip both pruning controls (the masks trained on shuffled labels and on a nonsense rule)")
    device_argument(p)
    p.set_defaults(func=cmd_validate)


def register_cleanup(sub) -> None:
    p = sub.add_parser("cleanup", help="what a circuit does without: constant queries and keys, binary nodes, droppable nodes",
                       description="Each check changes one thing in the circuit and reports its cost in task loss on the"
                                   " test records: each head's query (then key) replaced by its mean over the task's"
                                   " training records, each node replaced by a two-level step fitted on them, each node"
                                   " dropped alone. Writes CIRCUIT_DIR/cleanup.json and prints a summary.")
    p.add_argument("circuit_dir", metavar="CIRCUIT_DIR")
    moved_arguments(p)
    device_argument(p)
    p.set_defaults(func=cmd_cleanup)


def register_paths(sub) -> None:
    p = sub.add_parser("paths", help="the paths through a circuit's nodes that carry its answer, with their shares",
                       description="Splits the logit difference (correct minus incorrect) that the circuit's nodes add"
                                   " over their means, on the test records, into paths from the tokens through the kept"
                                   " nodes to the answer (a first-order split: docs/method.md). Prints the top paths of"
                                   " the node circuit and of its edge circuit, writes CIRCUIT_DIR/paths.json.")
    p.add_argument("circuit_dir", metavar="CIRCUIT_DIR")
    moved_arguments(p)
    p.add_argument("--top", type=integer(1), default=5, help="paths to print per circuit (default 5)")
    device_argument(p)
    p.set_defaults(func=cmd_paths)


def register_view(sub) -> None:
    p = sub.add_parser("view", help="write a circuit's interactive HTML page and Markdown summary",
                       description="One self-contained HTML file (works offline) and circuit.md beside it.")
    p.add_argument("circuit_dir", metavar="CIRCUIT_DIR")
    p.add_argument("--out", metavar="HTML", help="where to write the page (default CIRCUIT_DIR/circuit.html)")
    moved_arguments(p)
    p.add_argument("--force", action="store_true", help="replace HTML and its .md twin if they exist")
    device_argument(p)
    p.set_defaults(func=cmd_view)


def register_evolve(sub) -> None:
    p = sub.add_parser("evolve", help="one task's circuit at every model kept during training, side by side",
                       description="Prune and validate the task at each checkpoint kept with train.keep_every (node means"
                                   " over each checkpoint's own weights), and write DIR/evolution.json (a row per"
                                   " checkpoint; the overlap of consecutive circuits), evolution.png and evolution.html"
                                   " (a slider over steps). Resumable.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--task", required=True, metavar="NAME_OR_FILE", help="a built-in task (see `tasks list`) or a JSONL file")
    suite_argument(p)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--target-loss", type=TASK_LOSS, default=prune_default("target_loss"),
                   help="held-out task loss each circuit must reach (default %(default)s)")
    p.add_argument("--steps", type=step_list, metavar="A,B,C", help="only these kept steps (default: every kept one)")
    p.add_argument("--no-control", action="store_true", help="skip the pruning controls of each circuit's validation")
    device_argument(p)
    p.set_defaults(func=cmd_evolve)


def register_explain(sub) -> None:
    p = sub.add_parser("explain", help="top and bottom activating contexts of a node, in the terminal")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--node", required=True, action="append", metavar="SITE:INDEX", help="e.g. 0.mlp.post_act:12 (repeatable)")
    p.add_argument("--top", type=POSITIVE, default=20, help="contexts of each kind to show (default 20)")
    p.add_argument("--tokens", type=POSITIVE, default=32768, help="validation tokens to scan (default 32768)")
    p.add_argument("--data", metavar="DATA_DIR", help="text to scan (default: the run's own data)")
    p.add_argument("--no-color", action="store_true")
    device_argument(p)
    p.set_defaults(func=cmd_explain)


def register_label(sub) -> None:
    p = sub.add_parser("label", help="the Python concepts that best explain each node's activation",
                       description="Scores every node (or the given ones) against 52 Python concepts computed from the"
                                   " validation text (AUROC, correlation, activation mass), with a shuffled-weights"
                                   " baseline, and writes labels.json (into CIRCUIT_DIR with --circuit, else RUN_DIR).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--node", action="append", metavar="SITE:INDEX", help="a node to label (repeatable; default: all)")
    p.add_argument("--circuit", metavar="CIRCUIT_DIR", help="label the nodes of this circuit")
    p.add_argument("--tokens", type=POSITIVE, default=16384, help="validation tokens to read (default 16384)")
    p.add_argument("--data", metavar="DATA_DIR", help="text to read (default: the run's own data)")
    p.add_argument("--threshold", type=real(0, 1), default=0.6,
                   help="least strength of a label: 2 AUROC - 1 or |r| (default 0.6)")
    p.add_argument("--out", metavar="FILE", help="where to write the JSON (default CIRCUIT_DIR or RUN_DIR/labels.json)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    device_argument(p)
    p.set_defaults(func=cmd_label)


# each top-level command and the function that adds it to the parser
COMMANDS = {"prune": register_prune, "validate": register_validate, "cleanup": register_cleanup, "paths": register_paths,
            "view": register_view, "evolve": register_evolve, "explain": register_explain, "label": register_label}
