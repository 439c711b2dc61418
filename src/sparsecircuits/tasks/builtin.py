"""The built-in tasks as seeded generators of paired records, in two suites.

Each generator takes a `random.Random` and returns one minimal pair: two records whose prompts
differ in the detail that decides the answer, with the answers swapped. The prompts are short,
ordinary Python; none of this text is written into any training corpus.

- `paper` (the default): the 20 contrasts of docs/method.md section 2 in the paper's form. Only the
  degenerate cues are removed: the two prompts of a pair end in the same token (except `else_elif`,
  whose contrast is its last token; `tasks audit` flags it), and a pair whose prompts differ in length
  gets one random comment line above both, drawn once for the pair (`generate` checks that whatever
  it adds is the same for both answers), so that no token at a fixed position names its answer and
  a prompt's length says little about it. Which tokens appear is left alone: for the quote, bracket and brace
  tasks that is the mechanism the paper found.
- `hard`: harder forms of the same contrasts, to test how far a paper circuit generalises: each
  `<task>_hard` puts both members' deciding lines commented out above the line being written (or binds
  two variables, or opens one of two files, or adds a line that names both candidates or holds a loop
  of either kind), and three of the paper's adversarial checks: an unmatched bracket in a comment, a
  long list diluting the depth signal, and a closed string earlier in the file. Whatever a hard form
  adds is drawn once for the pair, so the text before the last line is the same for both answers
  (except `set_or_string_hard`, whose contrast is which variable got which initialisation).
  `HARD_FORMS` maps each paper task to its hard forms.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

Record = dict[str, str]
Pair = tuple[Record, Record]

# Identifiers common enough in Python to be single tokens in most code tokenizers.
NAMES = ["data", "value", "result", "count", "name", "path", "text", "line", "node", "key", "size", "index",
         "config", "source", "prefix", "token", "message", "offset", "args", "obj", "item", "first", "last",
         "start", "end", "state", "mode", "file", "func", "other"]
FUNCS = ["load", "parse", "update", "render", "compute", "process", "build", "check", "handle", "convert", "read",
         "write", "merge", "split", "format", "apply", "collect", "filter", "resolve", "encode"]
WORDS = ["hello", "world", "error", "done", "ready", "value", "name", "path", "data", "test", "file", "line", "start",
         "stop", "open", "close", "left", "right", "empty", "full"]
# Words that do not start like an English contraction ('s, 'd, 't, ...): after a quote, the byte-level
# pre-tokenizer would split those differently after "f'" than after "('".
PLAIN_WORDS = [w for w in WORDS if not w.startswith(("s", "t", "d", "m", "re", "ve", "ll"))]
CLASSES = ["Point", "Node", "Config", "Parser", "Buffer", "Record", "Item", "Entry", "Token", "Message"]


def _names(rng: random.Random, n: int) -> list[str]:
    return rng.sample(NAMES, n)


def _record(prompt: str, correct: str, incorrect: str) -> Record:
    return {"prompt": prompt, "correct": correct, "incorrect": incorrect}


def _function_head(rng: random.Random, *avoid: str) -> str:
    """A random `def name(arg):` line and body indent, so short prompts vary in their context."""
    func = rng.choice(FUNCS)
    arg = rng.choice([n for n in NAMES if n not in avoid])
    return f"def {func}({arg}):\n    "


def _pair(make: Callable[[bool], tuple[str, str, str]]) -> Pair:
    """Build both members of a pair from one function of the deciding bit."""
    return _record(*make(True)), _record(*make(False))


def _commented_twin(rng: random.Random, head: str, make: Callable[[bool], tuple[str, str, str]]) -> Pair:
    """Like `_pair` for tasks decided within the last line: both members' last lines, commented out, sit
    above the line being written in an order drawn once for the pair, so both answers' tokens are in
    every prompt and only which line is code decides (a comment ends at its line; the nearest line is
    the one to read). The comments are the same text for both answers: a twin holding only the other
    member's line would name the answer by its position. `head` ends with a newline and the indent of
    the last line, which must be indented, so that a line splits into the same pre-tokens after that
    indent as after "# "."""
    indent = head.rsplit("\n", 1)[1]
    lines = [make(True)[0], make(False)[0]]
    rng.shuffle(lines)
    comments = "".join(f"# {line}\n{indent}" for line in lines)

    def build(bit: bool) -> Record:
        line, correct, incorrect = make(bit)
        return _record(f"{head}{comments}{line}", correct, incorrect)
    return build(True), build(False)


def single_double_quote_hard(rng: random.Random) -> Pair:
    func, word = rng.choice(FUNCS), rng.choice(WORDS)
    var = rng.choice(NAMES)
    return _commented_twin(rng, _function_head(rng, var), lambda single: (
        f"{var} = {func}({chr(39) if single else chr(34)}{word}", "')" if single else '")', '")' if single else "')"))


def final_kwarg_hard(rng: random.Random) -> Pair:
    """A def with or without a keyword argument (drawn once for the pair) above the def being written:
    only the def being written decides."""
    f, g = rng.sample(FUNCS, 2)
    a, b, c, d, e = _names(rng, 5)
    above = f"def {f}({a}, {b}{rng.choice(['', '=None'])}):\n    return {a}\n\n"
    return _pair(lambda kw: (f"{above}def {g}({c}, {d}{'=None' if kw else ''}, {e}", "=" if kw else "):", "):" if kw else "="))


def _set_or_string_hard(rng: random.Random, var: str) -> Pair:
    """Both kinds of initialisation are in every prompt: which one `var` got decides."""
    other, item, loop = rng.sample([n for n in NAMES if n != var], 3)
    set_first = rng.random() < 0.5

    def make(is_set: bool) -> tuple[str, str, str]:
        inits = [f"{var} = {'set()' if is_set else chr(34) * 2}", f"{other} = {chr(34) * 2 if is_set else 'set()'}"]
        if set_first != is_set:
            inits.reverse()
        return ("\n".join(inits) + f"\nfor {item} in {loop}:\n    {var}", "." if is_set else " +=", " +=" if is_set else ".")
    return _pair(make)


def set_or_string_hard(rng: random.Random) -> Pair:
    return _set_or_string_hard(rng, rng.choice(NAMES))


def set_or_string_fixedvarname_hard(rng: random.Random) -> Pair:
    return _set_or_string_hard(rng, "current")


def _init_start(rng: random.Random, n_args: tuple[int, int], least_stored: int) -> tuple[str, str, str]:
    """A class whose `__init__` takes `n_args` (low, high) arguments and has stored the first
    `least_stored` or more of them in order (`self.x = x` lines), leaving two or more: the prompt so
    far, the next argument, and another argument not yet stored."""
    names = _names(rng, rng.randint(*n_args))
    cls = rng.choice(CLASSES)
    head = f"class {cls}:\n    def __init__(self, {', '.join(names)}):\n"
    done = rng.randint(least_stored, len(names) - 2)
    body = "".join(f"        self.{n} = {n}\n" for n in names[:done])
    return head + body, names[done], rng.choice(names[done + 1:])


def class_init_hard(rng: random.Random) -> Pair:
    """Copy the attribute's name when the line above names both candidates (an `assert`, its order
    drawn once for the pair): copying the previous line's last name is right half the time."""
    start, first, second = _init_start(rng, (4, 4), 0)
    named = rng.sample([first, second], 2)

    def make(pick_first: bool) -> tuple[str, str, str]:
        this, other = (first, second) if pick_first else (second, first)
        return f"{start}        assert {named[0]} is not {named[1]}\n        self.{this} =", f" {this}", f" {other}"
    return _pair(make)


