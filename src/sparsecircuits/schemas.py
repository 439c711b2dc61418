"""The JSON files sparsecircuits reads, each with its schema, checked in one place before use: a
damaged or hand-edited file is one error naming the file and the field, never a traceback.

A schema is a `Kind` (what one value must be), a dict of keys (`Optional(kind)` for keys a file may
lack; other keys are allowed), or a one-element list (every item of a list).
"""

from __future__ import annotations

import errno
import json
import math
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SparseCircuitsError


@dataclass(frozen=True)
class Kind:
    what: str
    test: Callable[[Any], bool]


@dataclass(frozen=True)
class Optional:
    kind: Any


_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
_number = lambda v: (_int(v) or isinstance(v, float)) and math.isfinite(v)
STRING = Kind("a string", lambda v: isinstance(v, str))
STRING_OR_NULL = Kind("a string or null", lambda v: v is None or isinstance(v, str))
INTEGER = Kind("an integer", _int)
COUNT = Kind("a whole number >= 0", lambda v: _int(v) and v >= 0)
POSITIVE = Kind("a whole number >= 1", lambda v: _int(v) and v >= 1)
NUMBER = Kind("a finite number", _number)
NUMBER_OR_NULL = Kind("a finite number or null", lambda v: v is None or _number(v))
BOOLEAN = Kind("true or false", lambda v: isinstance(v, bool))
TASK_LOSS = Kind("a number between 0 and ln 2", lambda v: _number(v) and 0 < v < math.log(2))


def one_of(*values: str) -> Kind:
    return Kind(" or ".join(map(json.dumps, values)), lambda v: v in values)


OBJECT = Kind("an object", lambda v: isinstance(v, dict))

RUN_INFO = {"tokenizer_sha256": STRING, "data": Optional(STRING_OR_NULL), "data_relative": Optional(STRING_OR_NULL),
            "config_hash": Optional(STRING), "run_id": Optional(STRING_OR_NULL),
            "weights": Optional({"sha256": STRING, "dtype": STRING})}
TOKEN_COUNT = Kind("a whole number from 1 to 65536 (tokens are stored as uint16)", lambda v: _int(v) and 1 <= v <= 65536)
MANIFEST = {"vocab_size": TOKEN_COUNT, "eot_id": COUNT, "tokenizer_sha256": STRING, "tokens": {"train": COUNT, "val": COUNT}}
CHECKPOINT_STATE = {"step": COUNT, "param_groups": [OBJECT], "optimizer_scalars": OBJECT, "config_hash": Optional(STRING),
                    "config": Optional(OBJECT), "run_id": Optional(STRING_OR_NULL), "model_sha256": Optional(STRING)}
KEPT_MODEL = {"step": COUNT, "val_loss": NUMBER, "l0_fraction": NUMBER, "weights_sha256": STRING,
              "config_hash": STRING, "run_id": STRING_OR_NULL}
NODE = {"site": STRING, "index": COUNT}
EDGE = {"src": NODE, "dst": NODE, "kind": STRING, "weight": NUMBER}
COUNTS = Kind("an object of whole numbers >= 0", lambda v: isinstance(v, dict) and all(_int(n) and n >= 0 for n in v.values()))
# Every key a reader of circuit.json uses is here (other keys are allowed, and not read).
CIRCUIT_METRICS = {"n_nodes": COUNT, "n_edges": COUNT, "loss_circuit": NUMBER, "n_edges_by_kind": Optional(COUNTS),
                   **{key: Optional(NUMBER) for key in ("logit_scale", "loss_full_model", "loss_circuit_calibrated",
                                                       "loss_circuit_ablated", "loss_random_same_size", "loss_empty_circuit",
                                                       "accuracy_circuit", "accuracy_full_model", "loss_choose")}}
