from .circuit import Circuit, prune
from .prune import PruneSettings
from .validate import validate

__all__ = ["Circuit", "PruneSettings", "prune", "validate"]
