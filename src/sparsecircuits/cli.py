"""The `sparsecircuits` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .errors import SparseCircuitsError

EXIT_BAD_INPUT = 2  # any error: line
EXIT_VALIDATION_FAILED = 1  # `validate`: the circuit is not evidence; `tasks audit`: a task is flagged


class _Parser(argparse.ArgumentParser):
    """argparse, with its complaints as the same one `error:` line as every other bad input."""

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _integer(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= {low}")
        return value
    return parse


def _suite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=["paper", "hard"], default="paper",
                        help="paper: the paper's 20 contrasts as it poses them (default); hard: their harder forms and the"
                             " paper's adversarial checks")


def _real(low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """A finite number in the interval given (open at either end on request)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: give a number in {interval}")
        return value
    return parse


def _targets(text: str) -> tuple[float, ...]:
    parse = _real(0.0, math.log(2), low_open=True, high_open=True)
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"'{text}' has an empty item: give target losses separated by commas, e.g. 0.3,0.15")
    return tuple(parse(t) for t in items)


POSITIVE, NON_NEGATIVE = _integer(1), _integer(0)
TASK_LOSS = _real(0.0, math.log(2), low_open=True, high_open=True)  # between perfect and chance


def cmd_prepare(args: argparse.Namespace) -> None:
    from .data.prepare import prepare

    prepare(args.out, corpus=args.corpus, vocab_size=args.vocab_size, val_fraction=args.val_fraction, force=args.force,
            generated_tokens=args.tokens, seed=args.seed, simple_share=args.simple_share)


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .data.dataset import ensure_default_data
    from .rundir import RUN_INFO_FILE, read_run_config, read_run_info, recorded_data_dir
    from .train.evaluation import evaluate_run
    from .train.trainer import check_new_run_dir, train

    run_dir = Path(args.out)
    if args.config is None:
        if not args.resume:
            raise SparseCircuitsError("give --config NAME_OR_FILE (e.g. --config small), or --resume to continue a run")
        config = read_run_config(run_dir)
        if args.set:
            raise SparseCircuitsError("--set changes the config, and a resumed run must keep its own: drop --set")
    elif args.resume and args.force:
        raise SparseCircuitsError("--resume continues a run and --force starts it again: give one of them")
    else:
        config = load_config(args.config, args.set)
    dense = getattr(args, "dense", None)  # `bridge train`: the frozen dense run
    if not args.resume and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone owns the run directory
        check_new_run_dir(run_dir, args.force)  # before the default data is prepared
    if args.data is None and args.resume and (run_dir / RUN_INFO_FILE).is_file():
        data_dir = recorded_data_dir(run_dir) or read_run_info(run_dir)["data"]
    elif args.data is None and dense is not None:
        data_dir = recorded_data_dir(dense)
        if data_dir is None:
            raise SparseCircuitsError(f"the data directory the dense run {dense} was trained on is not where its run.json"
                                      " says: give --data (prepared with the dense run's tokenizer)")
    else:
        data_dir = args.data or ensure_default_data()
    try:
        train(config, data_dir, run_dir, resume=args.resume, stop_after=args.stop_after, force=args.force, dense_run=dense,
              init_from=getattr(args, "init", None))
    except KeyboardInterrupt:  # outside the training loop, which checkpoints and says so itself
        print(f"interrupted outside the training loop: {run_dir} keeps the last checkpoint written, if any;"
              " continue with --resume, or start again with --force", file=sys.stderr)
        sys.exit(130)
    if args.stop_after is not None and args.stop_after < config.train.steps:
        print(f"stopped at step {args.stop_after} of {config.train.steps} with a checkpoint; continue with"
              f" `sparsecircuits train --out {run_dir} --resume`")
        return
    result = evaluate_run(run_dir, data_dir)
    print(_format_eval(run_dir, result))


def cmd_bridge_eval(args: argparse.Namespace) -> None:
    from .bridges.evaluate import run_bridge_eval

    run_bridge_eval(args.run_dir, args.data, args.max_tokens)


def cmd_bridge_demo(args: argparse.Namespace) -> None:
    from .experiments.bridge_demo import bridge_demo

    bridge_demo(args.out, args.config, args.set, args.dense_set, args.data, args.second_task, args.target_loss,
                warm_start_steps=args.warm_start)