def with_as_hard(rng: random.Random) -> Pair:
    var, path = _names(rng, 2)
    head = _function_head(rng, var, path)
    mode = rng.choice(["", ", 'rb'", ", 'w'", ", encoding='utf-8'"])
    return _commented_twin(rng, head, lambda in_with: (
        f"with open({path}{mode})" if in_with else f"{var} = open({path}{mode})",
        " as" if in_with else "\n", "\n" if in_with else " as"))


def bracket_brace_hard(rng: random.Random) -> Pair:
    var, a, b = _names(rng, 3)
    return _commented_twin(rng, _function_head(rng, var, a, b), lambda is_dict: (
        f"{var} = {{{a}: 1, {b}" if is_dict else f"{var} = [{a}, {b}", ":" if is_dict else ",", "," if is_dict else ":"))


def with_open_hard(rng: random.Random) -> Pair:
    """Both files are the function's arguments and one of them (drawn once for the pair) is used before
    the `with`: the one opened decides."""
    reading = rng.choice(["input", "source", "config", "data", "template", "settings"])
    writing = rng.choice(["output", "report", "log", "result", "backup", "export"])
    suffix = rng.choice(["path", "file", "name", "filename"])
    src, dst = f"{reading}_{suffix}", f"{writing}_{suffix}"
    func, check = rng.sample(FUNCS, 2)
    args = [src, dst] if rng.random() < 0.5 else [dst, src]
    head = f"def {func}({', '.join(args)}):\n    {check}({rng.choice(args)})\n    "
    return _pair(lambda read: (f"{head}with open({src if read else dst}, '", "r" if read else "w", "w" if read else "r"))


