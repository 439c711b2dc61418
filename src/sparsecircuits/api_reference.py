"""docs/api.md from the package's own docstrings: every name `sparsecircuits` exports, and the methods
a researcher calls on a model, a run and a circuit.

    python -m sparsecircuits.api_reference > docs/api.md

A test regenerates it and compares, so the reference cannot fall behind the code.
"""

from __future__ import annotations

import inspect

import sparsecircuits

# the classes whose public methods are listed under them
METHODS = {"SparseGPT": ("to_tokens", "to_string", "to_str_tokens", "forward", "generate", "loss", "hooks",
                         "run_with_hooks", "run_with_cache", "from_pretrained"),
           "Run": ("open", "model", "node_means", "data", "at_step"),
           "Circuit": ("load", "keep", "only", "load_model", "scores", "task_source")}


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__ or "(no docstring)")


def reference() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python -m sparsecircuits.api_reference > docs/api.md`. Every",
             "command of the CLI is a function here with the same defaults; `docs/cli.md` describes the commands.", ""]
    for name in sparsecircuits.__all__:
        obj = getattr(sparsecircuits, name)
        kind = "class" if inspect.isclass(obj) else "function"
        lines += [f"## `{name}`", "", f"```python\n{name}{_signature(obj)}\n```", f"({kind}, `{obj.__module__}`)", "",
                  _doc(obj), ""]
        for method in METHODS.get(name, ()):
            member = getattr(obj, method)
            lines += [f"### `{name}.{method}`", "", f"```python\n{method}{_signature(member)}\n```", "", _doc(member), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
