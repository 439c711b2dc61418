"""What a piece of Python source is at every character, from the text alone.

`SourceFacts(text)` reads the text twice:

- a lexer of Python's string, comment and bracket rules (string prefixes, triple quotes, escapes,
  f-strings with nested replacement fields and strings inside them, CRLF and lone CR line ends,
  tabs), which works on any text: an unterminated string leaves the string facts unknown from its
  opening quote to the end of its line (to the end of the text for a triple quote), never guessed;
- `ast.parse`, for what needs the grammar (which container a bracket opens, parameter lists,
  docstrings, names bound earlier, loop variables): when the text does not parse, those facts are
  unknown for the whole text.

Every per-character fact describes the state *after* reading that character (after an opening quote
you are inside the string, after the closing one you are not), which is what a model has seen when
it predicts the next token.
"""

from __future__ import annotations

import ast
import keyword
import re
from functools import cached_property

import numpy as np

STRING_PREFIXES = {"", "r", "u", "b", "br", "rb", "f", "fr", "rf"}
OPENERS, CLOSERS = "([{", ")]}"
LINE_KEYWORDS = ("def", "class", "if", "elif", "else", "for", "while", "return", "with", "import", "try", "except")
_NAME = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?[jJ]?")
_OPERATOR = re.compile(r"\*\*=|//=|>>=|<<=|->|:=|==|!=|<=|>=|\*\*|//|<<|>>|[-+*/%&|^@]=|[-+*/%&|^@~<>=.,:;]")


