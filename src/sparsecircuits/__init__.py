"""sparsecircuits: weight-sparse transformers and their circuits."""

from .circuits import Circuit, PruneSettings, validate
from .circuits.prune import prune
from .config import Config, load_config
from .data.dataset import TokenData, load_tokenizer
from .data.prepare import prepare
from .errors import SparseCircuitsError
from .model.gpt import SparseGPT
from .rundir import Run
from .train.trainer import train

__all__ = ["Circuit", "Config", "PruneSettings", "Run", "SparseCircuitsError", "SparseGPT", "TokenData", "load_config",
           "load_tokenizer", "prepare", "prune", "train", "validate"]
__version__ = "0.1.0"
