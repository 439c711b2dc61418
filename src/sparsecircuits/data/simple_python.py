"""A generated corpus of short, simple, repetitive Python programs (`prepare --corpus simple-python`).

Small models learn plain idioms fast when the text is full of them (the paper trained its small models
on "especially simple and repetitive" Python, in the spirit of TinyStories). Each program is written
from Python's grammar and ordinary coding habits: typed variables with names that say what they hold
(a set is added to, a string is concatenated, a file opened for writing is named like an output) and,
a third of the time, generic names (`result`, `current`, `data`) whose binding alone says what they
hold; functions with positional and keyword arguments, classes whose `__init__` checks and stores its
arguments, loops, branches, conditional expressions, swaps, lambdas, comprehensions, literals of every
kind and both quote styles, and commented-out statements.
Nothing here reads the task definitions. Every program is checked with `ast.parse`; `generate_programs`
is deterministic in its seed.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Iterator

# (plural, singular) nouns: a list is named by the plural and iterated with the singular.
NOUNS = [("items", "item"), ("values", "value"), ("names", "name"), ("lines", "line"), ("words", "word"),
         ("records", "record"), ("rows", "row"), ("paths", "path"), ("keys", "key"), ("numbers", "number"),
         ("users", "user"), ("files", "file"), ("tokens", "token"), ("parts", "part"), ("results", "result"),
         ("scores", "score"), ("entries", "entry"), ("nodes", "node"), ("tasks", "task"), ("points", "point"),
         ("messages", "message"), ("events", "event"), ("columns", "column"), ("labels", "label")]
INT_NAMES = ["count", "total", "index", "size", "limit", "n", "i", "step", "offset", "width", "height", "depth",
             "level", "start", "end", "number", "value", "length", "max_size", "retries"]
STR_NAMES = ["name", "text", "label", "prefix", "message", "title", "line", "word", "key", "suffix", "result",
             "output", "greeting", "status", "header", "content"]
BOOL_NAMES = ["found", "done", "ok", "valid", "ready", "changed", "enabled", "verbose", "strict", "is_empty"]
SET_NAMES = ["seen", "visited", "tags", "unique", "allowed", "skipped", "known", "ids"]
DICT_NAMES = ["counts", "lookup", "config", "cache", "totals", "mapping", "options", "scores_by_name", "index"]
# Generic names any value may have, beside the typed pools: code that names a set `result` or a string
# `current` is common, and then only the line that bound the name says what it holds.
GENERIC_NAMES = ["data", "value", "result", "current", "state", "item", "obj", "node", "source", "first", "last",
                 "other", "out", "acc", "buf", "tmp", "res", "x", "y", "val", "mode", "args", "config", "file"]
# File names are built as a role and a suffix (`input_path`, `report_file`, `src_filename`).
READ_ROLES = ["input", "source", "config", "data", "template", "settings", "src", "in"]
WRITE_ROLES = ["output", "report", "log", "result", "backup", "export", "dest", "out"]
PATH_SUFFIXES = ["path", "file", "name", "filename", "fname"]
VERBS = ["load", "parse", "count", "find", "build", "update", "check", "process", "format", "clean", "merge",
         "split", "collect", "filter", "sort", "read", "write", "save", "show", "make", "get", "add", "remove"]
CLASSES = ["Point", "Counter", "Config", "Parser", "Buffer", "Record", "Item", "Stack", "Queue", "Node", "Task",
           "User", "Report", "Cache", "Player", "Account", "Shape", "Timer", "Inventory", "Book"]
WORDS = ["hello", "world", "done", "error", "ready", "start", "stop", "open", "closed", "yes", "no", "ok",
         "empty", "full", "left", "right", "red", "green", "blue", "small", "large", "total", "name", "value"]
MODULES = ["os", "sys", "json", "math", "random", "re", "time", "string"]
FROM_IMPORTS = [("collections", "Counter"), ("collections", "defaultdict"), ("pathlib", "Path"),
                ("typing", "List"), ("itertools", "chain"), ("functools", "reduce"), ("dataclasses", "dataclass")]
COMMENTS = ["keep track of what we have seen", "start from zero", "nothing to do", "read the whole file",
            "write one line per item", "stop at the first match", "skip empty lines", "build the result",
            "check the input", "default value", "count each one", "try the next one", "swap them",
            "return early", "the main loop", "clean up", "sort by value", "add it to the list"]
COMPARE = ["==", "!=", "<", ">", "<=", ">="]


class Writer:
    """Writes one program: lines at indentation depths, with the variables in scope and their types."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.lines: list[str] = []
        self.scope: dict[str, str] = {}
        self.loop_vars: list[str] = []  # variables of the loops around the line being written
        self.in_function = False  # a `return` may end a block

    # -- helpers ---------------------------------------------------------------------------------
    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, options):
        return self.rng.choice(options)

    def var(self, kind: str) -> str | None:
        names = [n for n, k in self.scope.items() if k == kind]
        return self.pick(names) if names else None

    def quote(self, text: str) -> str:
        return f"'{text}'" if self.chance(0.5) else f'"{text}"'

    def empty(self, kind: str) -> str:
        """The empty value an accumulator of `kind` starts from."""
        return {"list": "[]", "set": "set()", "str": self.quote(""), "int": "0", "dict": "{}"}[kind]

    def new_name(self, kind: str) -> str:
        pool = {"int": INT_NAMES, "str": STR_NAMES, "bool": BOOL_NAMES, "set": SET_NAMES, "dict": DICT_NAMES,
                "list": [p for p, _ in NOUNS]}[kind]
        if self.chance(0.35):
            pool = [n for n in GENERIC_NAMES if n not in self.loop_vars]
        name = self.pick(pool)
        self.scope[name] = kind
        return name

    # -- expressions -----------------------------------------------------------------------------
    def int_expr(self) -> str:
        name, items = self.var("int"), self.var("list")
        options = [str(self.rng.randint(0, 9)), str(self.rng.choice([10, 20, 42, 100, 255, 1000]))]
        if name:
            options += [name, f"{name} + 1", f"{name} - 1", f"{name} * 2", f"{name} // 2", f"{name} % 10"]
        if items:
            options += [f"len({items})", f"len({items}) - 1"]
        return self.pick(options)

    def str_expr(self) -> str:
        name = self.var("str")
        word = self.pick(WORDS)
        options = [self.quote(word), self.quote(f"{word} {self.pick(WORDS)}")]
        if name:
            options += [name, f"{name}.strip()", f"{name}.upper()", f"{name}.lower()", f"{name} + {self.quote(word)}",
                        f"f{self.quote(word + ': {' + name + '}')}",
                        f"f{self.quote(word + ' ' + self.pick(WORDS) + ' {' + name + '}')}"]
        number = self.var("int")
        if number:
            options.append(f"f{self.quote('{' + number + '} ' + word)}")
        return self.pick(options)

    def bool_expr(self) -> str:
        options = [self.pick(["True", "False"])]
        number, text, items, flag = self.var("int"), self.var("str"), self.var("list"), self.var("bool")
        if number:
            options += [f"{number} {self.pick(COMPARE)} {self.rng.randint(0, 10)}", f"{number} % 2 == 0"]
        if text:
            options += [f"{text} == {self.quote(self.pick(WORDS))}", f"{text} is None", f"not {text}",
                        f"{text}.startswith({self.quote(self.pick(WORDS)[:2])})"]
        if items:
            options += [f"len({items}) > 0", f"not {items}", f"{items} is not None"]
            if text:
                options.append(f"{text} in {items}")
        if flag:
            options += [flag, f"not {flag}", f"{flag} is True", f"{flag} == {self.pick(['True', 'False'])}"]
        other = self.pick(list(self.scope)) if self.scope else None
        if other and not other.startswith("self."):
            options.append(f"{other} == None")
        return self.pick(options)

    def literal_list(self, depth: int = 0) -> str:
        size = self.rng.randint(0, 4)
        if depth < 1 and self.chance(0.35):
            return "[" + ", ".join(self.literal_list(depth + 1) for _ in range(max(size, 1))) + "]"
        if self.chance(0.5):
            return "[" + ", ".join(str(self.rng.randint(0, 99)) for _ in range(size)) + "]"
        return "[" + ", ".join(self.quote(self.pick(WORDS)) for _ in range(size)) + "]"

    def literal_dict(self) -> str:
        names = [n for n, k in self.scope.items() if k == "str" and not n.startswith("self.")]
        if names and self.chance(0.3):  # keyed by variables
            keys = self.rng.sample(names, self.rng.randint(1, min(3, len(names))))
        else:
            keys = [self.quote(k) for k in self.rng.sample(WORDS, self.rng.randint(0, 3))]
        values = [self.pick([str(self.rng.randint(0, 9)), self.quote(self.pick(WORDS)), self.literal_list(1), "None",
                             "True", "{}"]) for _ in keys]
        return "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, values)) + "}"

    def list_expr(self) -> str:
        items = self.var("list")
        options = [self.literal_list(), "[]", f"list(range({self.rng.randint(1, 10)}))"]
        if items:
            plural, singular = self._noun(items)
            options += [f"[{singular} for {singular} in {items}]", f"[{singular} * 2 for {singular} in {items}]",
                        f"[{singular} for {singular} in {items} if {singular}]", f"sorted({items})",
                        f"sorted({items}, key=lambda {singular}: {singular}[0])", f"{items}[1:]", f"list({items})"]
        text = self.var("str")
        if text:
            options += [f"{text}.split()", f"{text}.split({self.quote(',')})"]
        return self.pick(options)

    def set_expr(self) -> str:
        items = self.var("list")
        options = ["set()", "{" + ", ".join(str(self.rng.randint(0, 9)) for _ in range(self.rng.randint(1, 4))) + "}"]
        if items:
            options.append(f"set({items})")
        return self.pick(options)

    def dict_expr(self) -> str:
        options = ["{}", self.literal_dict(), "dict()"]
        items = self.var("list")
        if items:
            _, singular = self._noun(items)
            options.append(f"{{{singular}: len({singular}) for {singular} in {items}}}")
        return self.pick(options)

    def expr(self, kind: str) -> str:
        return {"int": self.int_expr, "str": self.str_expr, "bool": self.bool_expr, "list": self.list_expr,
                "set": self.set_expr, "dict": self.dict_expr}[kind]()

    def _noun(self, plural: str) -> tuple[str, str]:
        plural = plural.removeprefix("self.")
        for p, s in NOUNS:
            if p == plural:
                return p, s
        return plural, "x" if plural != "x" else "v"

    # -- statements ------------------------------------------------------------------------------
    def assign(self, depth: int) -> None:
        kind = self.pick(["int", "str", "bool", "list", "set", "dict", "int", "str"])
        value = self.expr(kind)
        self.emit(depth, f"{self.new_name(kind)} = {value}")

    def accumulate(self, depth: int) -> None:
        """An accumulator and the loop that fills it: the operation fits the accumulator's type."""
        source = self.var("list") or self.new_name_with("list", depth)
        _, each = self._noun(source)
        kind = self.pick(["list", "set", "str", "int", "dict"])
        acc = self.new_name(kind)
        if acc in (source, each) or each in self.loop_vars:
            self.small_statement(depth)
            return
        self.emit(depth, f"{acc} = {self.empty(kind)}")
        self.emit(depth, f"for {each} in {source}:")
        if self.chance(0.3):
            self.emit(depth + 1, f"if not {each}:")
            self.emit(depth + 2, "continue")
        self.emit(depth + 1, {"list": f"{acc}.append({each})", "set": f"{acc}.add({each})",
                              "str": f"{acc} += str({each})", "int": f"{acc} += 1",
                              "dict": f"{acc}[{each}] = {acc}.get({each}, 0) + 1"}[kind])
        self.scope[each] = "str"

    def new_name_with(self, kind: str, depth: int) -> str:
        name = self.new_name(kind)
        self.emit(depth, f"{name} = {self.expr(kind) if kind != 'list' else self.literal_list()}")
        return name

    def for_loop(self, depth: int, budget: int) -> None:
        items = self.var("list") or self.new_name_with("list", depth)
        _, each = self._noun(items)
        if each in self.loop_vars or "i" in self.loop_vars:  # a nested loop over the same names would shadow them
            self.small_statement(depth)
            return
        form = self.rng.randint(0, 4)
        if form == 0:
            self.emit(depth, f"for {each} in {items}:")
        elif form == 1:
            self.emit(depth, f"for i, {each} in enumerate({items}):")
            self.scope["i"] = "int"
        elif form == 2:
            self.emit(depth, f"for i in range({self.pick(['len(' + items + ')', str(self.rng.randint(2, 10)), '1, 10'])}):")
            self.scope["i"] = "int"
        elif form == 3:
            other = self.pick([p for p, _ in NOUNS if p != items])
            _, other_each = self._noun(other)
            self.emit(depth, f"for {each}, {other_each} in zip({items}, {other}):")
        else:
            table = self.var("dict") or self.new_name_with("dict", depth)
            self.emit(depth, f"for key, value in {table}.items():")
            self.scope["key"], self.scope["value"] = "str", "int"
            each = "key"
        self.scope[each] = "str"
        bound = [each, "i"] if form in (1, 2) else [each]
        self.loop_vars += bound
        self.block(depth + 1, budget - 1)
        del self.loop_vars[-len(bound):]

    def while_loop(self, depth: int, budget: int) -> None:
        if self.chance(0.5):
            self.emit(depth, "while True:")
            self.block(depth + 1, budget - 1, last=False)
            self.emit(depth + 1, f"if {self.bool_expr()}:")
            self.emit(depth + 2, "break")
        else:
            counter = self.var("int") or self.new_name_with("int", depth)
            self.emit(depth, f"while {counter} {self.pick(['<', '>', '!='])} {self.int_expr()}:")
            self.block(depth + 1, budget - 1, last=False)
            self.emit(depth + 1, f"{counter} {self.pick(['+=', '-='])} 1")

    def branch(self, depth: int, budget: int) -> None:
        self.emit(depth, f"if {self.bool_expr()}:")
        self.block(depth + 1, budget - 1)
        for _ in range(self.rng.choice([0, 0, 1, 2])):
            self.emit(depth, f"elif {self.bool_expr()}:")
            self.block(depth + 1, budget - 1)
        if self.chance(0.5):
            self.emit(depth, "else:")
            self.block(depth + 1, budget - 1)

    def path_name(self, write: bool) -> str:
        return f"{self.pick(WRITE_ROLES if write else READ_ROLES)}_{self.pick(PATH_SUFFIXES)}"

    def with_open(self, depth: int) -> None:
        handle = self.pick(["f", "fh", "handle", "stream"])
        if self.chance(0.25):  # the older habit: open, use, close
            path = self.path_name(write=False)
            self.emit(depth, f"{handle} = open({path})")
            self.emit(depth, f"{self.new_name('str')} = {handle}.read()")
            self.emit(depth, f"{handle}.close()")
        elif self.chance(0.5):
            path = self.path_name(write=False)
            mode = self.pick(["", ", 'r'", ', "r"', ", encoding='utf-8'"])
            self.emit(depth, f"with open({path}{mode}) as {handle}:")
            text = self.new_name("str") if self.chance(0.5) else self.new_name("list")
            self.emit(depth + 1, f"{text} = {handle}.{'read()' if self.scope[text] == 'str' else 'readlines()'}")
        else:
            path = self.path_name(write=True)
            self.emit(depth, f"with open({path}, {self.pick([chr(39) + 'w' + chr(39), chr(34) + 'w' + chr(34), chr(39) + 'a' + chr(39)])}) as {handle}:")
            self.emit(depth + 1, f"{handle}.write({self.str_expr()})")
        self.scope[path] = "str"

    def small_statement(self, depth: int) -> None:
        roll = self.rng.random()
        if roll < 0.25:
            self.assign(depth)
        elif roll < 0.35:
            kind = self.pick(["int", "str", "list", "int"])
            names = [n for n, k in self.scope.items() if k == kind and not n.startswith("self.")]
            if len(names) >= 2:
                a, b = self.rng.sample(names, 2)
                self.emit(depth, f"{a}, {b} = {b}, {a}")
            else:
                self.assign(depth)
        elif roll < 0.5:
            self.emit(depth, f"print({self.str_expr()})")
        elif roll < 0.6:
            kind = self.pick(["str", "int"])
            a, b = self.var(kind), self.var(kind)
            if a and b and self.chance(0.6):  # a choice between two values in scope
                value = f"{a} if {self.bool_expr()} else {b}"
            else:
                value = f"{self.quote(self.pick(WORDS))} if {self.bool_expr()} else {self.quote(self.pick(WORDS))}"
                kind = "str"
            self.emit(depth, f"{self.new_name(kind)} = {value}")
        elif roll < 0.68:
            verb = self.pick(["square", "double", "key", "clean", "is_big", "first"])
            arg = self.pick(["x", "n", "s", "item", "value"] + GENERIC_NAMES)
            body = {"square": f"{arg} * {arg}", "double": f"{arg} * 2", "key": f"{arg}[0]", "clean": f"{arg}.strip()",
                    "is_big": f"{arg} > 10", "first": f"{arg}[0]"}[verb]
            name = verb if self.chance(0.5) else f"{self.pick(VERBS)}_{self.pick(NOUNS)[1]}"
            self.emit(depth, f"{name} = lambda {arg}: {body}")
        elif roll < 0.74:
            self.emit(depth, f"# {self.pick(COMMENTS)}")
            self.assign(depth)
        elif roll < 0.78:
            self.commented_out(depth)
        elif roll < 0.88:
            target = self.var("int")
            if target:
                self.emit(depth, f"{target} {self.pick(['+=', '-=', '*='])} {self.rng.randint(1, 5)}")
            else:
                self.assign(depth)
        else:
            self.with_open(depth)

    def commented_out(self, depth: int) -> None:
        """A statement switched off by commenting it out (its names stay out of scope), then one that runs."""
        start, scope = len(self.lines), dict(self.scope)
        self.small_statement(depth)
        indent = "    " * depth
        self.lines[start:] = [f"{indent}# {line[len(indent):]}" for line in self.lines[start:]]
        self.scope = scope
        self.small_statement(depth)

    def block(self, depth: int, budget: int, last: bool = True) -> None:
        """One to four statements at `depth`; compound ones while `budget` lasts."""
        for _ in range(self.rng.randint(1, 3)):
            roll = self.rng.random()
            if budget > 0 and roll < 0.18:
                self.for_loop(depth, budget)
            elif budget > 0 and roll < 0.3:
                self.branch(depth, budget)
            elif budget > 0 and roll < 0.36:
                self.while_loop(depth, budget)
            elif roll < 0.46:
                self.accumulate(depth)
            else:
                self.small_statement(depth)
        if last and self.in_function and depth > 1 and self.chance(0.3):
            self.emit(depth, f"return {self.pick([self.int_expr(), self.str_expr(), 'True', 'False', 'None'])}")

    # -- definitions -----------------------------------------------------------------------------
    def arguments(self) -> list[str]:
        args = []
        for _ in range(self.rng.randint(0, 3)):
            kind = self.pick(["int", "str", "list", "bool", "dict"])
            name = self.new_name(kind)
            if name not in [a.split("=")[0] for a in args]:
                args.append(name)
        for _ in range(self.rng.choice([0, 0, 1, 2])):
            kind = self.pick(["int", "str", "bool"])
            name = self.new_name(kind)
            default = {"int": str(self.rng.randint(0, 10)), "str": self.pick(["None", self.quote(self.pick(WORDS))]),
                       "bool": self.pick(["True", "False"])}[kind]
            if name not in [a.split("=")[0] for a in args]:
                args.append(f"{name}={default}")
        return args

    def function(self, depth: int, method: bool = False) -> None:
        self.scope = {k: v for k, v in self.scope.items() if k.startswith("self.")} if method else {}
        args = self.arguments()
        name = f"{self.pick(VERBS)}_{self.pick(NOUNS)[self.rng.randint(0, 1)]}"
        self.emit(depth, f"def {name}({', '.join((['self'] if method else []) + args)}):")
        if self.chance(0.3):
            self.emit(depth + 1, f'"""{self.pick(VERBS).capitalize()} the {self.pick(NOUNS)[0]}."""')
        self.in_function = True
        self.block(depth + 1, 2)
        self.emit(depth + 1, f"return {self.pick([self.int_expr(), self.str_expr(), self.bool_expr(), 'None'])}")
        self.in_function = False

    def klass(self) -> None:
        name = self.pick(CLASSES)
        self.emit(0, f"class {name}:")
        if self.chance(0.3):
            self.emit(1, f'"""A {name.lower()} with its own state."""')
        self.scope = {}
        args = self.arguments() or [self.new_name("int")]
        self.emit(1, f"def __init__(self, {', '.join(args)}):")
        fields = {}
        names = [arg.split("=")[0] for arg in args]
        if self.chance(0.3):  # stored in another order than the arguments
            self.rng.shuffle(names)
        for field in names:
            if self.chance(0.2):  # a check on an argument before it is stored
                checked = self.pick(names)
                if self.chance(0.5):
                    self.emit(2, f"assert {checked}")
                else:
                    self.emit(2, f"if {checked} is None:")
                    self.emit(3, f"raise ValueError({self.quote(checked + ' is required')})")
            fields[f"self.{field}"] = self.scope.get(field, "int")
            self.emit(2, f"self.{field} = {field}")
        if self.chance(0.4):
            extra = self.pick(["items", "seen", "count", "name"])
            kind = {"items": "list", "seen": "set", "count": "int", "name": "str"}[extra]
            self.emit(2, f"self.{extra} = {self.empty(kind)}")
            fields[f"self.{extra}"] = kind
        for _ in range(self.rng.randint(1, 2)):
            self.emit(0, "")
            self.scope = dict(fields)
            self.function(1, method=True)

    def program(self) -> str:
        if self.chance(0.5):
            for _ in range(self.rng.randint(1, 2)):
                if self.chance(0.5):
                    self.emit(0, f"import {self.pick(MODULES)}")
                else:
                    module, name = self.pick(FROM_IMPORTS)
                    self.emit(0, f"from {module} import {name}")
            self.emit(0, "")
        if self.chance(0.2):
            self.emit(0, f"{self.pick(['MAX_SIZE', 'DEFAULT_NAME', 'LIMIT', 'DEBUG'])} = {self.pick(['100', '10', repr('main'), 'False'])}")
            self.emit(0, "")
        for _ in range(self.rng.randint(1, 3)):
            roll = self.rng.random()
            if roll < 0.6:
                self.function(0)
            elif roll < 0.9:
                self.klass()
            else:
                self.scope = {}
                self.block(0, 1, last=False)
            self.emit(0, "")
        if self.chance(0.15):
            self.emit(0, 'if __name__ == "__main__":')
            self.emit(1, "main()")
        return "\n".join(self.lines).rstrip() + "\n"


def generate_programs(seed: int) -> Iterator[str]:
    """An endless, seeded stream of programs, each one parsed by `ast.parse` before it is yielded."""
    rng = random.Random(seed)
    while True:
        text = Writer(rng).program()
        ast.parse(text)  # a program that does not parse is a bug in this module: let it raise
        yield text


def generate_corpus(n_chars: int, seed: int) -> list[str]:
    """Programs from `generate_programs(seed)` until they hold at least `n_chars` characters."""
    programs, total = [], 0
    for text in generate_programs(seed):
        if total >= n_chars:
            break
        programs.append(text)
        total += len(text)
    return programs
