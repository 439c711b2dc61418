"""Per-token Python concepts: plain data, each a function of the source text.

A concept gives one value per character (`SourceFacts` has the per-character facts; NaN is
unknown) and says how a token's value comes from its characters: "last" (the state after reading
the token's last character, for states such as "inside a string") or "any" (for marks such as
"a numeric literal" or "closes a string"). Binary concepts are 0/1; numeric ones any number.

Adding one is a function of the text:

    from sparsecircuits.concepts import Concept, PYTHON_CONCEPTS
    todo = Concept("in_todo_comment", "inside a comment containing TODO", "binary", "last",
                   lambda facts: ...per-character array...)
    concepts = PYTHON_CONCEPTS + [todo]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .source import LINE_KEYWORDS, OPENERS, SourceFacts


@dataclass(frozen=True)
class Concept:
    name: str
    description: str
    kind: str  # "binary" or "numeric"
    aggregate: str  # "last" or "any"
    values: Callable[[SourceFacts], np.ndarray]  # per character, NaN where unknown


def _b(name, description, values, aggregate="last"):
    return Concept(name, description, "binary", aggregate, values)


def _n(name, description, values):
    return Concept(name, description, "numeric", "last", values)


_CONTAINERS = {"call": 1, "dict": 2, "list": 3, "set": 4, "tuple": 5, "subscript": 6}
_BRACKET_NAMES = {"(": "parentheses", "[": "square brackets", "{": "braces"}

PYTHON_CONCEPTS: list[Concept] = [
    _b("in_string", "inside a string literal (its text, not an f-string's {field})", lambda f: f.in_string),
    _b("in_single_quoted_string", "inside a '...' string", lambda f: f.in_single * (f.in_string > 0)),
    _b("in_double_quoted_string", 'inside a "..." string', lambda f: f.in_double * (f.in_string > 0)),
    _b("in_triple_quoted_string", "inside a triple-quoted string", lambda f: f.in_triple * (f.in_string > 0)),
    _b("in_fstring", "inside an f-string (its text or a {field})", lambda f: f.in_fstring),
    _b("in_fstring_field", "inside an f-string's {field}", lambda f: f.in_fstring_brace),
    _b("opens_string", "the token opens a string", lambda f: f.opens_string, "any"),
    _b("closes_string", "the token closes a string", lambda f: f.closes_string, "any"),
    _b("in_comment", "inside a # comment", lambda f: f.in_comment),
    _b("in_docstring", "inside a docstring", lambda f: f.docstrings),
    *[_b(f"inside_{_BRACKET_NAMES[o].replace(' ', '_')}", f"inside {_BRACKET_NAMES[o]}",
         (lambda o: lambda f: (f.depth[o] > 0).astype(np.float32))(o)) for o in OPENERS],
    *[_n(f"{_BRACKET_NAMES[o].replace(' ', '_')}_depth", f"nesting depth of {_BRACKET_NAMES[o]}",
         (lambda o: lambda f: f.depth[o])(o)) for o in OPENERS],
    *[_b(f"innermost_{name}", f"the innermost bracket is a {name}" + (" (its argument list)" if name == "call" else ""),
         (lambda k: lambda f: f.container(k))(kind)) for name, kind in _CONTAINERS.items()],
    _n("indent_columns", "indentation of the line, in columns (tabs to multiples of 8)", lambda f: f.indent_columns),
    _n("position_in_line", "column within the physical line", lambda f: f.column),
    _b("first_token_of_line", "the first token of a line", lambda f: f.first_of_line, "any"),
    _b("end_of_statement", "the line break that ends a statement", lambda f: f.end_of_statement, "any"),
    *[_b(f"line_starts_with_{word}", f"on a line that starts with `{word}`" + (" (or `from`)" if word == "import" else ""),
         (lambda w: lambda f: f.line_keyword[w])(word)) for word in LINE_KEYWORDS],
    _b("in_lambda", "inside a lambda expression", lambda f: f.node_spans(_ast_types("Lambda"))),
    _b("in_parameter_list", "inside a def's parameter list", lambda f: f.parameter_lists),
    _b("in_function_body", "inside a function's body", lambda f: f.bodies(_ast_types("FunctionDef", "AsyncFunctionDef"))),
    _b("in_class_body", "inside a class's body", lambda f: f.bodies(_ast_types("ClassDef"))),
    _b("after_assignment_equals", "right after the = of an assignment", lambda f: f.after("=", inside_brackets=False), "any"),
    _b("after_keyword_equals", "right after the = of a keyword argument or default", lambda f: f.after("=", inside_brackets=True), "any"),
    _b("after_double_equals", "right after ==", lambda f: f.after("=="), "any"),
    _b("after_is", "right after `is`", lambda f: _after_keyword(f, "is"), "any"),
    _b("name_defined_earlier", "a name bound earlier in the text", lambda f: f.defined_earlier, "any"),
    _b("loop_variable", "the variable of an enclosing for loop", lambda f: f.loop_variables, "any"),
    _b("numeric_literal", "a number", lambda f: f.word_mask({"number"}), "any"),
    _b("keyword", "a Python keyword", lambda f: f.word_mask({"keyword"}), "any"),
    _b("identifier", "a name (not a keyword)", lambda f: f.word_mask({"name"}), "any"),
    _b("operator", "an operator or delimiter (not a bracket)", lambda f: _operators(f), "any"),
]


def _ast_types(*names: str) -> tuple:
    import ast

    return tuple(getattr(ast, name) for name in names)


def _after_keyword(facts: SourceFacts, word: str) -> np.ndarray:
    out = np.zeros(facts.n, dtype=np.float32)
    for start, end, before, at in facts.previous_word:
        if before == "keyword" and facts.text[at:at + len(word)] == word and not facts.text[at + len(word):at + len(word) + 1].isalnum():
            out[start:end] = 1
    return out


def _operators(facts: SourceFacts) -> np.ndarray:
    skip = {"name", "keyword", "number", "string", *OPENERS, *")]}"}
    return facts.word_mask({kind for _, _, kind in facts.words if kind not in skip})


def token_values(text: str, offsets: Sequence[tuple[int, int]], concepts: Sequence[Concept] = PYTHON_CONCEPTS,
                 facts: SourceFacts | None = None) -> np.ndarray:
    """(tokens, concepts) values for the tokens at these character offsets of `text`; NaN where unknown
    (and for tokens that span no character)."""
    facts = facts or SourceFacts(text)
    out = np.full((len(offsets), len(concepts)), np.nan, dtype=np.float32)
    starts = np.array([s for s, _ in offsets], dtype=np.int64)
    ends = np.array([e for _, e in offsets], dtype=np.int64)
    has_chars = ends > starts
    for c, concept in enumerate(concepts):
        per_char = np.asarray(concept.values(facts), dtype=np.float32)
        if concept.aggregate == "last":
            out[has_chars, c] = per_char[ends[has_chars] - 1]
        else:  # any: the maximum over the token's characters (NaN if any is unknown)
            padded = np.concatenate([[0.0], np.nan_to_num(per_char, nan=0.0).cumsum()])
            unknown = np.concatenate([[0], np.isnan(per_char).cumsum()])
            marked = padded[ends[has_chars]] - padded[starts[has_chars]]
            out[has_chars, c] = np.where(unknown[ends[has_chars]] > unknown[starts[has_chars]], np.nan, marked > 0)
    return out
