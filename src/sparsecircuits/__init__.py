"""sparsecircuits: weight-sparse transformers and their circuits.

Every command of the `sparsecircuits` CLI is a function here with the same defaults (the CLI calls
it): prepare, train (and `bridge train`: train with `dense_run`), evaluate (`eval`), score_tasks and
audit_task (`tasks eval`, `tasks audit`), prune, validate, cleanup, paths, view, label, explain, evolve,
compare, sweep, demo, bridge_eval, bridge_demo, steer, import_openai, import_openai_circuit, export_openai.
Names load on first use, so `import sparsecircuits` (and `sparsecircuits --help`) reads no torch.
"""

import functools
import importlib
import sys
import types

# name: (module, attribute)
_LAZY = {
    "Config": ("config", "Config"), "load_config": ("config", "load_config"),
    "TokenData": ("data.dataset", "TokenData"), "load_tokenizer": ("data.dataset", "load_tokenizer"),
    "prepare": ("data.prepare", "prepare"), "SparseCircuitsError": ("errors", "SparseCircuitsError"),
    "SparseGPT": ("model.gpt", "SparseGPT"), "Run": ("rundir", "Run"),
    "Circuit": ("circuits.circuit", "Circuit"), "PruneSettings": ("circuits.find", "PruneSettings"),
    "prune": ("circuits.prune", "prune"), "validate": ("circuits.validate", "validate"),
    "cleanup": ("circuits.cleanup", "cleanup"), "paths": ("circuits.paths", "paths"), "view": ("viewer", "view"), "label": ("circuits.labels", "label_run"),
    "explain": ("circuits.explain", "node_examples"), "evolve": ("experiments.evolve", "evolve"),
    "compare": ("experiments.compare", "compare"), "sweep": ("experiments.sweep", "sweep"),
    "demo": ("experiments.demo", "demo"), "evaluate": ("train.evaluation", "evaluate_run"),
    "score_tasks": ("tasks.audit", "score_tasks"), "audit_task": ("tasks.audit", "audit_task"),
    "bridge_eval": ("bridges.evaluate", "run_bridge_eval"), "bridge_demo": ("experiments.bridge_demo", "bridge_demo"),
    "steer": ("bridges.steer", "run_steer"), "import_openai": ("interop.openai", "import_openai"),
    "import_openai_circuit": ("interop.openai", "import_openai_circuit"), "export_openai": ("interop.openai", "export_openai"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sparsecircuits' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "train"})


class _Train:
    """`sparsecircuits.train`: the function `train.trainer.train` when called (its name, docstring and
    signature), the subpackage `sparsecircuits.train` for every other attribute."""

    def __init__(self):
        functools.update_wrapper(self, importlib.import_module(".train.trainer", __name__).train)

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(sys.modules[f"{__name__}.train"], name)


class _Package(types.ModuleType):
    """`train` names both the function and the subpackage; loading the subpackage sets it as this
    package's attribute, so `train` is a property that such a set leaves alone."""

    @property
    def train(self) -> _Train:
        if "_train" not in self.__dict__:
            self.__dict__["_train"] = _Train()
        return self.__dict__["_train"]

    @train.setter
    def train(self, subpackage):
        pass  # the subpackage stays in sys.modules and reachable through `train`'s other attributes


sys.modules[__name__].__class__ = _Package
__all__ = sorted([*_LAZY, "train"])
__version__ = "0.1.0"
