from .gpt import SparseGPT
from .sites import record_into, replace_with

__all__ = ["SparseGPT", "record_into", "replace_with"]
