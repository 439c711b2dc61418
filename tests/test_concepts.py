"""Python concepts, checked token by token on hand-written snippets."""

from __future__ import annotations

import math
import re

import numpy as np

from sparsecircuits.concepts import PYTHON_CONCEPTS, Concept, SourceFacts, token_values

NAMES = [c.name for c in PYTHON_CONCEPTS]


def words(text: str) -> list[tuple[int, int]]:
    """Offsets of a simple tokenisation: runs of word characters, runs of spaces, single others."""
    return [m.span() for m in re.finditer(r"\w+|[ \t]+|\r\n|.", text, re.S)]


def table(text: str, concepts=PYTHON_CONCEPTS) -> dict[str, dict[str, float]]:
    """{token text: {concept: value}} (first occurrence of each token text)."""
    offsets = words(text)
    values = token_values(text, offsets, concepts)
    out = {}
    for (start, end), row in zip(offsets, values):
        out.setdefault(text[start:end], dict(zip([c.name for c in concepts], row.tolist())))
    return out


def on(row: dict[str, float]) -> set[str]:
    return {name for name, v in row.items() if not math.isnan(v) and v != 0 and name != "position_in_line"}


def test_there_are_at_least_forty_concepts_with_unique_names():
    assert len(PYTHON_CONCEPTS) >= 40 and len(set(NAMES)) == len(NAMES)
    assert all(c.kind in ("binary", "numeric") and c.aggregate in ("last", "any") for c in PYTHON_CONCEPTS)


def test_strings_by_quote_kind_opening_and_closing():
    t = table("a = 'one' + \"two\" + '''three'''\n")
    assert {"in_string", "in_single_quoted_string"} <= on(t["one"]) and "in_double_quoted_string" not in on(t["one"])
    assert {"in_string", "in_double_quoted_string"} <= on(t["two"])
    assert {"in_string", "in_triple_quoted_string"} <= on(t["three"])
    assert "in_string" not in on(t["a"]) and "in_string" not in on(t["+"])
    offsets = words("x = 'ab'\n")
    values = token_values("x = 'ab'\n", offsets)
    opens, closes, inside = (values[:, NAMES.index(n)] for n in ("opens_string", "closes_string", "in_string"))
    assert opens.tolist()[4] == 1 and closes.tolist()[6] == 1  # the quotes: tokens 4 and 6
    assert inside.tolist()[4:7] == [1, 1, 0]  # after the closing quote we are outside


def test_nested_fstrings_fields_and_format_specs():
    text = 'msg = f"a{x + len(f\'{y:>{w}}\')}b" + "c"\n'
    facts = SourceFacts(text)
    at = lambda s, k=0: [m.start() for m in re.finditer(re.escape(s), text)][k]
    assert facts.in_fstring_brace[at("x")] == 1 and facts.in_string[at("x")] == 0
    assert facts.in_fstring_brace[at("y")] == 1 and facts.depth["("][at("y")] == 1
    assert facts.in_fstring_brace[at("w")] == 1  # a field nested in a format spec
    assert facts.in_string[at("b")] == 1 and facts.in_fstring[at("b")] == 1 and facts.in_fstring_brace[at("b")] == 0
    assert facts.in_fstring[at("c")] == 0 and facts.in_string[at("c")] == 1
    literal = SourceFacts('s = f"{{not a field}}"\n')
    assert literal.in_fstring_brace.sum() == 0 and literal.in_string[literal.text.index("not")] == 1


def test_crlf_tabs_indentation_and_line_starts():
    text = "if a:\r\n\tb = 1\r\n\tif c:\r\n\t    d = 2\r\n"
    t = table(text)
    assert t["b"]["indent_columns"] == 8 and t["d"]["indent_columns"] == 12  # a tab reaches column 8
    assert "first_token_of_line" in on(t["b"]) and "first_token_of_line" not in on(t["="])
    offsets = words(text)
    values = token_values(text, offsets)
    ends = [text[s:e] for (s, e), v in zip(offsets, values[:, NAMES.index("end_of_statement")]) if v == 1]
    assert ends == ["\r\n"] * 4
    assert t["b"]["position_in_line"] == 1 and "line_starts_with_if" in on(t["a"])


def test_unterminated_strings_are_unknown_never_guessed():
    text = "x = 'open\ny = 2\nz = '''never closed\nw = 3\n"
    facts = SourceFacts(text)
    open_at, y_at, never_at, w_at = (text.index(s) for s in ("open", "y", "never", "w = 3"))
    assert math.isnan(facts.in_string[open_at])  # the single-quoted string runs into its line's end
    assert facts.in_string[y_at] == 0 and facts.code[y_at]  # the next line is read as code again
    assert math.isnan(facts.in_string[never_at]) and math.isnan(facts.in_string[w_at])  # to the end
    assert facts.tree is None
    row = table(text)["y"]
    assert math.isnan(row["in_dict" if "in_dict" in row else "innermost_dict"])  # needs a parse: unknown
    assert row["identifier"] == 1 and row["indent_columns"] == 0  # lexical facts stay known


def test_brackets_depth_and_innermost_container():
    text = "v = f([1, {2: (3, 4)}], {5}, k[0])\n"
    facts = SourceFacts(text)
    at = lambda s: text.index(s)
    kinds = {1: "call", 2: "dict", 3: "list", 4: "set", 5: "tuple", 6: "subscript"}
    inner = facts.innermost_container
    assert kinds[int(inner[at("1")])] == "list" and kinds[int(inner[at("2")])] == "dict"
    assert kinds[int(inner[at("3")])] == "tuple" and kinds[int(inner[at("5")])] == "set"
    assert kinds[int(inner[at("0")])] == "subscript" and kinds[int(inner[at(", {5")])] == "call"
    assert facts.depth["("][at("3")] == 2 and facts.depth["["][at("3")] == 1 and facts.depth["{"][at("3")] == 1
    assert inner[len(text) - 2] == 0  # after the call's closing parenthesis


