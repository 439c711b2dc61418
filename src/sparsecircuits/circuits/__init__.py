from .circuit import Circuit
from .find import PruneSettings
from .validate import validate

# `prune` (the function) is `sparsecircuits.prune` or `sparsecircuits.circuits.prune.prune`:
# bound here, its name would hide the module `circuits.prune`.
__all__ = ["Circuit", "PruneSettings", "validate"]
