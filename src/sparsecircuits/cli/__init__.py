"""The `sparsecircuits` command: a thin layer over the Python API, one module per workflow
(`training`, `bridges`, `tasks`, `circuits`, `experiments`, `interop`), each adding its own subcommands
beside their handlers; `args` holds what they share."""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..errors import SparseCircuitsError
from ..io import disk_error
from . import bridges, circuits, experiments, interop, tasks, training
from .args import EXIT_BAD_INPUT, EXIT_VALIDATION_FAILED, Parser

__all__ = ["EXIT_BAD_INPUT", "EXIT_VALIDATION_FAILED", "build_parser", "main"]

COMMANDS = {**training.COMMANDS, **bridges.COMMANDS, **tasks.COMMANDS, **circuits.COMMANDS, **experiments.COMMANDS,
            **interop.COMMANDS}
# the order of `sparsecircuits --help`
ORDER = ["prepare", "train", "bridge", "steer", "eval", "sample", "tasks", "prune", "validate", "cleanup", "paths", "view", "evolve", "explain", "demo",
         "compare", "sweep", "label", "import-openai", "import-openai-circuit", "export-openai", "configs"]


def build_parser() -> Parser:
    parser = Parser(prog="sparsecircuits", description=(
        "Train weight-sparse transformers and find the circuits behind their predictions."))
    parser.add_argument("--version", action="version", version=f"sparsecircuits {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ORDER:
        COMMANDS[name](sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SparseCircuitsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except BrokenPipeError:  # `sparsecircuits configs tiny | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        sys.exit(0)
    except OSError as err:  # a disk that filled up, a file that vanished: say which, without a traceback
        if err.filename:
            message = str(disk_error(err, err.filename, writing=False))
        else:
            message = f"{err.strerror or err}"
        print(f"error: {message}", file=sys.stderr)
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