def bracket_counting_hard(rng: random.Random) -> Pair:
    var = rng.choice(NAMES)
    contrast = _bracket_contrast(var, _digits(rng, 1, 2), _digits(rng, 2, 3))  # the items are drawn before the head
    return _commented_twin(rng, _function_head(rng, var), contrast)


def for_while_hard(rng: random.Random) -> Pair:
    """The loop being written inside a for or a while loop (drawn once for the pair): the innermost
    header decides."""
    a, b, c, d = _names(rng, 4)
    head = _function_head(rng, a, b, c, d) + rng.choice([f"for {a} in {b}:", f"while {a} in {b}:"]) + "\n        "
    return _pair(lambda is_for: (f"{head}{'for' if is_for else 'while'} {c}", " in" if is_for else ":", ":" if is_for else " in"))


def else_elif_hard(rng: random.Random) -> Pair:
    var = rng.choice(NAMES)
    value = rng.randint(0, 9)
    head = f"def {rng.choice(FUNCS)}({var}):\n    if {var} > {value}:\n        return {var}\n    "
    return _commented_twin(rng, head, lambda is_else: (
        "else" if is_else else "elif", ":" if is_else else f" {var}", f" {var}" if is_else else ":"))


def fstring_brace_hard(rng: random.Random) -> Pair:
    """A closed string with braces above, an f-string or not (drawn once for the pair): the open one's
    prefix decides."""
    first, second, third = rng.sample(PLAIN_WORDS, 3)
    var = rng.choice(NAMES)
    above = f"print({rng.choice(['', 'f'])}'{third} {{{var}}}')\n"
    return _pair(lambda is_f: (f"{above}print({'f' if is_f else ''}'{first} {second}", " {" if is_f else "'", "'" if is_f else " {"))


def if_ternary_hard(rng: random.Random) -> Pair:
    a, b, c = _names(rng, 3)
    head = _function_head(rng, a, b, c)
    return _commented_twin(rng, head, lambda ternary: (
        f"{a} = {b} if {c}" if ternary else f"if {c}", " else" if ternary else ":", ":" if ternary else " else"))


def var_swap_hard(rng: random.Random) -> Pair:
    """x, y = y, x after a line that uses one of the two names twice (which one drawn once for the
    pair): the name repeated above is the answer half the time."""
    x, y = _names(rng, 2)
    used, other = rng.sample([x, y], 2)
    above = f"{other} = {used} + {used}\n"
    return (_record(f"{above}{x}, {y} = {y},", f" {x}", f" {y}"),
            _record(f"{above}{y}, {x} = {x},", f" {y}", f" {x}"))


def indent_for_hard(rng: random.Random) -> Pair:
    """The body of a for loop is indented one level deeper than its header, after a line indented
    deeper than either header (the same lines for both answers): copying the previous line's indent,
    or adding a level to it, is wrong for one of the two."""
    var, seq, outer, items, total = _names(rng, 5)
    head = (f"def {rng.choice(FUNCS)}({items}):\n    {total} = 0\n    for {outer} in {items}:\n"
            f"        if {outer}:\n            {total} += 1\n")
    return _pair(lambda nested: (f"{head}{'        ' if nested else '    '}for {var} in {seq}:",
                                 "\n" + " " * 11 if nested else "\n" + " " * 7, "\n" + " " * 7 if nested else "\n" + " " * 11))