class SourceFacts:
    """Per-character facts of one text; arrays of length len(text), float with NaN for unknown."""

    def __init__(self, text: str):
        self.text = text
        n = len(text)
        self.n = n
        nan = lambda: np.full(n, np.nan, dtype=np.float32)
        zeros = lambda: np.zeros(n, dtype=np.float32)
        # lexer facts
        self.in_string, self.in_single, self.in_double, self.in_triple = zeros(), zeros(), zeros(), zeros()
        self.in_fstring, self.in_fstring_brace = zeros(), zeros()
        self.opens_string, self.closes_string, self.in_comment = zeros(), zeros(), zeros()
        self.depth = {ch: nan() for ch in OPENERS}  # recorded in code, carried over strings and comments
        self.code = np.zeros(n, dtype=bool)  # outside strings and comments (f-string expressions are code)
        self.string_known = np.ones(n, dtype=bool)
        self.matching: dict[int, int] = {}  # opening bracket offset -> its closing bracket's offset
        self.string_spans: list[tuple[int, int]] = []  # (start incl. prefix, end) of every string literal
        self._lex()
        for opener in OPENERS:
            self.depth[opener] = _forward_fill(self.depth[opener])
        for name in ("in_string", "in_single", "in_double", "in_triple", "in_fstring", "in_fstring_brace",
                     "opens_string", "closes_string", "in_comment"):
            getattr(self, name)[~self.string_known] = np.nan
        self.nan = nan

    # ---- the lexer ----
    def _lex(self) -> None:
        n = self.n
        stack: list[tuple[str, int]] = []  # open brackets (char, offset)
        i = 0
        while i < n:
            i = self._code_until(i, stack, stop_at_close_brace=False)

    def _code_until(self, i: int, stack: list, stop_at_close_brace: bool, fstring: tuple | None = None) -> int:
        """Lex code from i; with stop_at_close_brace, return at the '}' that closes an f-string field."""
        text, n = self.text, self.n
        base = len(stack)
        while i < n:
            ch = text[i]
            if ch == "#" and fstring is None:
                end = self._line_end(i)
                self.in_comment[i:end] = 1
                i = end
                continue
            start = self._string_start(i)
            if start is not None:
                end = self._string(i, *start, stack)
                self.string_spans.append((i, end))
                i = end
                continue
            if stop_at_close_brace and len(stack) == base and ch in "}:!" and not (ch == "!" and text[i + 1:i + 2] == "="):
                return i
            if fstring is not None and not fstring[1] and ch in "\r\n":  # a single-quoted f-string ends its field here
                return i
            self.code[i] = True
            if ch in OPENERS:
                stack.append((ch, i))
            elif ch in CLOSERS and stack and len(stack) > base and OPENERS[CLOSERS.index(ch)] == stack[-1][0]:
                self.matching[stack.pop()[1]] = i
            self._record_depths(i, stack)
            if fstring is not None:
                self._mark_fstring(i, fstring[0], True)
            i += 1
        return i

    def _record_depths(self, i: int, stack: list) -> None:
        for opener in OPENERS:
            self.depth[opener][i] = sum(1 for ch, _ in stack if ch == opener)

    def _line_end(self, i: int) -> int:
        while i < self.n and self.text[i] not in "\r\n":
            i += 1
        return i

    def _string_start(self, i: int) -> tuple[int, str, str] | None:
        """(offset of the first quote, the quote (' " ''' or \"\"\"), prefix) if a string starts at i."""
        text = self.text
        if i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_") and text[i] not in "'\"":
            return None
        j = i
        while j < self.n and j - i < 2 and text[j].isalpha():
            j += 1
        if j >= self.n or text[j] not in "'\"" or text[i:j].lower() not in STRING_PREFIXES:
            return None
        quote = text[j] * 3 if text[j:j + 3] == text[j] * 3 else text[j]
        return j, quote, text[i:j].lower()

    def _string(self, i: int, q: int, quote: str, prefix: str, stack: list) -> int:
        """Lex a string literal starting at i (first quote at q); return the offset after it."""
        text, n = self.text, self.n
        triple, fstring = len(quote) == 3, "f" in prefix
        kind = (self.in_triple if triple else self.in_single if quote == "'" else self.in_double)
        open_end = q + len(quote) - 1
        self.opens_string[open_end] = 1
        start = q
        j = open_end + 1
        self._mark_string(q, j, kind, fstring)
        while j < n:
            ch = text[j]
            if text.startswith(quote, j):
                end = j + len(quote)
                self._mark_string(j, end - 1, kind, fstring)  # inside until the last closing quote
                self.closes_string[end - 1] = 1
                return end
            if ch == "\\" and j + 1 < n and not (fstring and text[j + 1] == "{"):  # f"\{x}" still opens a field
                step = 3 if text.startswith("\r\n", j + 1) else 2
                self._mark_string(j, j + step, kind, fstring)
                j += step
                continue
            if ch in "\r\n" and not triple:  # unterminated: unknown to the end of the line
                self.string_known[start:j] = False
                return j
            if fstring and ch == "{":
                if text[j + 1:j + 2] == "{":
                    self._mark_string(j, j + 2, kind, fstring)
                    j += 2
                    continue
                j = self._fstring_field(j, kind, triple, stack)
                continue
            self._mark_string(j, j + 1, kind, fstring)
            j += 1
        self.string_known[start:n] = False  # unterminated triple-quoted string
        return n

    def _fstring_field(self, j: int, kind: np.ndarray, triple: bool, stack: list) -> int:
        """A replacement field {expr[!conv][:spec]} starting at j; return the offset after its '}'."""
        text, n = self.text, self.n
        field_start = j
        self._mark_fstring(j, kind, True)
        j = self._code_until(j + 1, stack, stop_at_close_brace=True, fstring=(kind, triple))
        while j < n and text[j] in ":!":  # conversion and format spec: literal text with nested fields
            self._mark_fstring(j, kind, True)
            j += 1
            while j < n and text[j] not in "}\r\n":
                if text[j] == "{":
                    j = self._fstring_field(j, kind, triple, stack)
                    continue
                self._mark_fstring(j, kind, True)
                j += 1
        if j < n and text[j] == "}":
            self.in_fstring[j] = 1  # after the closing brace: back in the string's literal part
            kind[j] = 1
            self.in_string[j] = 1
            return j + 1
        self.string_known[field_start:j] = False
        return j

    def _mark_fstring(self, i: int, kind: np.ndarray, in_field: bool) -> None:
        self.in_fstring[i] = 1
        self.in_fstring_brace[i] = 1 if in_field else 0

    def _mark_string(self, start: int, end: int, kind: np.ndarray, fstring: bool) -> None:
        self.in_string[start:end] = 1
        kind[start:end] = 1
        if fstring:
            self.in_fstring[start:end] = 1

    # ---- lines ----
    @cached_property
    def line_starts(self) -> list[int]:
        return [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", self.text)]

    @cached_property
    def line_of(self) -> np.ndarray:
        """The 0-based physical line of every character (a line break belongs to the line it ends)."""
        starts = np.array(self.line_starts)
        return np.searchsorted(starts, np.arange(self.n), side="right") - 1

    @cached_property
    def column(self) -> np.ndarray:
        return (np.arange(self.n) - np.array(self.line_starts)[self.line_of]).astype(np.float32)

    @cached_property
    def first_of_line(self) -> np.ndarray:
        """1 at the first non-blank character of every physical line that does not start inside a
        string (unknown where the string facts are)."""
        out = np.zeros(self.n, dtype=np.float32)
        for start in self.line_starts:
            j = start
            while j < self.n and self.text[j] in " \t\f":
                j += 1
            if j < self.n and self.text[j] not in "\r\n":
                before = self.in_string[start - 1] if start > 0 else 0.0
                out[j] = np.nan if np.isnan(before) else float(before == 0)
        return out

    @cached_property
    def logical_lines(self) -> list[tuple[int, int, int]]:
        """(start, end, indent columns) of every logical line: from a physical line that starts at
        bracket depth 0 outside strings to the line break that ends it (included)."""
        lines, i, n = [], 0, self.n
        while i < n:
            start = i
            indent = 0
            while i < n and self.text[i] in " \t\f":
                indent = (indent // 8 + 1) * 8 if self.text[i] == "\t" else indent + 1
                i += 1
            j = i
            while j < n:
                if self.text[j] in "\r\n":  # one line break, \r\n included
                    brk = 2 if self.text.startswith("\r\n", j) else 1
                    j += brk
                    if self._ends_statement(j - brk):
                        break
                    continue
                j += 1
            lines.append((start, j, indent))
            i = j
        return lines

    def _ends_statement(self, j: int) -> bool:
        """A line break at j ends a statement: outside strings and brackets, not after a backslash."""
        before = j - 1
        if j > 0 and (self.in_string[before] == 1 or np.isnan(self.in_string[before])):
            return False
        if j > 0 and any(self.depth[o][before] > 0 for o in OPENERS):
            return False
        return not (j > 0 and self.text[before] == "\\" and self.in_comment[before] == 0)

    @cached_property
    def end_of_statement(self) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        code_text = self.code & ~np.array([ch.isspace() for ch in self.text], dtype=bool)
        for start, end, _ in self.logical_lines:
            if end > start and self.text[end - 1] in "\r\n" and code_text[start:end].any():  # not a comment alone
                out[end - 1] = 1
        return out

    @cached_property
    def indent_columns(self) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        for start, end, indent in self.logical_lines:
            out[start:end] = indent
        return out

    @cached_property
    def line_keyword(self) -> dict[str, np.ndarray]:
        """For each keyword of LINE_KEYWORDS: 1 on the logical lines it starts (`import` also for `from`)."""
        out = {word: np.zeros(self.n, dtype=np.float32) for word in LINE_KEYWORDS}
        for start, end, _ in self.logical_lines:
            m = _NAME.match(self.text, start + len(self.text[start:end]) - len(self.text[start:end].lstrip(" \t\f")))
            if m and self.code[m.start()]:
                word = "import" if m.group() == "from" else m.group()
                if word in out:
                    out[word][m.start():end] = 1  # from the keyword on: the indent before it does not tell
        return out

    # ---- words and operators of the code ----
    @cached_property
    def words(self) -> list[tuple[int, int, str]]:
        """(start, end, kind) of every name, number, string literal, bracket and operator in code: kind
        'name', 'keyword', 'number', 'string' or the bracket or operator itself."""
        found, i, text = [(start, end, "string") for start, end in self.string_spans], 0, self.text
        while i < self.n:
            if not self.code[i] or text[i].isspace():
                i += 1
                continue
            if text[i] in OPENERS + CLOSERS:
                found.append((i, i + 1, text[i]))
                i += 1
                continue
            m = _NAME.match(text, i) or _NUMBER.match(text, i) or _OPERATOR.match(text, i)
            if m is None or m.end() == i:
                i += 1
                continue
            word = m.group()
            if _NAME.fullmatch(word):
                kind = "keyword" if keyword.iskeyword(word) else "name"
            elif word[0].isdigit() or (word[0] == "." and len(word) > 1):
                kind = "number"
            else:
                kind = word
            found.append((m.start(), m.end(), kind))
            i = m.end()
        return sorted(found)

    def word_mask(self, kinds: set[str]) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        for start, end, kind in self.words:
            if kind in kinds:
                out[start:end] = 1
        return out

    @cached_property
    def previous_word(self) -> list[tuple[int, int, str]]:
        """For each word, the word before it: (start, end, kind of the previous word, its offset)."""
        return [(w[0], w[1], self.words[k - 1][2], self.words[k - 1][0]) for k, w in enumerate(self.words) if k]

    def after(self, operator: str, inside_brackets: bool | None = None) -> np.ndarray:
        """1 on the word that directly follows `operator` (at bracket depth 0, >0, or either)."""
        out = np.zeros(self.n, dtype=np.float32)
        for start, end, before, at in self.previous_word:
            if before != operator:
                continue
            nested = any(self.depth[o][at] > 0 for o in OPENERS)
            if inside_brackets is None or nested == inside_brackets:
                out[start:end] = 1
        return out

    # ---- what needs the grammar ----
    @cached_property
    def tree(self) -> ast.AST | None:
        try:
            return ast.parse(self.text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None

    @cached_property
    def _lines(self) -> list[str]:
        return [self.text[s:e] for s, e in zip(self.line_starts, self.line_starts[1:] + [self.n])]

    def offset(self, lineno: int, col_offset: int) -> int:
        """The character offset of an ast position (1-based line, UTF-8 byte column)."""
        line = self._lines[lineno - 1] if lineno - 1 < len(self._lines) else ""
        chars = len(line.encode("utf-8")[:col_offset].decode("utf-8", errors="ignore"))
        return self.line_starts[lineno - 1] + chars if lineno - 1 < len(self.line_starts) else self.n

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def grammar(self, fill) -> np.ndarray:
        """An array filled by `fill(out)` when the text parses, all unknown when it does not."""
        if self.tree is None:
            return self.nan()
        out = np.zeros(self.n, dtype=np.float32)
        fill(out)
        return out

    @cached_property
    def innermost_container(self) -> np.ndarray | None:
        """Per character, the kind of the innermost bracketed construct it is inside: 0 none, 1 call,
        2 dict, 3 list, 4 set, 5 tuple, 6 subscript; None when the text does not parse."""
        if self.tree is None:
            return None
        spans = []
        kinds = {ast.Dict: 2, ast.DictComp: 2, ast.List: 3, ast.ListComp: 3, ast.Set: 4, ast.SetComp: 4}
        for node in ast.walk(self.tree):
            if type(node) in kinds:
                spans.append((*self.span(node), kinds[type(node)]))
            elif isinstance(node, (ast.Tuple, ast.GeneratorExp)):
                start, end = self.span(node)
                if start < self.n and self.text[start] == "(" and self.matching.get(start) == end - 1:
                    spans.append((start, end, 5))
            elif isinstance(node, ast.Call):
                opening = self._next_opener(self.span(node.func)[1], "(")
                if opening is not None:
                    spans.append((opening, self.span(node)[1], 1))
            elif isinstance(node, ast.Subscript):
                opening = self._next_opener(self.span(node.value)[1], "[")
                if opening is not None:
                    spans.append((opening, self.span(node)[1], 6))
        out = np.zeros(self.n, dtype=np.float32)
        # outermost first, inner overwrite; on the same span (a call's only argument is a generator) the call wins
        for start, end, kind in sorted(spans, key=lambda s: (s[0] - s[1], s[2] == 1)):
            out[start:max(start, end - 1)] = kind  # the closing bracket is read as outside
        return out

    def _next_opener(self, i: int, opener: str) -> int | None:
        while i < self.n and not (self.code[i] and self.text[i] == opener):
            if self.code[i] and not self.text[i].isspace() and self.text[i] not in ")":
                return None
            i += 1
        return i if i < self.n else None

    def container(self, kind: int) -> np.ndarray:
        inner = self.innermost_container
        return self.nan() if inner is None else (inner == kind).astype(np.float32)

    def node_spans(self, types: tuple) -> np.ndarray:
        def fill(out):
            for node in ast.walk(self.tree):
                if isinstance(node, types):
                    start, end = self.span(node)
                    out[start:end] = 1
        return self.grammar(fill)

    @cached_property
    def parameter_lists(self) -> np.ndarray:
        def fill(out):
            for node in ast.walk(self.tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = self.span(node)[0]
                    opening = self.text.find("(", start)
                    while opening != -1 and not self.code[opening]:
                        opening = self.text.find("(", opening + 1)
                    if opening in self.matching:
                        out[opening:self.matching[opening]] = 1
        return self.grammar(fill)

    @cached_property
    def docstrings(self) -> np.ndarray:
        def fill(out):
            for node in ast.walk(self.tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                    first = node.body[0]
                    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                        start, end = self.span(first.value)
                        out[start:max(start, end - 1)] = 1
        return self.grammar(fill)

    def bodies(self, types: tuple) -> np.ndarray:
        def fill(out):
            for node in ast.walk(self.tree):
                if isinstance(node, types) and node.body:
                    out[self.span(node.body[0])[0]:self.span(node.body[-1])[1]] = 1
        return self.grammar(fill)

    @cached_property
    def bindings(self) -> list[tuple[str, int]]:
        """(name, offset) of every place the text binds a name."""
        found = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                found.append((node.id, self.span(node)[0]))
            elif isinstance(node, ast.arg):
                found.append((node.arg, self.span(node)[0]))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                m = re.compile(rf"\b{re.escape(node.name)}\b").search(self.text, self.span(node)[0])
                found.append((node.name, m.start() if m else self.span(node)[0]))
            elif isinstance(node, ast.alias):
                found.append(((node.asname or node.name).split(".")[0], self.span(node)[0]))
            elif isinstance(node, ast.ExceptHandler) and node.name:
                found.append((node.name, self.span(node)[0]))
        return found

    @cached_property
    def defined_earlier(self) -> np.ndarray:
        def fill(out):
            first = {}
            for name, at in self.bindings:
                first[name] = min(at, first.get(name, at))
            for start, end, kind in self.words:
                if kind == "name" and first.get(self.text[start:end], self.n) < start:
                    out[start:end] = 1
        return self.grammar(fill)

    @cached_property
    def loop_variables(self) -> np.ndarray:
        def fill(out):
            loops = []
            for node in ast.walk(self.tree):
                if isinstance(node, (ast.For, ast.AsyncFor)) and node.body:
                    names = {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
                    loops.append((self.span(node.body[0])[0], self.span(node.body[-1])[1], names))
            for start, end, kind in self.words:
                if kind == "name":
                    word = self.text[start:end]
                    if any(lo <= start < hi and word in names for lo, hi, names in loops):
                        out[start:end] = 1
        return self.grammar(fill)


def _forward_fill(values: np.ndarray) -> np.ndarray:
    """NaNs take the last value before them (0 at the start)."""
    known = ~np.isnan(values)
    index = np.where(known, np.arange(len(values)), 0)
    np.maximum.accumulate(index, out=index)
    filled = values[index]
    filled[~known & (np.cumsum(known) == 0)] = 0
    return filled
