"""`tasks audit`: predictors fitted on train records, scored on test records; degenerate cues flag a
task, likely mechanisms are reported. Each predictor has a positive control: a task it must answer."""

import ast
import json
import random

import pytest

from sparsecircuits.cli import main
from sparsecircuits.tasks.audit import FLAG_ACCURACY, audit_task
from sparsecircuits.tasks.builtin import BUILTIN_TASKS, FLAGGED, HARD_FORMS, SUITES, generate

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def write_task(path, make, n_pairs=300):
    rng = random.Random(0)
    path.write_text("".join(json.dumps(r) + "\n" for _ in range(n_pairs) for r in make(rng)))
    return str(path)


def last_token_cue(rng):
    """The answer is decided by the prompt's last word alone; lengths and everything else match."""
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
    return ({"prompt": f"x = {body} up", "correct": " +", "incorrect": " -"},
            {"prompt": f"x = {body} down", "correct": " -", "incorrect": " +"})


def length_cue(rng):
    """The answer is decided by how long the prompt is; the last token is shared, and both answers
    draw their words from one pool."""
    short = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    long = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 10)))
    return ({"prompt": f"x = {short} end", "correct": " +", "incorrect": " -"},
            {"prompt": f"x = {long} end", "correct": " -", "incorrect": " +"})


def test_audit_flags_a_last_token_cue_and_a_length_cue(tmp_path):
    last = audit_task(write_task(tmp_path / "last.jsonl", last_token_cue))
    assert last["accuracy"]["last_token"] > 0.95 and "last_token" in last["flagged"]
    assert last["accuracy"]["length"] < FLAG_ACCURACY
    length = audit_task(write_task(tmp_path / "length.jsonl", length_cue))
    assert length["accuracy"]["length"] > 0.95 and "length" in length["flagged"]
    assert length["accuracy"]["last_token"] < FLAG_ACCURACY


def anywhere_cue(rng):
    """Which word appeared, anywhere in the prompt, decides (the quote and bracket tasks' kind of cue)."""
    body = " ".join(rng.choice(WORDS) for _ in range(3))
    return ({"prompt": f"x = up {body} end", "correct": " +", "incorrect": " -"},
            {"prompt": f"x = down {body} end", "correct": " -", "incorrect": " +"})


def last_line_cue(rng):
    """The word on the last line decides; the line above holds the other word (among others, at no fixed
    position), so the bag of all tokens is the same for both prompts."""
    body = " ".join(rng.choice(WORDS) for _ in range(2))
    left, right = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(2))
    return ({"prompt": f"y = {left} down {right}\nx = up {body} end", "correct": " +", "incorrect": " -"},
            {"prompt": f"y = {left} up {right}\nx = down {body} end", "correct": " -", "incorrect": " +"})


def last_two_cue(rng):
    """The second-last token decides; the last token and the bag of tokens are shared."""
    head = " ".join(rng.choice(WORDS) for _ in range(3))  # enough distinct prompts for every split (the audit needs 8)
    return ({"prompt": f"x = {head} down up end", "correct": " +", "incorrect": " -"},
            {"prompt": f"x = {head} up down end", "correct": " -", "incorrect": " +"})


@pytest.mark.parametrize("make, fires, silent", [
    (anywhere_cue, "bag_of_tokens", ("last_token", "length", "last_two_tokens")),
    (last_line_cue, "bag_of_last_line", ("last_token", "length", "bag_of_tokens")),
    (last_two_cue, "last_two_tokens", ("last_token", "length", "bag_of_tokens")),
])
def test_each_mechanism_predictor_answers_its_own_cue_and_is_reported_not_flagged(tmp_path, make, fires, silent):
    result = audit_task(write_task(tmp_path / "cue.jsonl", make))
    assert result["accuracy"][fires] > 0.95 and fires in result["mechanisms"], result
    assert all(result["accuracy"][p] < FLAG_ACCURACY for p in silent), result
    assert result["flagged"] == []