def cmd_steer(args: argparse.Namespace) -> None:
    from .bridges.steer import run_steer

    run_steer(args.run_dir, args.node, args.task, args.strengths, args.split, args.circuit, args.out, args.seed, args.records,
              args.correct)


def _strengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of numbers, e.g. 0,0.25,0.5,1") from None
    if len(values) < 2 or values[0] != 0 or any(not 0 <= v <= 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"'{text}': give at least two rising strengths in [0, 1], the first 0")
    return values


def cmd_bridge_train(args: argparse.Namespace) -> None:
    if args.dense is None and not args.resume:
        raise SparseCircuitsError("give --dense DENSE_RUN, the frozen dense run to bridge to (or --resume to continue a run)")
    cmd_train(args)


def _format_eval(run_dir: Path, result: dict) -> str:
    return (f"{run_dir}: validation loss {result['val_loss']:.4f} nats/token over {result['val_tokens']:,} tokens"
            f" (bigram baseline {result['bigram_loss']:.4f}, unigram {result['unigram_loss']:.4f});"
            f" dead MLP neurons {result['dead_neurons']}; nonzero weights {result['nonzero_weights']:,} of"
            f" {result['sparse_weights']:,} sparse (L0 {result['l0_fraction_measured']:.4g}, counted from the weights)")


def cmd_eval(args: argparse.Namespace) -> None:
    from .train.evaluation import evaluate_run

    result = evaluate_run(args.run_dir, args.data, max_tokens=args.max_tokens)
    print(json.dumps(result, indent=1) if args.json else _format_eval(Path(args.run_dir), result))


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .model.gpt import SparseGPT

    model = SparseGPT.from_pretrained(args.run_dir)
    tokenizer = model.tokenizer
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        raise SparseCircuitsError("--prompt is empty: give some text to continue, e.g. --prompt 'def '")
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.num_samples):
        out = model.generate(torch.tensor([ids]), args.max_new_tokens, args.temperature, args.top_k, generator)
        print(tokenizer.decode(out[0].tolist(), skip_special_tokens=False))
        print("-" * 40)


def cmd_configs(args: argparse.Namespace) -> None:
    from .config import CONFIG_DIR, builtin_config_names, load_config

    if args.name is None:
        for name in builtin_config_names():
            first = (CONFIG_DIR / f"{name}.toml").read_text().splitlines()[0].lstrip("# ")
            print(f"{name:10s} {first}")
        return
    print(json.dumps(load_config(args.name, args.set).to_dict(), indent=1))


def cmd_tasks_list(args: argparse.Namespace) -> None:
    from .tasks import DESCRIPTIONS, suite_tasks
    from .tasks.audit import audit_task

    for name in suite_tasks(args.suite):
        description = DESCRIPTIONS[name]
        flagged = audit_task(name)["flagged"]
        print(f"{name:28s} {description}" + (f"  [FLAGGED by `tasks audit`: {', '.join(flagged)}]" if flagged else ""))


def cmd_tasks_audit(args: argparse.Namespace) -> None:
    from .model.gpt import SparseGPT
    from .tasks import suite_tasks
    from .tasks.audit import audit_task, format_audit

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
    from .model.gpt import SparseGPT
    from .tasks import suite_tasks
    from .tasks.audit import score_tasks

    model = SparseGPT.from_pretrained(args.run_dir)
    names = args.task or suite_tasks(args.suite)
    table = score_tasks(model, names, args.split, warn=len(names) == 1)
    if len(names) == 1 and "error" in table[names[0]]:
        raise SparseCircuitsError(table[names[0]]["error"])
    rows = list(table.values())
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'task':28s} {'loss':>7s} {'accuracy':>8s} {'records':>7s}  trivial cue (`tasks audit`)")
    for row in rows:
        if "error" in row:
            print(f"{row['task']:28s} {'-':>7s} {'-':>8s} {'-':>7s}  unavailable: {row['error']}")
        else:
            flagged = ", ".join(row["audit_flagged"]) or "none above 70%"
            print(f"{row['task']:28s} {row['loss']:7.4f} {row['accuracy']:8.3f} {row['records']:7d}  {flagged}")


