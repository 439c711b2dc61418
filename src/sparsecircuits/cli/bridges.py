"""`sparsecircuits` subcommands. Bridges to dense models: bridge train, eval and demo, and steer."""

from __future__ import annotations

import argparse

from ..errors import SparseCircuitsError
from .args import POSITIVE, NON_NEGATIVE, TASK_LOSS, device_argument, prune_default, training_arguments
from .training import cmd_train


def cmd_bridge_train(args: argparse.Namespace) -> None:
    if args.dense is None and not args.resume:
        raise SparseCircuitsError("give --dense DENSE_RUN, the frozen dense run to bridge to (or --resume to continue a run)")
    cmd_train(args)


def cmd_bridge_eval(args: argparse.Namespace) -> None:
    from ..bridges.evaluate import run_bridge_eval

    run_bridge_eval(args.run_dir, args.data, args.max_tokens, device=args.device)


def cmd_bridge_demo(args: argparse.Namespace) -> None:
    from ..experiments.bridge_demo import bridge_demo

    bridge_demo(args.out, args.config, args.set, args.dense_set, args.data, args.second_task, args.target_loss,
                warm_start_steps=args.warm_start, device=args.device)


def _strengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of numbers, e.g. 0,0.25,0.5,1") from None
    if len(values) < 2 or values[0] != 0 or any(not 0 <= v <= 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"'{text}': give at least two rising strengths in [0, 1], the first 0")
    return values


def cmd_steer(args: argparse.Namespace) -> None:
    from ..bridges.steer import run_steer

    run_steer(args.run_dir, args.node, args.task, args.strengths, args.split, args.circuit, args.out, args.seed, args.records,
              args.correct, device=args.device)


def register_bridge(sub) -> None:
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
    training_arguments(p, data_help="prepared data (default: the dense run's own)")
    p.set_defaults(func=cmd_bridge_train)
    p = bridge_sub.add_parser("eval", help="per site: NMSE of both maps and the loss of both hybrid passes",
                              description="On validation windows, per bridge site: the NMSE of the encoder and the decoder"
                                          " and the loss of each hybrid pass (dense prefix -> encoder -> sparse suffix, and"
                                          " sparse prefix -> decoder -> dense suffix) beside both models' own losses."
                                          " Prints a table; writes RUN_DIR/bridge_eval.json and bridge_eval.png.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="data to evaluate on (default: the run's own)")
    p.add_argument("--max-tokens", type=POSITIVE, default=32768, help="validation tokens to use (default 32768)")
    device_argument(p)
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
    p.add_argument("--target-loss", type=TASK_LOSS, default=prune_default("target_loss"), help="the circuits' target task loss (default %(default)s)")
    p.add_argument("--warm-start", type=POSITIVE, metavar="STEPS",
                   help="train the sparse model without bridges first, then bridge it for STEPS steps from those weights"
                        " (default: bridged from scratch, as the paper does)")
    device_argument(p, trains=True)
    p.set_defaults(func=cmd_bridge_demo)


def register_steer(sub) -> None:
    p = sub.add_parser("steer", help="steer a bridged run's dense model with a sparse node",
                       description="For each task record and its twin, add the sparse node's counterfactual change,"
                                   " carried through the bridge, to the dense model's read at that site, and report the"
                                   " dense model's log-odds (correct - incorrect) against strength, beside a random"
                                   " direction of the same norm and a random node outside the circuit, with 95% bootstrap"
                                   " intervals. Writes steer.json and steer.png.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run made by `bridge train`")
    p.add_argument("--node", required=True, metavar="SITE:INDEX",
                   help="a sublayer input node, e.g. 1.attn.act_in:12, or 'auto': the --circuit's sublayer-input node"
                        " that, patched alone to its twin's value, moves the sparse model's own log-odds furthest toward"
                        " the twin's answer (on the choose split)")
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
    device_argument(p)
    p.set_defaults(func=cmd_steer)


# each top-level command and the function that adds it to the parser
COMMANDS = {"bridge": register_bridge, "steer": register_steer}
