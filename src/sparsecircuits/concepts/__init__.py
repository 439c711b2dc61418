"""Python concepts computed from source text, aligned to tokens, for labelling nodes."""

from .library import PYTHON_CONCEPTS, Concept, token_values
from .source import SourceFacts

__all__ = ["PYTHON_CONCEPTS", "Concept", "SourceFacts", "token_values"]
