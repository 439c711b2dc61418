"""A fuzzer for the input contract (Hypothesis): damaged versions of every kind of file the tool reads,
and odd values for every command option. For each: the command ends with exit 0, or with exit 2 and
one `error:` line, never a traceback, and a command that fails changes none of the user's files.

In CI a fixed seed and a few examples per file kind (`ci` profile, about a minute); the long run is
`python benchmarks/fuzz.py` (the `long` profile). Every failure it found is a named case in
tests/test_trust.py."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsecircuits.cli import build_parser, main
from tests.test_nothing_lost import _argv, _digest

settings.register_profile("ci", max_examples=6, derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("long", max_examples=int(os.environ.get("SPARSECIRCUITS_FUZZ_EXAMPLES", 300)), deadline=None,
                          database=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("SPARSECIRCUITS_FUZZ_PROFILE", "ci"))

# Values that break readers: huge and odd numbers, NaN and infinity, wrong types, deep nesting.
ODD_NUMBERS = st.sampled_from([0, -1, 2**63, 2**64 + 1, 10**400, -10**30, 1e308, 0.5, float("nan"), float("inf"),
                               -float("inf"), True, None])
JSON_VALUES = st.recursive(
    ODD_NUMBERS | st.text(max_size=8) | st.sampled_from(["", "\ud800", "²", "../../etc", "<svg onload=1>"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def json_damage(draw):
    """A change to a JSON file: a field set to an odd value, the file cut short, emptied, binary or nested too deep."""
    kind = draw(st.sampled_from(["field", "field", "truncate", "empty", "binary", "deep", "top"]))
    if kind == "field":
        path = draw(st.lists(st.integers(0, 20), min_size=1, max_size=3))
        value = draw(JSON_VALUES)
        return "field", (path, value)
    if kind == "truncate":
        return "truncate", draw(st.floats(0, 0.99))
    if kind == "binary":
        return "binary", draw(st.binary(min_size=1, max_size=64))
    if kind == "deep":
        return "deep", draw(st.integers(1000, 20000))
    if kind == "top":
        return "top", draw(JSON_VALUES)
    return "empty", None


def _set_field(value, path, new):
    """Replace the item that `path` (indices into keys or items, wrapped) picks inside `value`."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return new
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = keys[path[0] % len(keys)]
    value[key] = _set_field(value[key], path[1:], new)
    return value


def _dumps(value) -> str:
    try:
        return json.dumps(value, allow_nan=True)
    except ValueError:  # an integer too long for str(): written by hand, as a file could hold it
        return "9" * 5000


def apply_json_damage(path: Path, damage) -> None:
    kind, arg = damage
    text = path.read_text()
    if kind == "field":
        if path.suffix == ".jsonl":  # one record of the file
            lines = text.splitlines()
            line = arg[0][0] % len(lines)
            lines[line] = _dumps(_set_field(json.loads(lines[line]), arg[0][1:], arg[1]))
            text = "\n".join(lines) + "\n"
        else:
            text = _dumps(_set_field(json.loads(text), *arg))
        path.write_text(text, errors="surrogatepass")
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * arg)])
    elif kind == "binary":
        path.write_bytes(arg)
    elif kind == "deep":
        path.write_text(_nested(arg))
    elif kind == "top":
        path.write_text(_dumps(arg), errors="surrogatepass")
    else:
        path.write_text("")


@st.composite
def safetensors_damage(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "header", "binary", "empty"]))
    if kind == "flip":
        return kind, (draw(st.floats(0, 0.999)), draw(st.integers(1, 255)))
    if kind == "truncate":
        return kind, draw(st.floats(0, 0.99))
    if kind == "header":
        return kind, draw(JSON_VALUES)
    if kind == "binary":
        return kind, draw(st.binary(min_size=1, max_size=64))
    return kind, None


def apply_safetensors_damage(path: Path, damage) -> None:
    kind, arg = damage
    data = bytearray(path.read_bytes())
    if kind == "flip":
        at = int(len(data) * arg[0])
        data[at] ^= arg[1]
    elif kind == "truncate":
        data = data[: int(len(data) * arg)]
    elif kind == "header":  # a header of another shape, the same tensors after it
        size = struct.unpack("<Q", bytes(data[:8]))[0]
        header = _dumps(arg).encode(errors="surrogatepass")
        data = bytearray(struct.pack("<Q", len(header)) + header + bytes(data[8 + size:]))
    elif kind == "binary":
        data = bytearray(arg)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


SPECIAL = ["folder", "fifo", "loop", "dangling"]


