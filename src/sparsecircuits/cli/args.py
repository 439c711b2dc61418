"""What every `sparsecircuits` subcommand shares: the parser class, argument types and repeated argument blocks."""

from __future__ import annotations

import argparse
import math
import sys

EXIT_BAD_INPUT = 2  # any error: line
EXIT_VALIDATION_FAILED = 1  # `validate`: the circuit is not evidence; `tasks audit`: a task is flagged


class Parser(argparse.ArgumentParser):
    """argparse, with its complaints as the same one `error:` line as every other bad input."""

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def shown(text: str, limit: int = 24) -> str:
    """A user's value as quoted in a message: cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


LARGEST = 2**63 - 1  # seeds and counts fit a signed 64-bit integer (torch's and numpy's seeds)


def integer(low: int, high: int = LARGEST):
    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-")
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 40:
            raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a whole number from {low} to {high}")
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= {low}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{value} is too large: give a whole number <= {high}")
        return value
    return parse


def real(low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """A finite number in the interval given (open at either end on request)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a finite number")
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: give a number in {interval}")
        return value
    return parse


POSITIVE, NON_NEGATIVE = integer(1), integer(0)
TASK_LOSS = real(0.0, math.log(2), low_open=True, high_open=True)  # between perfect and chance


def targets(text: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"'{text}' has an empty item: give target losses separated by commas, e.g. 0.3,0.15")
    return tuple(TASK_LOSS(t) for t in items)


def step_list(text: str) -> list[int]:
    items = [t.strip() for t in text.split(",")]
    if not all(item.isascii() and item.isdigit() and len(item) <= 12 for item in items):
        raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a comma list of training steps, e.g. 500,1000,1500")
    return [int(item) for item in items]


def suite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=["paper", "hard"], default="paper",
                        help="paper: the paper's 20 contrasts as it poses them (default); hard: their harder forms and the"
                             " paper's adversarial checks")


def force_argument(parser: argparse.ArgumentParser, folder: str, command: str) -> None:
    """`--force` as every command that makes a folder has it: only what that command made is replaced."""
    parser.add_argument("--force", action="store_true", help=f"replace {folder} if `{command}` made it")


def device_argument(parser: argparse.ArgumentParser, trains: bool = False) -> None:
    """`--device` on a command that runs a model. The circuit commands default to the CPU, where a circuit
    comes out the same on every machine; a command that trains defaults to its config's train.device."""
    from ..config import DEVICES

    if trains:
        parser.add_argument("--device", choices=DEVICES, help="where the models train and run: cpu, cuda or auto (CUDA"
                            " when there is one); default: training on the config's train.device (auto), everything else"
                            " on the CPU")
    else:
        parser.add_argument("--device", choices=DEVICES, default="cpu",
                            help="where the model runs: cpu (default: the same results on every machine), cuda, or auto"
                                 " (CUDA when there is one)")


def prune_default(name: str):
    from ..circuits.settings import PruneSettings

    return getattr(PruneSettings(), name)


def training_arguments(p: argparse.ArgumentParser, data_help: str = "prepared data (default: the standard library with simple-python,"
                        " prepared and cached on first use)") -> None:
    from ..config import builtin_config_names

    p.add_argument("--config", metavar="NAME_OR_FILE",
                   help=f"built-in config ({', '.join(builtin_config_names())}) or a TOML file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.steps=500 (repeatable)")
    p.add_argument("--data", metavar="DATA_DIR", help=data_help)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create (or continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="start RUN_DIR again if `train` made it (e.g. after a failed start)")
    device_argument(p, trains=True)
    p.add_argument("--stop-after", type=POSITIVE, metavar="STEP",
                   help="end at this step with a checkpoint, to continue later with --resume (e.g. to fit a job time limit)")
