"""`tasks audit`: trivial predictors fitted on train records, scored on test records, flag leaky tasks."""

import ast
import json
import random

import pytest

from sparsecircuits.cli import main
from sparsecircuits.tasks.audit import FLAG_ACCURACY, audit_task
from sparsecircuits.tasks.builtin import BUILTIN_TASKS, generate

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


def test_a_task_whose_two_prompts_hold_the_same_tokens_passes():
    result = audit_task("set_or_string")
    assert result["flagged"] == [] and all(abs(a - 0.5) < 0.1 for a in result["accuracy"].values())


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_pairs_hold_the_same_pre_tokens_and_pass_every_predictor(name):
    """Both prompts of every pair are the same multiset of byte-level pre-tokens, so no count of tokens
    tells the answers apart; only else_elif is answered by its last token (the paper's contrast)."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    records = generate(name, 50, seed=3)
    for first, second in zip(records[::2], records[1::2]):
        assert first["correct"] == second["incorrect"]
        assert sorted(t for t, _ in split(first["prompt"])) == sorted(t for t, _ in split(second["prompt"])), name
    assert audit_task(name)["flagged"] == (["last_token"] if name == "else_elif" else [])


def test_no_builtin_task_is_answered_by_its_length_or_last_token_except_else_elif():
    """else_elif is decided by its last token as the paper defines it (flagged and documented)."""
    for name in BUILTIN_TASKS:
        flagged = set(audit_task(name)["flagged"])
        assert not flagged & {"length"}, name
        assert ("last_token" in flagged) == (name == "else_elif"), name


def test_builtin_prompts_parse_as_python_once_completed():
    """Each prompt followed by its correct answer starts valid Python (checked by completing the line
    with a body where one is needed)."""
    for name in BUILTIN_TASKS:
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
    with pytest.raises(SystemExit):  # the fixture's lambda-or-def task is answered by a bag of its tokens
        main(["tasks", "audit", str(task), "for_while", "--run-dir", str(run), "--json"])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["task"] for r in rows] == ["lambda"] and "bigram_table" in rows[0]["accuracy"]
    assert "bag_of_tokens" in rows[0]["flagged"]
    assert "for_while not audited" in captured.err  # its completions are not single tokens of this tokenizer