def cmd_prune(args: argparse.Namespace) -> None:
    from .circuits import PruneSettings, prune
    from .tasks.builtin import resolve_task

    fixed = {} if args.k_coef is None else {"penalty": "fixed", "k_coef": args.k_coef}
    settings = PruneSettings(target_loss=args.target_loss, ablation=args.ablation, steps=args.steps, lr=args.lr,
                             seed=args.seed, choose_margin=args.choose_margin, csr_max_density=args.csr_max_density,
                             **fixed)
    circuit = prune(args.run_dir, resolve_task(args.task, args.suite), args.out, settings, search_trials=args.search,
                    force=args.force, data_dir=args.data)
    m = circuit.metrics
    print(f"{circuit.task}: {m['n_nodes']} nodes, {m['n_edges']} edges; task loss: full model {m['loss_full_model']:.4f},"
          f" circuit {m['loss_circuit']:.4f}, circuit ablated {m['loss_circuit_ablated']:.4f},"
          f" random same size {m['loss_random_same_size']:.4f}; wrote {args.out}/circuit.json ({m['seconds']:.0f} s)")


def cmd_validate(args: argparse.Namespace) -> None:
    from .circuits.validate import format_validation, validate

    result = validate(args.circuit_dir, args.run_dir, control=not args.no_control)
    print(format_validation(result))
    if not result["evidence"]:
        sys.exit(EXIT_VALIDATION_FAILED)


def cmd_view(args: argparse.Namespace) -> None:
    from .viewer import view

    view(args.circuit_dir, args.out, args.run_dir, force=args.force)


def cmd_explain(args: argparse.Namespace) -> None:
    from .circuits.explain import format_contexts, node_examples
    from .model.gpt import SparseGPT
    from .train.evaluation import run_data

    model = SparseGPT.from_pretrained(args.run_dir)
    examples = node_examples(model, run_data(Path(args.run_dir), args.data), node_names=args.node, top=args.top,
                             n_tokens=args.tokens)
    for name, example in examples.items():
        print(f"== {name}")
        print(format_contexts(example, color=sys.stdout.isatty() and not args.no_color))


def cmd_demo(args: argparse.Namespace) -> None:
    from .experiments.demo import demo

    tasks = args.tasks if args.tasks in ("auto", "all") else [t for t in args.tasks.split(",") if t]
    demo(args.out, minutes=args.minutes, tasks=tasks, max_tasks=args.max_tasks, target_loss=args.target_loss,
         config=args.config, overrides=args.set, corpus=args.corpus, control=not args.no_control, dense_set=args.dense_set,
         suite=args.suite)


def cmd_compare(args: argparse.Namespace) -> None:
    from .experiments.compare import common_tasks, compare, geomean_edges

    targets = args.targets
    rows = compare(args.run_a, args.run_b, args.out, tasks=args.tasks.split(",") if args.tasks else None,
                   targets=targets, margin=args.margin)
    labels = list(dict.fromkeys(r["model"] for r in rows))
    print(f"{'target':>7s} " + " ".join(f"{label[:20]:>20s}" for label in labels)
          + "   (geometric-mean edges over the tasks both models reach)")
    for target in sorted(targets):
        cells = [geomean_edges(rows, label, target) for label in labels]
        print(f"{target:7.3f} " + " ".join(f"{c:20.1f}" if c else f"{'-':>20s}" for c in cells)
              + f"   {len(common_tasks(rows, target))} tasks")
    print(f"wrote {args.out}/compare.csv and {args.out}/compare.png")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .data.dataset import ensure_default_data
    from .experiments.sweep import sweep

    rows = sweep(args.grid, args.out, args.data or ensure_default_data())
    print(f"{'run':40s} {'val loss':>8s} {'tasks':>5s} {'edges (geo. mean)':>17s}")
    for r in rows:
        edges = f"{r['edges_geomean']:.1f}" if r["edges_geomean"] else "-"
        print(f"{r['run']:40s} {r['val_loss']:8.4f} {r['tasks_learned']:5d} {edges:>17s}")
    print(f"wrote {args.out}/frontier.csv and {args.out}/frontier.png")


def cmd_import_openai(args: argparse.Namespace) -> None:
    from .interop.openai import import_openai

    out = import_openai(args.model_dir, args.out, args.tokenizer, args.data, args.force)
    data = f"its data: {args.data}" if args.data else "give prune and eval --data DATA_DIR prepared with its tokenizer"
    print(f"wrote {out}: a run directory every command accepts ({data})")