def lambda_func_hard(rng: random.Random) -> Pair:
    """A helper defined inside a function, by a lambda or a def. Names come from one pool, so the last
    token (the lambda's argument or the def's name) says nothing."""
    f, g, x = rng.sample(NAMES + FUNCS, 3)
    return _commented_twin(rng, _function_head(rng, f, g, x), lambda is_lambda: (
        f"{f} = lambda {x}" if is_lambda else f"def {g}", ":" if is_lambda else "(", "(" if is_lambda else ":"))


def if_equals_hard(rng: random.Random) -> Pair:
    a, b = _names(rng, 2)
    func = rng.choice(FUNCS)
    head = f"def {func}({a}, {b}):\n    "
    return _commented_twin(rng, head, lambda in_if: (f"if {a}" if in_if else a, " ==" if in_if else " =", " =" if in_if else " =="))


def enumerate_range_hard(rng: random.Random) -> Pair:
    """A line above unpacks two names or binds one (drawn once for the pair): the loop's own names decide."""
    # " enumerate" is several tokens in small vocabularies; zip is the two-variable loop that stays one.
    i, item, a, b = _names(rng, 4)
    head = _function_head(rng, i, item, a, b) + rng.choice([f"{a}, {item} = {b}", f"{a} = {b}"]) + "\n    "
    return _pair(lambda two: (f"{head}for {i}, {item} in" if two else f"{head}for {i} in",
                              " zip" if two else " range", " range" if two else " zip"))


def var_if_hard(rng: random.Random) -> Pair:
    var = rng.choice(NAMES)
    head = _function_head(rng, var)
    value = rng.choice(["True", "False", "None"])
    return _commented_twin(rng, head, lambda in_if: (
        f"if {var} == {value}" if in_if else f"{var} = {value}", ":" if in_if else "\n", "\n" if in_if else ":"))


def while_return_true_hard(rng: random.Random) -> Pair:
    func = rng.choice(FUNCS)
    var = rng.choice(NAMES)
    head = f"def {func}({var}):\n    "
    return _commented_twin(rng, head, lambda is_while: (
        "while True" if is_while else "return True", ":" if is_while else "\n", "\n" if is_while else ":"))



# ---- the paper suite -------------------------------------------------------------------------

def single_double_quote(rng: random.Random) -> Pair:
    var, func, word = rng.choice(NAMES), rng.choice(FUNCS), rng.choice(PLAIN_WORDS)
    return _pair(lambda single: (f"{var} = {func}({chr(39) if single else chr(34)}{word}",
                                 "')" if single else '")', '")' if single else "')"))


def final_kwarg(rng: random.Random) -> Pair:
    func = rng.choice(FUNCS)
    a, b, c = _names(rng, 3)
    return _pair(lambda kw: (f"def {func}({a}, {b}=None, {c}" if kw else f"def {func}({a}, {b}, {c}",
                             "=" if kw else "):", "):" if kw else "="))


def _set_or_string(rng: random.Random, var: str) -> Pair:
    item, loop = rng.sample([n for n in NAMES if n != var], 2)
    head = _function_head(rng, var, item, loop)
    return _pair(lambda is_set: (f"{head}{var} = {'set()' if is_set else chr(34) * 2}\n    for {item} in {loop}:\n        {var}",
                                 "." if is_set else " +=", " +=" if is_set else "."))


def set_or_string(rng: random.Random) -> Pair:
    return _set_or_string(rng, rng.choice(NAMES))


def set_or_string_fixedvarname(rng: random.Random) -> Pair:
    return _set_or_string(rng, "current")


