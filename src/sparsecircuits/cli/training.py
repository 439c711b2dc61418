"""`sparsecircuits` subcommands. Data and training: prepare, train, eval, sample, configs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import SparseCircuitsError
from .args import device_argument, force_argument, POSITIVE, NON_NEGATIVE, real, training_arguments


def cmd_prepare(args: argparse.Namespace) -> None:
    from ..data.prepare import prepare

    if args.tokenizer is not None and args.vocab_size is not None:
        raise SparseCircuitsError("--tokenizer brings its own vocabulary: drop --vocab-size")
    prepare(args.out, corpus=args.corpus, vocab_size=args.vocab_size or 2048, val_fraction=args.val_fraction,
            force=args.force, generated_tokens=args.tokens, seed=args.seed, simple_share=args.simple_share,
            tokenizer=args.tokenizer)


def cmd_train(args: argparse.Namespace) -> None:
    from ..config import load_config
    from ..rundir import Run, circuit_device
    from ..train.evaluation import evaluate_run
    from ..train.runtime import TrainingInterrupted
    from ..train.trainer import train

    run_dir = Path(args.out)
    if args.config is None and not args.resume:
        raise SparseCircuitsError("give --config NAME_OR_FILE (e.g. --config small), or --resume to continue a run")
    if args.config is None and args.set:
        raise SparseCircuitsError("--set changes the config, and a resumed run must keep its own: drop --set")
    config = load_config(args.config, args.set) if args.config is not None else None
    try:
        train(config, args.data, run_dir, resume=args.resume, stop_after=args.stop_after, force=args.force,
              dense_run=getattr(args, "dense", None), init_from=getattr(args, "init", None), device=args.device)
    except TrainingInterrupted:  # the loop wrote its checkpoint and said so
        sys.exit(130)
    except KeyboardInterrupt:  # outside the training loop, which checkpoints and says so itself
        print(f"interrupted outside the training loop: {run_dir} keeps the last checkpoint written, if any;"
              " continue with --resume, or start again with --force", file=sys.stderr)
        sys.exit(130)
    run = Run.open(run_dir)
    if args.stop_after is not None and args.stop_after < run.config.train.steps:
        print(f"stopped at step {args.stop_after} of {run.config.train.steps} with a checkpoint; continue with"
              f" `sparsecircuits train --out {run_dir} --resume`")
        return
    print(_format_eval(run_dir, evaluate_run(run, args.data, device=circuit_device(args.device))))


def _format_eval(run_dir: Path, result: dict) -> str:
    return (f"{run_dir}: validation loss {result['val_loss']:.4f} nats/token over {result['val_tokens']:,} tokens"
            f" (bigram baseline {result['bigram_loss']:.4f}, unigram {result['unigram_loss']:.4f});"
            f" dead MLP neurons {result['dead_neurons']}; nonzero weights {result['nonzero_weights']:,} of"
            f" {result['sparse_weights']:,} sparse (L0 {result['l0_fraction_measured']:.4g}, counted from the weights)")


def cmd_eval(args: argparse.Namespace) -> None:
    from ..train.evaluation import evaluate_run

    result = evaluate_run(args.run_dir, args.data, max_tokens=args.max_tokens, device=args.device)
    print(json.dumps(result, indent=1) if args.json else _format_eval(Path(args.run_dir), result))


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from ..model.gpt import SparseGPT

    model = SparseGPT.from_pretrained(args.run_dir, args.device)
    tokenizer = model.tokenizer
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        raise SparseCircuitsError("--prompt is empty: give some text to continue, e.g. --prompt 'def '")
    generator = torch.Generator(next(model.parameters()).device).manual_seed(args.seed)  # sampling draws where the model runs
    for _ in range(args.num_samples):
        out = model.generate(torch.tensor([ids]), args.max_new_tokens, args.temperature, args.top_k, generator)
        print(tokenizer.decode(out[0].tolist(), skip_special_tokens=False))
        print("-" * 40)


def cmd_configs(args: argparse.Namespace) -> None:
    from ..config import CONFIG_DIR, builtin_config_names, load_config

    if args.name is None:
        for name in builtin_config_names():
            first = (CONFIG_DIR / f"{name}.toml").read_text().splitlines()[0].lstrip("# ")
            print(f"{name:10s} {first}")
        return
    print(json.dumps(load_config(args.name, args.set).to_dict(), indent=1))


def register_prepare(sub) -> None:
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
    size.add_argument("--simple-share", type=real(0, 1, True, True), metavar="SHARE",
                      help="instead of --tokens: generate about this share of all training tokens as simple-python")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the simple-python generator (default 0)")
    p.add_argument("--vocab-size", type=POSITIVE, help="BPE vocabulary size (default 2048)")
    p.add_argument("--tokenizer", metavar="FILE_OR_DIR", help="tokenize with this tokenizer.json (or a run's or data"
                                                              " folder's) as it is, instead of training a BPE: data for an"
                                                              " imported model")
    p.add_argument("--val-fraction", type=real(0, 1, True, True), default=0.02, help="fraction of files held out for validation (default 0.02)")
    force_argument(p, "DATA_DIR", "prepare")
    p.set_defaults(func=cmd_prepare)


def register_train(sub) -> None:
    p = sub.add_parser("train", help="train a weight-sparse model",
                       description="Train a model into RUN_DIR, then print its validation loss beside a bigram baseline.")
    training_arguments(p)
    p.set_defaults(func=cmd_train)


def register_eval(sub) -> None:
    p = sub.add_parser("eval", help="validation loss of a trained run, beside n-gram baselines")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="data to evaluate on (default: the run's own)")
    p.add_argument("--max-tokens", type=POSITIVE, default=262144, help="validation tokens to use (default 262144)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    device_argument(p)
    p.set_defaults(func=cmd_eval)


def register_sample(sub) -> None:
    p = sub.add_parser("sample", help="continue a prompt with a trained model")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", default="def ", help="text to continue (default 'def ')")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    p.add_argument("--temperature", type=real(0, 100), default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=NON_NEGATIVE, default=50, help="sample from the k likeliest tokens (0: all)")
    p.add_argument("--num-samples", type=POSITIVE, default=1)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    device_argument(p)
    p.set_defaults(func=cmd_sample)


def register_configs(sub) -> None:
    p = sub.add_parser("configs", help="list the built-in configs, or show one fully resolved")
    p.add_argument("name", nargs="?", metavar="NAME_OR_FILE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_configs)


# each top-level command and the function that adds it to the parser
COMMANDS = {"prepare": register_prepare, "train": register_train, "eval": register_eval, "sample": register_sample, "configs": register_configs}