def test_keywords_assignments_comparisons_and_names():
    text = ("import os\n"
            "def run(path, mode='r', *args):\n"
            "    '''Run it.'''\n"
            "    for item in path:\n"
            "        if item == mode or item is None:\n"
            "            total = item  # the loop variable\n"
            "    return lambda q: q\n")
    t = table(text)
    assert "in_parameter_list" in on(t["path"]) and "in_parameter_list" not in on(t["os"])
    assert "in_docstring" in on(t["Run"]) and "in_comment" in on(t["loop"])
    assert "line_starts_with_import" in on(t["os"]) and "line_starts_with_def" in on(t["run"])
    assert "after_keyword_equals" in on(t["'"]) and "after_assignment_equals" not in on(t["'"])  # mode='r'
    offsets = words(text)
    values = token_values(text, offsets)
    col = lambda n: values[:, NAMES.index(n)]
    tokens = [text[s:e] for s, e in offsets]
    after_compare = [tokens[i] for i in np.flatnonzero(col("after_double_equals") == 1)]
    after_is = [tokens[i] for i in np.flatnonzero(col("after_is") == 1)]
    after_assign = [tokens[i] for i in np.flatnonzero(col("after_assignment_equals") == 1)]
    loop = [tokens[i] for i in np.flatnonzero(col("loop_variable") == 1)]
    earlier = {tokens[i] for i in np.flatnonzero(col("name_defined_earlier") == 1)}
    assert after_compare == ["mode"] and after_is == ["None"] and after_assign == ["item"]
    assert loop == ["item", "item", "item"]  # in the body, not the `for` target itself
    assert {"path", "mode", "item", "q"} <= earlier and "os" not in earlier and "run" not in earlier
    assert "in_lambda" in on(t["lambda"]) and "in_function_body" in on(t["total"])
    assert "keyword" in on(t["for"]) and "identifier" in on(t["total"]) and "operator" in on(t["="])


def test_a_user_concept_is_a_function_of_the_text():
    todo = Concept("todo", "a TODO mark", "binary", "any",
                   lambda facts: np.array([1.0 if facts.text[i:i + 4] == "TODO" or facts.text[max(0, i - 3):i + 1] == "TODO"
                                           else 0.0 for i in range(facts.n)], dtype=np.float32))
    t = table("x = 1  # TODO fix\n", PYTHON_CONCEPTS + [todo])
    assert t["TODO"]["todo"] == 1 and t["x"]["todo"] == 0


def test_string_and_comment_spans_agree_with_pythons_tokenize_on_the_standard_library():
    import io
    import sysconfig
    import tokenize
    from pathlib import Path

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))[:8] + [stdlib / "string.py"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        facts = SourceFacts(text)
        starts = facts.line_starts
        offset = lambda pos: starts[pos[0] - 1] + pos[1]
        strings, comments, fstring_start = set(), set(), None
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            name = tokenize.tok_name[token.type]
            if name == "STRING":
                strings.add((offset(token.start), offset(token.end)))
            elif name == "FSTRING_START":  # Python 3.12+: one f-string comes in pieces
                fstring_start = offset(token.start)
            elif name == "FSTRING_END":
                strings.add((fstring_start, offset(token.end)))
            elif name == "COMMENT":
                comments.add((offset(token.start), offset(token.end)))
        assert set(facts.string_spans) >= strings, path.name
        extra = set(facts.string_spans) - strings  # only strings nested inside an f-string's field
        assert all(any(s < a and b < e for s, e in strings) for a, b in extra), path.name
        ours = {(int(s), int(e)) for s, e in _runs(facts.in_comment)}
        assert ours == comments, path.name


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (mask == 1).astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_line_breaks_continuations_and_comments():
    crlf = SourceFacts("if x and \\\r\n    y:\r\n    pass\r\n")
    assert crlf.logical_lines[0][:2] == (0, 20) and crlf.end_of_statement.nonzero()[0].tolist() == [19, 29]
    comment = SourceFacts("x = 1  # C:\\\nif y:\n    pass\n")  # a backslash in a comment continues nothing
    assert comment.line_keyword["if"][comment.text.index("if")] == 1
    assert SourceFacts("# note\nx = 1\n").end_of_statement.nonzero()[0].tolist() == [12]  # a comment alone: no statement
    escaped = SourceFacts('x = "a\\\r\nb"\r\nz\r\n')  # an escaped CRLF stays inside the string
    assert escaped.in_string[escaped.text.index("\n")] == 1 and escaped.first_of_line[escaped.text.index("b")] == 0


def test_generator_arguments_and_escaped_braces():
    generator = SourceFacts("s = sum(x for x in y)\n")
    assert generator.innermost_container[generator.text.index("x")] == 1  # the call, not a tuple
    assert SourceFacts("x = (a), b\n").innermost_container[5] == 0  # (a) is not the tuple's parenthesis
    raw = SourceFacts('z = rf"\\{x}"\n')  # a backslash does not escape a field's brace
    assert raw.in_fstring_brace[raw.text.index("x")] == 1 and raw.code[raw.text.index("x")]