def class_init(rng: random.Random) -> Pair:
    """`self.name = name` in an `__init__` of 4 to 7 arguments that has stored the first 2 or more
    (the paper's many lines): copy the attribute's name; the wrong answer is another argument not yet
    stored."""
    start, first, second = _init_start(rng, (4, 7), 2)

    def make(pick_first: bool) -> tuple[str, str, str]:
        this, other = (first, second) if pick_first else (second, first)
        return f"{start}        self.{this} =", f" {this}", f" {other}"
    return _pair(make)


def with_as(rng: random.Random) -> Pair:
    var, path = _names(rng, 2)
    head = _function_head(rng, var, path)
    mode = rng.choice(["", ", 'rb'", ", 'w'", ", encoding='utf-8'"])
    return _pair(lambda in_with: (f"{head}with open({path}{mode})" if in_with else f"{head}{var} = open({path}{mode})",
                                  " as" if in_with else "\n", "\n" if in_with else " as"))


def bracket_brace(rng: random.Random) -> Pair:
    var, a, b = _names(rng, 3)
    return _pair(lambda is_dict: (f"{var} = {{{a}: 1, {b}" if is_dict else f"{var} = [{a}, {b}",
                                  ":" if is_dict else ",", "," if is_dict else ":"))


def with_open(rng: random.Random) -> Pair:
    reading = rng.choice(["input", "source", "config", "data", "template", "settings"])
    writing = rng.choice(["output", "report", "log", "result", "backup", "export"])
    suffix = rng.choice(["path", "file", "name", "filename"])
    head = _function_head(rng)
    return _pair(lambda read: (f"{head}with open({reading if read else writing}_{suffix}, '",
                               "r" if read else "w", "w" if read else "r"))


def _bracket_contrast(var: str, before: str, inner: str, note: str = "") -> Callable[[bool], tuple[str, str, str]]:
    """`var = [before, [inner` closes with `]]` (two lists open), `var = [before, inner` with `]`, after
    an optional line `note`. Each `[` follows a space, so it is a token of its own: depth is a count of
    bracket tokens, not a token's identity (`[[` would be one token). `inner` holds two or more items,
    so both prompts end in the same token (`, 7`, never `[7`)."""
    return lambda nested: (f"{note}{var} = [{before}, [{inner}" if nested else f"{note}{var} = [{before}, {inner}",
                           "]]" if nested else "]", "]" if nested else "]]")


def _bracket_pair(var: str, before: str, inner: str, note: str = "") -> Pair:
    return _pair(_bracket_contrast(var, before, inner, note))


def _digits(rng: random.Random, low: int, high: int) -> str:
    return ", ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(low, high)))


def bracket_counting(rng: random.Random) -> Pair:
    var = rng.choice(NAMES)
    return _bracket_pair(var, _digits(rng, 1, 2), _digits(rng, 2, 3))


def else_elif(rng: random.Random) -> Pair:
    """The paper's contrast is the last token itself (`else` or `elif`): flagged by `tasks audit`."""
    var = rng.choice(NAMES)
    value = rng.randint(0, 9)
    head = f"def {rng.choice(FUNCS)}({var}):\n    if {var} > {value}:\n        return {var}\n    "
    return _pair(lambda is_else: (f"{head}else" if is_else else f"{head}elif", ":" if is_else else f" {var}",
                                  f" {var}" if is_else else ":"))


def fstring_brace(rng: random.Random) -> Pair:
    first, second = rng.sample(PLAIN_WORDS, 2)
    head = _function_head(rng)
    return _pair(lambda is_f: (f"{head}print({'f' if is_f else ''}'{first} {second}", " {" if is_f else "'",
                               "'" if is_f else " {"))


def if_ternary(rng: random.Random) -> Pair:
    a, b, c = _names(rng, 3)
    head = _function_head(rng, a, b, c)
    return _pair(lambda ternary: (f"{head}{a} = {b} if {c}" if ternary else f"{head}if {c}", " else" if ternary else ":",
                                  ":" if ternary else " else"))


def for_while(rng: random.Random) -> Pair:
    """`for name` continues with ` in`, `while name` with `:`."""
    var = rng.choice(NAMES)
    head = _function_head(rng, var)
    return _pair(lambda is_for: (f"{head}for {var}" if is_for else f"{head}while {var}",
                                 " in" if is_for else ":", ":" if is_for else " in"))