CIRCUIT = {"format": Optional(POSITIVE), "task": STRING, "task_source": STRING, "target_loss": TASK_LOSS,
           "ablation": one_of("mean", "zero"), "means_data": Optional(STRING_OR_NULL), "records_sha256": Optional(STRING),
           "records": Optional(COUNTS), "search_trials": Optional(COUNT),
           "model": {"run_dir": STRING, "weights_sha256": STRING, "step": Optional(COUNT), "name": Optional(STRING),
                     "config_hash": Optional(STRING)},
           "nodes": [NODE], "edges": [EDGE], "metrics": CIRCUIT_METRICS, "settings": OBJECT,
           "edge_circuit": Optional({"nodes": [NODE], "edges": [EDGE], "metrics": CIRCUIT_METRICS})}
# The authors' GPTConfig: its optional widths (the required sizes and every key's name are checked on import).
_WIDTH = Optional(Kind("a whole number >= 1 or null", lambda v: v is None or (_int(v) and v >= 1)))
OPENAI_CONFIG = {"d_head": _WIDTH, "d_mlp": _WIDTH, "n_mlp": _WIDTH}
VALIDATION = {"sufficient": BOOLEAN, "necessary": BOOLEAN, "evidence": BOOLEAN, "loss_circuit": NUMBER,
              "loss_circuit_ablated": NUMBER, "n_edges": COUNT, "controls": OBJECT}
LABELS = {"weights_sha256": STRING, "threshold": NUMBER, "tokens_read": COUNT,
          "nodes": [{"site": STRING, "index": COUNT, "labels": [OBJECT]}]}


def is_index(text: str) -> bool:
    """`text` is a whole number written in ASCII digits (str.isdigit also passes '²', which int() refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def problem(value: Any, schema: Any, where: str = "") -> str | None:
    """What is wrong with `value` against `schema` ('field x.y must be ...'), or None."""
    here = where or "the file"
    if isinstance(schema, Kind):
        return None if schema.test(value) else f"{here} must be {schema.what}, not {json.dumps(value)[:40]}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{here} must be a list"
        for i, item in enumerate(value):
            found = problem(item, schema[0], f"{where}[{i}]")
            if found:
                return found
        return None
    if not isinstance(value, dict):
        return f"{here} must be an object"
    for key, kind in schema.items():
        optional = isinstance(kind, Optional)
        if key not in value:
            if optional:
                continue
            return f"'{where + '.' if where else ''}{key}' is missing"
        found = problem(value[key], kind.kind if optional else kind, f"{where + '.' if where else ''}{key}")
        if found:
            return found
    return None


def check(value: Any, schema: Any, path: str | Path, fix: str) -> Any:
    found = problem(value, schema)
    if found:
        raise SparseCircuitsError(f"{path}: {found}: {fix}")
    return value


def file_problem(path: str | Path) -> str | None:
    """What stops `path` from being read as a file ("is missing", "is a folder, not a file", "is a
    symbolic link loop", ...), or None. A pipe is refused here, before a read would wait on it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a symbolic link to nothing" if path.is_symlink() else "is missing"
    except OSError as err:
        return "is a symbolic link loop" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


# What every parser of a user's file catches besides its own error: nesting deeper than Python's
# stack (RecursionError) and numbers beyond what a float or an int conversion holds.
PARSE_ERRORS = (ValueError, RecursionError, OverflowError, MemoryError)


def read_json(path: str | Path, schema: Any, fix: str) -> Any:
    """The JSON file at `path`, checked against `schema`; `fix` says what to do when it is damaged."""
    found = file_problem(path)
    if found:
        raise SparseCircuitsError(f"{path} {found}: {fix}")
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, *PARSE_ERRORS):
        raise SparseCircuitsError(f"{path} is not valid JSON (damaged, cut short or nested too deep): {fix}") from None
    except OSError as err:
        raise SparseCircuitsError(f"{path} cannot be read ({err.strerror}): {fix}") from None
    return check(value, schema, path, fix)