def make_special(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        path.symlink_to(path)
    else:
        path.symlink_to(path.parent / "nowhere")


# (file, the command that reads it); @R a finished run with its data in R/data, @S a stopped run, @C a circuit
FILE_KINDS = {
    "R/config.json": ["sample", "@R", "--max-new-tokens", "1"],
    "R/run.json": ["sample", "@R", "--max-new-tokens", "1"],
    "R/tokenizer.json": ["sample", "@R", "--max-new-tokens", "1"],
    "R/data/manifest.json": ["eval", "@R", "--data", "@R/data", "--max-tokens", "64"],
    "S/run/checkpoint/state.json": ["train", "--resume", "--out", "@S/run"],
    "S/run/metrics.jsonl": ["train", "--resume", "--out", "@S/run"],
    "R/data/tokenizer.json": ["eval", "@R", "--data", "@R/data", "--max-tokens", "64"],
    "S/run/config.json": ["train", "--resume", "--out", "@S/run"],
    "S/run/run.json": ["train", "--resume", "--out", "@S/run"],
    "T/checkpoints/step_000100/checkpoint.json": ["tasks", "eval", "@T", "--step", "100", "--task", "@C/my_task.jsonl"],
    "C/circuit.json": ["validate", "@C", "--no-control", "--task", "@C/my_task.jsonl"],
    "C/my_task.jsonl": ["tasks", "eval", "@T", "--task", "@C/my_task.jsonl"],
}
TENSOR_KINDS = {
    "R/model.safetensors": ["sample", "@R", "--max-new-tokens", "1"],
    "S/run/checkpoint/optimizer.safetensors": ["train", "--resume", "--out", "@S/run"],
    "S/run/checkpoint/model.safetensors": ["train", "--resume", "--out", "@S/run"],
    "T/checkpoints/step_000100/model.safetensors": ["tasks", "eval", "@T", "--step", "100", "--task", "@C/my_task.jsonl"],
    "R/data/train.bin": ["eval", "@R", "--data", "@R/data", "--max-tokens", "64"],
}


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory, trained_run, task_run, circuit_dir, data_dir):
    """Pristine copies, made once; each example works on a fresh copy of them."""
    from sparsecircuits.config import load_config
    from sparsecircuits.train.trainer import train
    from tests.conftest import TINY_OVERRIDES

    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(trained_run, root / "R")
    shutil.copytree(data_dir, root / "R" / "data")
    train(load_config("tiny", TINY_OVERRIDES), data_dir, root / "S" / "run", show_progress=False, stop_after=10)
    shutil.copytree(task_run[0], root / "T")
    shutil.copytree(circuit_dir, root / "C")
    shutil.copyfile(task_run[1], root / "C" / "my_task.jsonl")
    return root


def _fresh(fuzz_world: Path, tmp: Path) -> dict:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(fuzz_world, tmp, symlinks=True)
    return {name: tmp / name for name in ("R", "S", "T", "C")} | {"tmp": tmp}


HANG_SECONDS = 120


class Hung(BaseException):
    """Not an OSError (as TimeoutError is), which the CLI would report as one error line and pass."""


def _run_and_check(capsys, argv, world, damaged: Path) -> None:
    """Exit 0 (or a documented status), or exit 2 with one `error:` line and no traceback, leaving the
    user's files as they were."""
    watched = [world[name] for name in ("R", "S", "T", "C")]
    before = {str(folder): _digest(folder) for folder in watched}
    capsys.readouterr()

    def hung(signum, frame):  # a read of a pipe waits forever: fail the example instead of the whole run
        raise Hung(f"{argv} did not finish in {HANG_SECONDS} s with {damaged} damaged")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    try:
        main(_argv(argv, world))
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, damaged, err[-2000:])
    if code == 0 or (code == 1 and argv[0] == "validate"):  # validate's documented status: not evidence
        return
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, (argv, damaged, code, err[-2000:])
    for folder in watched:
        assert _digest(folder) == before[str(folder)], (argv, damaged, "changed", folder)


@pytest.mark.parametrize("target", list(FILE_KINDS))
@given(damage=json_damage() | st.tuples(st.just("special"), st.sampled_from(SPECIAL)))
def test_a_damaged_json_file_is_one_error_or_nothing(capsys, tmp_path, fuzz_world, target, damage):
    world = _fresh(fuzz_world, tmp_path / "w")
    path = world[target.split("/")[0]] / target.split("/", 1)[1]
    if damage[0] == "special":
        make_special(path, damage[1])
    else:
        apply_json_damage(path, damage)
    _run_and_check(capsys, FILE_KINDS[target], world, path)


@pytest.mark.parametrize("target", list(TENSOR_KINDS))
@given(damage=safetensors_damage())
def test_a_damaged_tensor_file_is_one_error_or_nothing(capsys, tmp_path, fuzz_world, target, damage):
    world = _fresh(fuzz_world, tmp_path / "w")
    path = world[target.split("/")[0]] / target.split("/", 1)[1]
    apply_safetensors_damage(path, damage)
    _run_and_check(capsys, TENSOR_KINDS[target], world, path)


def _options():
    """(command words, option, whether it takes a value) for every option of every subcommand."""
    found = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, words + [name])
            elif action.option_strings and not isinstance(action, argparse._HelpAction) and action.dest != "version":
                found.append((tuple(words), action.option_strings[-1], action.nargs != 0))
    walk(build_parser(), [])
    return found


ODD_OPTION_VALUES = st.sampled_from(["", "-1", "0", "nan", "inf", "-inf", "1e309", "9" * 5000, "²", "٣", "0x10", "1_000",
                                     " 1", "1,2,,3", "a=b", "/dev/null", ".", "..", "\u202e", "x" * 300, "-", "--"])


@given(option=st.sampled_from(_options()), value=ODD_OPTION_VALUES)
def test_an_odd_value_for_any_option_is_parsed_or_refused_in_one_line(capsys, option, value):
    """At parse time: every option's type takes the value or refuses it with one line and exit 2."""
    words, flag, takes_value = option
    argv = [*words, flag, value] if takes_value else [*words, flag]
    try:
        build_parser().parse_known_args(argv)
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 2 and "Traceback" not in err, (argv, err)
        assert len([line for line in err.strip().splitlines() if line.startswith("error:")]) == 1, (argv, err)