def var_swap(rng: random.Random) -> Pair:
    """`x, y = y, x`: the swap's last name is its first."""
    x, y = _names(rng, 2)
    head = f"def {rng.choice(FUNCS)}({x}, {y}):\n    "
    return (_record(f"{head}{x}, {y} = {y},", f" {x}", f" {y}"),
            _record(f"{head}{y}, {x} = {x},", f" {y}", f" {x}"))


def indent_for(rng: random.Random) -> Pair:
    """The body of a for loop is indented one level deeper than its header: 8 spaces after a header
    in a function body, 12 after one nested in another loop (what real code writes)."""
    var, seq, outer, items, total = _names(rng, 5)
    head = f"def {rng.choice(FUNCS)}({items}):\n    {total} = 0\n    for {outer} in {items}:\n        {total} += 1\n"
    return _pair(lambda nested: (f"{head}{'        ' if nested else '    '}for {var} in {seq}:",
                                 "\n" + " " * 11 if nested else "\n" + " " * 7, "\n" + " " * 7 if nested else "\n" + " " * 11))


def lambda_func(rng: random.Random) -> Pair:
    """`name = lambda arg` vs `def name`; names come from one pool, so the last token says nothing."""
    f, x = rng.sample(NAMES + FUNCS, 2)
    head = _function_head(rng, f, x)
    return _pair(lambda is_lambda: (f"{head}{f} = lambda {x}" if is_lambda else f"{head}def {x}",
                                    ":" if is_lambda else "(", "(" if is_lambda else ":"))


def if_equals(rng: random.Random) -> Pair:
    a, b = _names(rng, 2)
    head = f"def {rng.choice(FUNCS)}({a}, {b}):\n    "
    return _pair(lambda in_if: (f"{head}if {a}" if in_if else f"{head}{a}", " ==" if in_if else " =",
                                " =" if in_if else " =="))


def enumerate_range(rng: random.Random) -> Pair:
    # " enumerate" is several tokens in small vocabularies; zip is the two-variable loop that stays one.
    i, item = _names(rng, 2)
    head = _function_head(rng, i, item)
    return _pair(lambda two: (f"{head}for {i}, {item} in" if two else f"{head}for {i} in", " zip" if two else " range",
                              " range" if two else " zip"))


def var_if(rng: random.Random) -> Pair:
    var = rng.choice(NAMES)
    head = _function_head(rng, var)
    value = rng.choice(["True", "False", "None"])
    return _pair(lambda in_if: (f"{head}if {var} == {value}" if in_if else f"{head}{var} = {value}",
                                ":" if in_if else "\n", "\n" if in_if else ":"))


def while_return_true(rng: random.Random) -> Pair:
    var = rng.choice(NAMES)
    head = f"def {rng.choice(FUNCS)}({var}):\n    "
    return _pair(lambda is_while: (f"{head}while True" if is_while else f"{head}return True",
                                   ":" if is_while else "\n", "\n" if is_while else ":"))


# ---- the paper's adversarial checks (hard suite) ----------------------------------------------

def bracket_counting_comment(rng: random.Random) -> Pair:
    """An unmatched `[` in a comment above: a circuit that averages `[` over the context miscounts."""
    var = rng.choice(NAMES)
    before, inner = _digits(rng, 1, 2), _digits(rng, 2, 3)
    return _bracket_pair(var, before, inner, note=f"# {rng.choice(PLAIN_WORDS)} [{rng.randint(0, 9)}\n")


def bracket_counting_long(rng: random.Random) -> Pair:
    """A long inner list: one `[` among many tokens dilutes an averaged depth signal."""
    var = rng.choice(NAMES)
    return _bracket_pair(var, _digits(rng, 1, 2), _digits(rng, 12, 20))