def cmd_export_openai(args: argparse.Namespace) -> None:
    from .interop.openai import export_openai

    out = export_openai(args.run_dir, args.out, args.allow_eps_change, args.force)
    print(f"wrote {out}: beeg_config.json and final_model.pt (load with circuit_sparsity's load_model), tokenizer.json")


def cmd_label(args: argparse.Namespace) -> None:
    from .circuits.labels import format_labels, label_run

    result, out = label_run(args.run_dir, args.node, args.circuit, args.tokens, args.data, args.threshold, args.out)
    if len(result["nodes"]) <= 200:
        print(format_labels(result))
    labelled = sum(bool(node["labels"]) for node in result["nodes"])
    print(f"{labelled} of {len(result['nodes'])} nodes labelled above threshold; wrote {out}")


def cmd_import_openai_circuit(args: argparse.Namespace) -> None:
    from .circuits.circuit import Circuit
    from .interop.openai import import_openai_circuit

    out = import_openai_circuit(args.viz_data, args.run, args.task, args.out, args.target_loss, args.data, args.force)
    m = Circuit.load(out).metrics
    print(f"{args.task}: {m['n_nodes']} nodes, {m['n_edges']} edges; task loss: full model {m['loss_full_model']:.4f},"
          f" circuit {m['loss_circuit']:.4f}, circuit ablated {m['loss_circuit_ablated']:.4f}; wrote {out}/circuit.json"
          " (check it with `sparsecircuits validate`)")


def _prune_default(name: str):
    from .circuits.prune import PruneSettings

    return getattr(PruneSettings(), name)