def test_a_task_whose_two_prompts_hold_the_same_tokens_passes():
    result = audit_task("set_or_string_hard")
    assert result["flagged"] == [] and all(abs(a - 0.5) < 0.1 for a in result["accuracy"].values())


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_paper_pairs_end_alike_and_whatever_balances_them_is_shared(name):
    """The paper suite removes the degenerate cues only: both prompts of a pair end in the same pre-token
    (except else_elif, whose contrast is its last token), and a pair whose prompts differ in length has
    the same comment line above both: nothing added to a prompt depends on its answer."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    records = generate(name, 50, seed=3)
    for first, second in zip(records[::2], records[1::2]):
        assert first["correct"] == second["incorrect"]
        a, b = [t for t, _ in split(first["prompt"])], [t for t, _ in split(second["prompt"])]
        assert (a[-1] == b[-1]) == (name != "else_elif"), name
        if len(a) != len(b):
            assert first["prompt"].startswith("#") and first["prompt"].split("\n")[0] == second["prompt"].split("\n")[0]
    assert audit_task(name)["flagged"] == (["last_token"] if name == "else_elif" else [])


def one_sided_padding(pair, rng):
    """The retired balancing: a comment line before the shorter prompt only, so its first token names its answer."""
    short = min(pair, key=lambda r: len(r["prompt"]))
    return tuple({**r, "prompt": "# pad\n" + r["prompt"]} if r is short else r for r in pair)


def test_the_generator_rejects_padding_that_depends_on_the_answer(monkeypatch):
    from sparsecircuits.tasks import builtin

    assert generate("if_equals", 20, seed=0)  # the shipped padding passes its own check
    monkeypatch.setattr(builtin, "PADDING", one_sided_padding)
    with pytest.raises(ValueError, match="padding differs between the two answers of a pair"):
        generate("if_equals", 20, seed=0)


def padded_first_token_cue(rng):
    """The answer is decided by a contrast on the last line, but one answer's prompt alone starts with a
    newline (as padding once did): the first token names the answer. Length and last token say nothing."""
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
    return ({"prompt": f"\nx = {body} up end", "correct": " +", "incorrect": " -"},
            {"prompt": f"x = {body} up up end", "correct": " -", "incorrect": " +"})


def test_audit_flags_a_task_whose_first_token_names_the_answer_and_names_the_position(tmp_path):
    result = audit_task(write_task(tmp_path / "padded.jsonl", padded_first_token_cue))
    assert result["accuracy"]["last_token"] < FLAG_ACCURACY and result["accuracy"]["length"] < FLAG_ACCURACY
    assert "token 1 from start" in result["flagged"] and result["positions"]["token 1 from start"] > 0.95
    # a contrast on the last line at a fixed offset from the end is the task's content, not flagged
    assert audit_task(write_task(tmp_path / "two.jsonl", last_two_cue))["flagged"] == []


def test_bracket_counting_counts_bracket_tokens_and_class_init_stores_many_lines():
    """Each `[` of bracket_counting is a pre-token of its own (`[[` would be one token whose identity gives
    the depth); class_init's `__init__` has stored two or more `self.x = x` lines, as the paper's does."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    for name in ("bracket_counting", "bracket_counting_long", "bracket_counting_hard"):
        for record in generate(name, 50, seed=0):
            brackets = [t for t, _ in split(record["prompt"]) if "[" in t and not t.startswith("#")]
            assert all(t.lstrip("\u0120") == "[" for t in brackets), record  # "\u0120": a space, byte-level
            if name == "bracket_counting":
                assert len(brackets) == (2 if record["correct"] == "]]" else 1), record
    stored = [r["prompt"].count("        self.") for r in generate("class_init", 100, seed=0)]
    assert min(stored) >= 2 + 1 and max(stored) >= 5  # the line being written is one of them