def single_double_quote_other_quote(rng: random.Random) -> Pair:
    """A closed string earlier in the file, of a quote kind drawn once for the pair: the other kind for
    one of its prompts. A string always of the other kind would name the answer by its quote."""
    var, other, func, word, earlier = rng.choice(NAMES), rng.choice(NAMES), rng.choice(FUNCS), *rng.sample(PLAIN_WORDS, 2)
    before = rng.choice([chr(39), chr(34)])
    return _pair(lambda single: (f"{other} = {before}{earlier}{before}\n{var} = {func}({chr(39) if single else chr(34)}{word}",
                                 "')" if single else '")', '")' if single else "')"))


PAPER = (single_double_quote, final_kwarg, set_or_string, set_or_string_fixedvarname, class_init, with_as,
         bracket_brace, with_open, bracket_counting, for_while, else_elif, fstring_brace, if_ternary, var_swap,
         indent_for, lambda_func, if_equals, enumerate_range, var_if, while_return_true)
HARD = {f"{f.__name__}_hard": globals().get(f"{f.__name__}_hard", f) for f in PAPER}
HARD.update({f.__name__: f for f in (bracket_counting_comment, bracket_counting_long, single_double_quote_other_quote)})

SUITES: dict[str, dict[str, Callable[[random.Random], Pair]]] = {
    "paper": {f.__name__: f for f in PAPER},
    "hard": HARD,
}
BUILTIN_TASKS = SUITES["paper"]  # the default suite
ALL_TASKS = {**SUITES["paper"], **SUITES["hard"]}
HARD_FORMS: dict[str, list[str]] = {name: [f"{name}_hard"] for name in SUITES["paper"]}
HARD_FORMS["single_double_quote"].append("single_double_quote_other_quote")
HARD_FORMS["bracket_counting"] += ["bracket_counting_comment", "bracket_counting_long"]


def suite_tasks(suite: str) -> list[str]:
    if suite not in SUITES:
        raise ValueError(f"unknown suite '{suite}': use one of {', '.join(SUITES)}")
    return list(SUITES[suite])


def resolve_task(name: str, suite: str = "paper") -> str:
    """A task name as meant within a suite: in `hard`, a paper task's name means its hard form."""
    if suite == "hard" and name in SUITES["paper"]:
        return f"{name}_hard"
    return name


DESCRIPTIONS = {
    "single_double_quote": "close a string with ') or \") according to its opening quote",
    "final_kwarg": "after a keyword argument, the next def argument gets =None, else ):",
    "set_or_string": "a variable initialised as set() or \"\": .add vs += in the loop below",
    "set_or_string_fixedvarname": "set_or_string with the variable always named current",
    "class_init": "copy the right name after self.x = in __init__; the wrong one an argument not yet stored",
    "with_as": "open() in a with statement is followed by ' as'",
    "bracket_brace": "':' inside a dict, ',' inside a list",
    "with_open": "'r' vs 'w' in open() from the file's role",
    "bracket_counting": "] vs ]] by list nesting depth",
    "for_while": "' in' after for name, ':' after while name",
    "else_elif": "':' after else, a condition after elif (the last token decides: flagged)",
    "fstring_brace": "an f-string goes on to a ' {', a plain string closes",
    "if_ternary": "' else' inside a ternary, ':' after an if statement",
    "var_swap": "x, y = y, x: the last name is the first",
    "indent_for": "the body indent after a for header: 8 spaces in a function, 12 in a nested loop",
    "lambda_func": "':' after lambda name, '(' after def name",
    "if_equals": "' ==' in an if condition, ' =' in an assignment",
    "enumerate_range": "zip with two loop variables, range with one",
    "var_if": "':' after if x == True, newline after x = True",
    "while_return_true": "':' after while True, newline after return True",
    "single_double_quote_hard": "single_double_quote with both lines commented out above",
    "final_kwarg_hard": "final_kwarg below a def with or without a keyword argument",
    "set_or_string_hard": "two variables, one set() and one \"\": .add vs += for the one in the loop",
    "set_or_string_fixedvarname_hard": "set_or_string_hard with the variable always named current",
    "class_init_hard": "class_init below a line that names both candidates",
    "with_as_hard": "with_as with both lines commented out above",
    "bracket_brace_hard": "bracket_brace with both lines commented out above",
    "with_open_hard": "with_open with both files the function's arguments, either used before",
    "bracket_counting_hard": "bracket_counting with both lines commented out above",
    "for_while_hard": "for_while inside a for or a while loop",
    "else_elif_hard": "else_elif with both lines commented out above",
    "fstring_brace_hard": "fstring_brace below a closed string with braces, an f-string or not",
    "if_ternary_hard": "if_ternary with both lines commented out above",
    "var_swap_hard": "var_swap below a line that uses one of the names twice",
    "indent_for_hard": "indent_for after a line indented deeper than either header",
    "lambda_func_hard": "lambda_func with both lines commented out above",
    "if_equals_hard": "if_equals with both lines commented out above",
    "enumerate_range_hard": "enumerate_range below a line that unpacks two names or binds one",
    "var_if_hard": "var_if with both lines commented out above",
    "while_return_true_hard": "while_return_true with both lines commented out above",
    "bracket_counting_comment": "bracket_counting after an unmatched [ in a comment (paper 3.2.2)",
    "bracket_counting_long": "bracket_counting in a list of 12 to 20 items (a diluted depth signal)",
    "single_double_quote_other_quote": "single_double_quote after a closed string of either quote kind",
}