def _training_arguments(p: argparse.ArgumentParser, data_help: str = "prepared data (default: the standard library with simple-python,"
                        " prepared and cached on first use)") -> None:
    from .config import builtin_config_names

    p.add_argument("--config", metavar="NAME_OR_FILE",
                   help=f"built-in config ({', '.join(builtin_config_names())}) or a TOML file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.steps=500 (repeatable)")
    p.add_argument("--data", metavar="DATA_DIR", help=data_help)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create (or continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="start RUN_DIR again if `train` made it (e.g. after a failed start)")
    p.add_argument("--stop-after", type=POSITIVE, metavar="STEP",
                   help="end at this step with a checkpoint, to continue later with --resume (e.g. to fit a job time limit)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparsecircuits", description=(
        "Train weight-sparse transformers and find the circuits behind their predictions."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="build a tokenized data directory from Python source",
                       description="Read a corpus (default: this interpreter's standard library with a quarter of its training tokens generated simple-python), train a byte-level BPE, "
                                   "and write token arrays and a manifest into DATA_DIR.")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="directory to create")
    p.add_argument("--corpus", nargs="+", metavar="SOURCE",
                   help="'stdlib' (this interpreter's standard library), 'simple-python' (generated simple programs), "
                        "or folders of .py/.txt/.jsonl files or single files; several are mixed (default: stdlib simple-python at --simple-share 0.25)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tokens", type=POSITIVE, default=10_000_000,
                      help="about how many tokens of simple-python to generate (default 10,000,000)")
    size.add_argument("--simple-share", type=_real(0, 1, True, True), metavar="SHARE",
                      help="instead of --tokens: generate about this share of all training tokens as simple-python")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the simple-python generator (default 0)")
    p.add_argument("--vocab-size", type=POSITIVE, default=2048, help="BPE vocabulary size (default 2048)")
    p.add_argument("--val-fraction", type=_real(0, 1, True, True), default=0.02, help="fraction of files held out for validation (default 0.02)")
    p.add_argument("--force", action="store_true", help="replace DATA_DIR if `prepare` made it")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a weight-sparse model",
                       description="Train a model into RUN_DIR, then print its validation loss beside a bigram baseline.")
    _training_arguments(p)
    p.set_defaults(func=cmd_train)

    bridge = sub.add_parser("bridge", help="a sparse model bridged to a frozen dense one: train, evaluate")
    bridge_sub = bridge.add_subparsers(dest="bridge_command", required=True, metavar="ACTION")
    p = bridge_sub.add_parser("train", help="train a weight-sparse model with bridges to a frozen dense run",
                              description="Train a weight-sparse model into RUN_DIR together with an encoder and a decoder"
                                          " at every sublayer's residual, against the frozen dense run DENSE_RUN (same"
                                          " number of layers, same tokenizer). Loss: the sparse model's cross-entropy +"
                                          " both maps' NMSE + the KL of both hybrid passes from the dense model's"
                                          " distribution, each weighted by [bridge] config keys. RUN_DIR is a normal run"
                                          " plus bridges.safetensors.")
    p.add_argument("--dense", metavar="DENSE_RUN", help="the dense run to bridge to (on --resume, the run's own)")
    p.add_argument("--init", metavar="SPARSE_RUN", help="start the sparse model from this run's weights (same model config"
                                                       " and tokenizer) instead of a fresh initialisation")
    _training_arguments(p, data_help="prepared data (default: the dense run's own)")
    p.set_defaults(func=cmd_bridge_train)
    p = bridge_sub.add_parser("eval", help="per site: NMSE of both maps and the loss of both hybrid passes",
                              description="On validation windows, per bridge site: the NMSE of the encoder and the decoder"
                                          " and the loss of each hybrid pass (dense prefix -> encoder -> sparse suffix, and"
                                          " sparse prefix -> decoder -> dense suffix) beside both models' own losses."
                                          " Prints a table; writes RUN_DIR/bridge_eval.json and bridge_eval.png.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="data to evaluate on (default: the run's own)")
    p.add_argument("--max-tokens", type=POSITIVE, default=32768, help="validation tokens to use (default 32768)")
    p.set_defaults(func=cmd_bridge_eval)
    p = bridge_sub.add_parser("demo", help="the paper's steering experiment: dense model, bridged sparse model, circuits,"
                                           " steering with controls",
                              description="Train an ordinary dense model (the config with dense weights, no AbsTopK,"
                                          " d_model 64), a weight-sparse model bridged to it, evaluate the bridges, prune"
                                          " single_double_quote and a second task, and steer the dense model with each"
                                          " circuit's input node that differs most between twins (the double-quoted"
                                          " prompts toward single quotes for the first task), against a random direction"
                                          " and a random node. Writes DIR/summary.json and the steering plots. Resumable.")
    p.add_argument("--out", default="bridge-demo", metavar="DIR", help="output directory (default ./bridge-demo)")
    p.add_argument("--config", default="small", metavar="NAME_OR_FILE", help="both models' config (default small)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="an override for both models")
    p.add_argument("--dense-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="an override for the dense model alone, after the dense defaults")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data (default: the default corpus, prepared into DIR/data)")
    p.add_argument("--second-task", default="auto", metavar="NAME",
                   help="the second task (default: of the tasks the sparse model does within --target-loss, the one both"
                        " models do best)")
    p.add_argument("--target-loss", type=TASK_LOSS, default=0.15, help="the circuits' target task loss (default 0.15)")
    p.add_argument("--warm-start", type=POSITIVE, metavar="STEPS",
                   help="train the sparse model without bridges first, then bridge it for STEPS steps from those weights"
                        " (default: bridged from scratch, as the paper does)")
    p.set_defaults(func=cmd_bridge_demo)

    p = sub.add_parser("steer", help="steer a bridged run's dense model with a sparse node",
                       description="For each task record and its twin, add the sparse node's counterfactual change,"
                                   " carried through the bridge, to the dense model's read at that site, and report the"
                                   " dense model's log-odds (correct - incorrect) against strength, beside a random"
                                   " direction of the same norm and a random node outside the circuit, with 95%% bootstrap"
                                   " intervals. Writes steer.json and steer.png.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run made by `bridge train`")
    p.add_argument("--node", required=True, metavar="SITE:INDEX",
                   help="a sublayer input node, e.g. 1.attn.act_in:12, or 'auto': the --circuit's sublayer-input node"
                        " whose value differs most between twins (on the choose split)")
    p.add_argument("--task", required=True, metavar="NAME_OR_FILE", help="a built-in task or a JSONL file of twin records")
    p.add_argument("--strengths", type=_strengths, metavar="S,S,...",
                   help="strengths in [0, 1], rising from 0 (default 0,0.1,...,1)")
    p.add_argument("--split", choices=["train", "choose", "test"], default="test", help="which records (default test)")
    p.add_argument("--circuit", metavar="CIRCUIT_DIR", help="the task's circuit: the random control node is drawn outside it")
    p.add_argument("--records", type=POSITIVE, metavar="N", help="use at most N records")
    p.add_argument("--correct", metavar="TEXT", help="present only the records whose correct completion is TEXT"
                                                     " (e.g. '\")' for the double-quoted prompts of single_double_quote)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the controls and the bootstrap (default 0)")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/steer/TASK-NODE)")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("eval", help="validation loss of a trained run, beside n-gram baselines")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="data to evaluate on (default: the run's own)")
    p.add_argument("--max-tokens", type=POSITIVE, default=262144, help="validation tokens to use (default 262144)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="continue a prompt with a trained model")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", default="def ", help="text to continue (default 'def ')")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    p.add_argument("--temperature", type=_real(0, 100), default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=NON_NEGATIVE, default=50, help="sample from the k likeliest tokens (0: all)")
    p.add_argument("--num-samples", type=POSITIVE, default=1)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.set_defaults(func=cmd_sample)

    tasks = sub.add_parser("tasks", help="list the built-in tasks, or score a model on tasks")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    p = tasks_sub.add_parser("list", help="the built-in tasks and what each one tests")
    _suite_argument(p)
    p.set_defaults(func=cmd_tasks_list)
    p = tasks_sub.add_parser("audit", help="does a degenerate cue (last token, length, bigram table) answer a task, and what"
                                           " simple mechanism does?",
                             description="Held-out accuracy of predictors fitted on each task's train records. Degenerate "
                                         "cues flag a task: the prompt's last token, its length and, with --run-dir, the "
                                         "run's bigram table. Likely mechanisms are reported: a bag of the prompt's tokens, "
                                         "a bag of its last line's tokens, its last two tokens. Exits 1 when a task is "
                                         "flagged (a degenerate cue above 70%%).")
    p.add_argument("tasks", nargs="*", metavar="TASK", help="built-in tasks or JSONL files (default: every task of --suite)")
    _suite_argument(p)
    p.add_argument("--run-dir", metavar="RUN_DIR", help="tokenise with this run's tokenizer and try its bigram table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks_audit)
    p = tasks_sub.add_parser("eval", help="task loss and accuracy of a trained model",
                             description="Task loss (two-way cross-entropy at the last position) and accuracy per task.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--task", action="append", metavar="NAME_OR_FILE",
                   help="a built-in task or a JSONL file (repeatable; default: every task of --suite)")
    _suite_argument(p)
    p.add_argument("--split", choices=["train", "choose", "test"], default="test",
                   help="which records to score (default test; the mask trains on train, node counts are chosen on choose)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks_eval)

    p = sub.add_parser("prune", help="find the smallest circuit that does a task",
                       description="Learn a node mask, bisect the number of kept nodes to meet --target-loss on held-out "
                                   "records, calibrate a logit scale, count edges, and write CIRCUIT_DIR/circuit.json.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--task", required=True, metavar="NAME_OR_FILE",
                   help="a built-in task (see `tasks list`) or a JSONL file; with --suite hard, a paper task's name means"
                        " its hard form")
    _suite_argument(p)
    p.add_argument("--out", required=True, metavar="CIRCUIT_DIR")
    p.add_argument("--target-loss", type=TASK_LOSS, default=0.15, help="held-out task loss the circuit must reach (default 0.15)")
    p.add_argument("--ablation", choices=["mean", "zero"], default="mean", help="what pruned nodes are frozen at (default mean)")
    p.add_argument("--data", metavar="DATA_DIR", help="text the node means are taken over (default: the run's own data;"
                                                      " needed for an imported run), tokenised with the run's tokenizer")
    p.add_argument("--search", type=NON_NEGATIVE, default=0, metavar="N", help="run N Optuna trials over the pruning hyperparameters")
    p.add_argument("--steps", type=POSITIVE, default=_prune_default("steps"), help="mask training steps")
    p.add_argument("--k-coef", type=_real(0, 1e3), metavar="K",
                   help="a fixed penalty per active node (default: a penalty that adapts until the mask just meets the"
                        " target)")
    p.add_argument("--choose-margin", type=_real(0, 1, high_open=True), default=_prune_default("choose_margin"), metavar="FRACTION",
                   help="the node count meets (1 - FRACTION) x the target on the choose records, so that the circuit"
                        " meets the target on the test records (default %(default)s)")
    p.add_argument("--lr", type=_real(0, 10, low_open=True), default=_prune_default("lr"), help="mask learning rate")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--csr-max-density", type=_real(0, 1), default=_prune_default("csr_max_density"), metavar="FRACTION",
                   help="on CPU, layers with at most this fraction of nonzero weights multiply through sparse CSR kernels"
                        " (default %(default)s, the measured crossover; 0 = always dense)")
    p.add_argument("--force", action="store_true", help="replace CIRCUIT_DIR if `prune` made it")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("validate", help="check a circuit's sufficiency, necessity and controls",
                       description="Writes CIRCUIT_DIR/validation.json and prints a table. Exit status 0: the circuit is"
                                   " evidence (sufficient, necessary, every control passed); 1: it is not; 2: bad input.")
    p.add_argument("circuit_dir", metavar="CIRCUIT_DIR")
    p.add_argument("--run-dir", metavar="RUN_DIR", help="the model's run directory, if it moved")
    p.add_argument("--no-control", action="store_true", help="skip the shuffled-label pruning control")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("view", help="write a circuit's interactive HTML page and Markdown summary",
                       description="One self-contained HTML file (works offline) and circuit.md beside it.")
    p.add_argument("circuit_dir", metavar="CIRCUIT_DIR")
    p.add_argument("--out", metavar="HTML", help="where to write the page (default CIRCUIT_DIR/circuit.html)")
    p.add_argument("--run-dir", metavar="RUN_DIR", help="the model's run directory, if it moved")
    p.add_argument("--force", action="store_true", help="replace HTML and its .md twin if they exist")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("explain", help="top and bottom activating contexts of a node, in the terminal")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--node", required=True, action="append", metavar="SITE:INDEX", help="e.g. 0.mlp.post_act:12 (repeatable)")
    p.add_argument("--top", type=POSITIVE, default=20, help="contexts of each kind to show (default 20)")
    p.add_argument("--tokens", type=POSITIVE, default=32768, help="validation tokens to scan (default 32768)")
    p.add_argument("--data", metavar="DATA_DIR", help="text to scan (default: the run's own data)")
    p.add_argument("--no-color", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo", help="the main job: corpus -> sparse and dense models -> validated circuits -> report",
                       description="Prepare the default corpus; train a weight-sparse model, a dense model of the same "
                                   "shape on the same tokens, and a loss-matched dense model (a finished schedule of as many "
                                   "steps as the dense model took to reach the sparse loss); prune, validate, label and view "
                                   "every task the sparse model does; draw claim (a) at targets 0.15, 0.3 and 0.5 over the "
                                   "tasks both models do with margin; write DIR/report.html and DIR/summary.json. Resumable.")
    p.add_argument("--out", default="demo", metavar="DIR", help="output directory (default ./demo)")
    p.add_argument("--minutes", type=_real(0, 1e6, low_open=True), default=30.0, help="time budget; training steps scale with it (default 30)")
    p.add_argument("--tasks", default="auto", help="'auto' or 'all' (every task of --suite), or a comma list")
    p.add_argument("--max-tasks", type=POSITIVE, metavar="N",
                   help="circuits for only the N tasks the sparse model does best (default: every task it does)")
    p.add_argument("--target-loss", type=TASK_LOSS, default=0.15)
    p.add_argument("--config", default="small", metavar="NAME_OR_FILE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--dense-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="an override for both dense models, after --set (e.g. model.d_model=64 for a smaller dense model)")
    p.add_argument("--corpus", nargs="+", metavar="SOURCE", help="corpus instead of the default (the standard library with simple-python): stdlib, simple-python, folders or files (as prepare --corpus)")
    p.add_argument("--no-control", action="store_true", help="skip the nonsense-rule and shuffled-label pruning controls")
    _suite_argument(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compare", help="circuit edges vs target loss for two models (PNG + CSV)")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--out", default="compare", metavar="DIR", help="where compare.csv and compare.png go (default ./compare)")
    p.add_argument("--tasks", help="comma-separated tasks or JSONL files (default: every built-in task both models learned)")
    p.add_argument("--targets", type=_targets, default="0.5,0.3,0.15,0.05", help="target losses (default 0.5,0.3,0.15,0.05)")
    p.add_argument("--margin", type=_real(0, 1, low_open=True), default=0.5,
                   help="at each target, prune the tasks both models do to loss <= MARGIN x the target (default 0.5)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="train a grid of models, prune their tasks, plot the capability-interpretability frontier",
                       description="Finished runs and circuits under DIR are reused, so a sweep can be stopped and continued.")
    p.add_argument("--grid", required=True, metavar="GRID", help="a grid TOML file, or a built-in grid: cpu-overnight, gpu")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data (default: the default corpus, prepared and cached)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("label", help="the Python concepts that best explain each node's activation",
                       description="Scores every node (or the given ones) against 52 Python concepts computed from the"
                                   " validation text (AUROC, correlation, activation mass), with a shuffled-weights"
                                   " baseline, and writes labels.json (into CIRCUIT_DIR with --circuit, else RUN_DIR).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--node", action="append", metavar="SITE:INDEX", help="a node to label (repeatable; default: all)")
    p.add_argument("--circuit", metavar="CIRCUIT_DIR", help="label the nodes of this circuit")
    p.add_argument("--tokens", type=POSITIVE, default=16384, help="validation tokens to read (default 16384)")
    p.add_argument("--data", metavar="DATA_DIR", help="text to read (default: the run's own data)")
    p.add_argument("--threshold", type=_real(0, 1), default=0.6,
                   help="least strength of a label: 2 AUROC - 1 or |r| (default 0.6)")
    p.add_argument("--out", metavar="FILE", help="where to write the JSON (default CIRCUIT_DIR or RUN_DIR/labels.json)")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("import-openai", help="a model released by the paper's authors as a run directory",
                       description="Reads MODEL_DIR/beeg_config.json and final_model.pt (weights only, never arbitrary"
                                   " pickled objects) and writes a run directory every other command accepts.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--tokenizer", metavar="DIR_OR_FILE",
                   help="the model's tokenizer: a folder with vocab.bpe + encoder.json (e.g. tinypython_2k), or a"
                        " tokenizer.json (default: look in MODEL_DIR)")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data tokenised with this tokenizer, for mean ablation")
    p.add_argument("--force", action="store_true", help="replace RUN_DIR if `import-openai` made it")
    p.set_defaults(func=cmd_import_openai)

    p = sub.add_parser("import-openai-circuit", help="a circuit published by the paper's authors (viz_data.pt) as a circuit directory",
                       description="Nodes from its circuit_data, edges recomputed from the imported run's weights,"
                                   " metrics measured on --task; then validate and view work on it.")
    p.add_argument("viz_data", metavar="VIZ_DATA")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the run `import-openai` made from the same model")
    p.add_argument("--task", required=True, metavar="NAME_OR_FILE", help="the task to measure it on (built-in or JSONL)")
    p.add_argument("--out", required=True, metavar="CIRCUIT_DIR")
    p.add_argument("--target-loss", type=TASK_LOSS, default=0.15, help="the loss its sufficiency is judged by (default 0.15)")
    p.add_argument("--data", metavar="DATA_DIR", help="text for the node means (default: the run's own data)")
    p.add_argument("--force", action="store_true", help="replace CIRCUIT_DIR if `import-openai-circuit` made it")
    p.set_defaults(func=cmd_import_openai_circuit)

    p = sub.add_parser("export-openai", help="a run directory in the authors' released format",
                       description="Writes MODEL_DIR/beeg_config.json and final_model.pt for circuit_sparsity's"
                                   " load_model; refuses what their model cannot compute the same way.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--allow-eps-change", action="store_true",
                   help="export a model whose norm epsilon differs from theirs (their logits differ; see docs/cli.md)")
    p.add_argument("--force", action="store_true", help="replace MODEL_DIR if `export-openai` made it")
    p.set_defaults(func=cmd_export_openai)

    p = sub.add_parser("configs", help="list the built-in configs, or show one fully resolved")
    p.add_argument("name", nargs="?", metavar="NAME_OR_FILE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_configs)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SparseCircuitsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as err:  # a disk that filled up, a file that vanished: say which, without a traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or err}{where}: free space or fix the path and run the command again", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except (MemoryError, torch_out_of_memory()) as err:
        print(f"error: out of memory ({str(err).splitlines()[0] if str(err) else type(err).__name__}): make the model or"
              " the batch smaller", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # `train` says more itself; demo and sweep skip what they finished when run again
        print("interrupted: finished runs, circuits and checkpoints are kept; run the same command again to continue",
              file=sys.stderr)
        sys.exit(130)


def torch_out_of_memory() -> type:
    """torch's out-of-memory error, if torch is loaded (the CLI imports it lazily)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "OutOfMemoryError", MemoryError) if torch else MemoryError


if __name__ == "__main__":
    main()