@pytest.mark.parametrize("name", [*SUITES["paper"], *SUITES["hard"]])
def test_both_prompts_of_a_pair_share_everything_before_their_last_line(name):
    """Whatever a task adds to balance a pair (a comment line, both members' lines commented out, a line
    naming both candidates) is drawn once for the pair: text above the line being written that differed
    between the answers would name the answer by its position. set_or_string's contrast is in the lines
    that initialise its variables, which alone may differ."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    for first, second in zip(*[iter(generate(name, 30, seed=3))] * 2):
        above = [r["prompt"].rpartition("\n")[0] for r in (first, second)]
        if name.startswith("set_or_string"):  # the contrast: the lines that initialise
            above = [[line for line in a.split("\n") if "set()" not in line and '""' not in line] for a in above]
        assert above[0] == above[1], (name, first, second)
        if "\n    # " in first["prompt"]:  # lines commented out above: both answers' lines are in both prompts
            assert {t for t, _ in split(first["prompt"])} == {t for t, _ in split(second["prompt"])}, name


def test_paper_quote_and_bracket_tasks_are_posed_as_the_paper_poses_them():
    """One quote kind and no comment line in the quote task; no closing bracket and no bracket in a comment
    in the bracket-counting task; the distractors live in the hard suite."""
    for record in generate("single_double_quote", 50, seed=0):
        prompt = record["prompt"]
        assert "#" not in prompt and (prompt.count("'") + prompt.count('"')) == 1, prompt
    for record in generate("bracket_counting", 50, seed=0):
        comments = [line for line in record["prompt"].splitlines() if line.startswith("#")]
        assert "]" not in record["prompt"] and not any("[" in c for c in comments), record
    assert all("#" in r["prompt"] for r in generate("bracket_counting_comment", 10, seed=0))
    other = generate("single_double_quote_other_quote", 10, seed=0)
    assert {r["prompt"].split(" = ")[1][0] for r in other} == {"'", '"'}  # the earlier string: either kind
    assert set(SUITES["hard"]) >= set(HARD_FORMS["single_double_quote"] + HARD_FORMS["bracket_counting"])


def test_paper_copy_and_loop_tasks_carry_no_line_that_balances_name_counts():
    """class_init, var_swap and for_while in the paper's form: the line being written and nothing added to
    even out which names appear; the hard suite keeps the balanced forms."""
    for record in generate("class_init", 50, seed=0):
        prompt, wrong = record["prompt"], record["incorrect"].strip()
        assert "assert" not in prompt and f"self.{wrong} =" not in prompt, prompt
    for record in generate("var_swap", 50, seed=0):
        assert record["prompt"].count("\n") == 1 and " + " not in record["prompt"], record
    for record in generate("for_while", 50, seed=0):
        assert (" for " in record["prompt"]) != (" while " in record["prompt"]), record
    assert all("assert" in r["prompt"] for r in generate("class_init_hard", 10, seed=0))
    assert all(" + " in r["prompt"] for r in generate("var_swap_hard", 10, seed=0))
    outer = {r["prompt"].split("\n")[1].split()[0] for r in generate("for_while_hard", 20, seed=0)}
    assert outer == {"for", "while"}  # the loop around the one being written is of either kind


def test_no_builtin_task_is_answered_by_its_length_last_token_or_a_position_except_else_elif():
    """No task of either suite is flagged by any degenerate cue or position predictor; else_elif is decided by its last token as the paper defines it (flagged and documented)."""
    for suite in SUITES.values():
        for name in suite:
            assert audit_task(name)["flagged"] == (["last_token"] if name.startswith("else_elif") else []), name
            assert audit_task(name)["flagged"] == FLAGGED.get(name, []), name  # what `tasks list` says unaudited


def test_builtin_prompts_parse_as_python_once_completed():
    """Each prompt followed by its correct answer starts valid Python (checked by completing the line
    with a body where one is needed)."""
    for name in [n for suite in SUITES.values() for n in suite]:
        for record in generate(name, 20, seed=1):
            text = record["prompt"] + record["correct"]
            for ending in ("", " x", "\n" + " " * 12 + "pass", " x: pass", "x)\n", " y in z: pass", "(x): pass",
                           "): pass", "        pass", ".add(x)", "pass", " pass", "None): pass", "') as f: pass",
                           "(x, y): pass", "x}')", ")", " 2}", " x]"):
                try:
                    ast.parse(text + ending)
                    break
                except SyntaxError:
                    continue
            else:
                pytest.fail(f"{name}: {text!r} cannot be completed into valid Python")


def test_audit_cli_exits_1_on_a_flagged_task_and_reads_the_bigram_table(tmp_path, capsys, task_run):
    path = write_task(tmp_path / "last.jsonl", last_token_cue)
    with pytest.raises(SystemExit) as info:
        main(["tasks", "audit", path])
    assert info.value.code == 1 and "FLAGGED: last_token" in capsys.readouterr().out
    run, task = task_run
    with pytest.raises(SystemExit):  # the fixture's lambda-or-def prompts differ in length: flagged
        main(["tasks", "audit", str(task), "for_while", "--run-dir", str(run), "--json"])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["task"] for r in rows] == ["lambda"] and "bigram_table" in rows[0]["accuracy"]
    assert rows[0]["flagged"][0] == "length" and "token 1 from start" in rows[0]["flagged"]
    assert "bag_of_tokens" in rows[0]["mechanisms"]
    assert "for_while not audited" in captured.err  # its completions are not single tokens of this tokenizer