@functools.cache
def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def _pre_tokens(text: str) -> int:
    return len(_pre_tokenizer().pre_tokenize_str(text))


CONTEXT_WORDS = (1, 24)  # the words of the comment line above a pair whose prompts differ in length


def _shared_context(pair: Pair, rng: random.Random) -> Pair:
    """A pair whose prompts differ in length (in byte-level pre-tokens, what `prepare`'s tokenizer splits
    first) gets one comment line of 1 to 24 random words above both prompts, drawn once for the pair.
    It is the same text for both answers, so no token of it names one; and its length varies far more
    than any pair's own difference, so a prompt's length says little about its answer."""
    if _pre_tokens(pair[0]["prompt"]) == _pre_tokens(pair[1]["prompt"]):
        return pair
    line = "#" + "".join(f" {rng.choice(PLAIN_WORDS)}" for _ in range(rng.randint(*CONTEXT_WORDS))) + "\n"
    return _record(line + pair[0]["prompt"], pair[0]["correct"], pair[0]["incorrect"]), \
        _record(line + pair[1]["prompt"], pair[1]["correct"], pair[1]["incorrect"])


def check_shared_padding(pair: Pair, padded: Pair) -> Pair:
    """`padded`, after checking that it is `pair` with the same text put before both prompts and nothing
    else changed: text added to one answer's prompt only would itself answer the task."""
    added = []
    for before, after in zip(pair, padded):
        cut = len(after["prompt"]) - len(before["prompt"])
        if (cut < 0 or after["prompt"][cut:] != before["prompt"]
                or (after["correct"], after["incorrect"]) != (before["correct"], before["incorrect"])):
            raise ValueError(f"padding changed a prompt or its answers rather than adding text before it: {after!r}")
        added.append(after["prompt"][:cut])
    if added[0] != added[1]:
        raise ValueError(f"padding differs between the two answers of a pair ({added[0]!r} before the prompt answered"
                         f" {pair[0]['correct']!r}, {added[1]!r} before the one answered {pair[1]['correct']!r}): whatever"
                         " balances a pair must be drawn once for both answers")
    return padded


def generate(name: str, n_pairs: int, seed: int) -> list[Record]:
    """`n_pairs` pairs (2 * n_pairs records) of a built-in task, deterministic in `seed`. A pair whose
    prompts differ in length gets the same random comment line above both (`_shared_context`)."""
    rng = random.Random(f"{name}:{seed}")
    make = ALL_TASKS[name]
    records: list[Record] = []
    for _ in range(n_pairs):
        pair = make(rng)
        records.extend(check_shared_padding(pair, PADDING(pair, rng)))
    return records


# What `tasks audit` flags among the built-in tasks (its generator is seeded, so this is fixed; a test runs
# the audit on every built-in task and checks it against this): `tasks list` says it without auditing.
FLAGGED = {"else_elif": ["last_token"], "else_elif_hard": ["last_token"]}

PADDING = _shared_context  # how generate balances a pair (a test puts a one-sided padding here)
