"""The generated simple-Python corpus: deterministic, valid Python, and never a copy of a task prompt."""

import ast
import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from sparsecircuits.data.prepare import CHARS_PER_TOKEN, prepare
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.data.simple_python import generate_corpus, generate_programs
from sparsecircuits.tasks.builtin import BUILTIN_TASKS
from sparsecircuits.tasks.records import builtin_records

WINDOW = 40


def test_generator_is_deterministic_in_its_seed_and_every_program_parses():
    first = list(itertools.islice(generate_programs(7), 300))
    assert first == list(itertools.islice(generate_programs(7), 300))
    assert first != list(itertools.islice(generate_programs(8), 300))
    assert len(set(first)) > 290  # varied, not one program repeated
    for text in first:
        ast.parse(text)


def test_generator_uses_the_idioms_it_promises():
    text = "".join(itertools.islice(generate_programs(0), 2000))
    for idiom in ("def __init__(self", "self.", "=None", "with open(", " as f", "'w'", "f'", 'f"', "lambda ",
                  "enumerate(", "range(", "zip(", "while True:", "break", "elif ", "else:", " if ", " else ",
                  ".add(", " += ", "== ", " is None", "import ", "# ", '"""', "[[", "for ", "{", "_filename",
                  "assert ", "raise ValueError(", "== None", "== True"):
        assert idiom in text, idiom


def test_generic_names_hold_values_of_every_kind():
    """A name like `result` is a set in one program and a string in another, so only its binding
    says which methods follow; and an f-string's field may follow plain words."""
    text = "".join(itertools.islice(generate_programs(0), 2000))
    for name in ("result", "current", "data"):
        assert re.search(rf"\b{name} = set\(\)", text) and re.search(rf"""\b{name} = (""|'')""", text), name
        assert re.search(rf"\b{name}\.add\(", text) and re.search(rf"\b{name} \+= str\(", text), name
    assert re.search(r"f'[a-z]+ [a-z]+ \{", text)
    assert re.search(r"\b[a-z_]+ = [a-z_]+ if .+ else [a-z_]+$", text, re.MULTILINE)


def test_generator_does_not_read_the_task_definitions():
    code = "import sys, sparsecircuits.data.simple_python; print(any(m.startswith('sparsecircuits.tasks') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def _window_hashes(data: bytes) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every WINDOW-byte substring of `data`, built by doubling
    (a window of 2w from two of w) so 10M tokens take a few passes, not forty."""
    base = np.uint64(1_000_003)
    by_width = {1: np.frombuffer(data, dtype=np.uint8).astype(np.uint64)}
    for width in (1, 2, 4, 8, 16):
        h = by_width[width]
        by_width[2 * width] = h[:-width] * base ** np.uint64(width) + h[width:]
    return by_width[32][:-8] * base ** np.uint64(8) + by_width[8][32:]


def verbatim_prompts(prompts: list[str], text: str) -> list[str]:
    """The prompts that occur in `text`: candidates by the hash of their first WINDOW bytes, then checked."""
    prompt_hashes = np.array([_window_hashes(p.encode()[:WINDOW])[0] for p in prompts], dtype=np.uint64)
    corpus_hashes = _window_hashes(text.encode())
    wanted = np.unique(prompt_hashes)  # look each corpus window up in the few prompt hashes (np.isin would sort 10M)
    slots = np.minimum(np.searchsorted(wanted, corpus_hashes), len(wanted) - 1)
    found = set(wanted[slots][wanted[slots] == corpus_hashes].tolist())
    return [p for p, h in zip(prompts, prompt_hashes.tolist()) if h in found and p in text]


def test_no_task_test_prompt_longer_than_40_characters_occurs_verbatim_in_10m_generated_tokens():
    text = "".join(generate_corpus(int(10_000_000 * CHARS_PER_TOKEN), seed=0))
    prompts = sorted({r["prompt"] for name in BUILTIN_TASKS for r in builtin_records(name)["test"] if len(r["prompt"]) > WINDOW})
    assert len(prompts) > 500
    assert verbatim_prompts(prompts, text) == []


def test_the_verbatim_check_finds_a_prompt_that_is_there():
    there = "def update(state):\n    for file in state:\n        end = 0\n    for name in args:"
    absent = "def update(state):\n    for file in state:\n        end = 1\n    for name in args:"
    text = "x = 1\n" * 1000 + there + "\n" + "y = 2\n" * 1000
    assert verbatim_prompts([absent, there], text) == [there]


def test_prepare_mixes_generated_programs_with_a_folder_and_records_each_part(tmp_path):
    corpus = tmp_path / "code"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    manifest = prepare(tmp_path / "data", corpus=[str(corpus), "simple-python"], vocab_size=300, val_fraction=0.1,
                       show_progress=False, generated_tokens=20_000, seed=3)
    folder, generated = manifest["parts"]
    assert folder["corpus"] == str(corpus) and folder["documents"] == 6
    assert generated["corpus"] == "simple-python" and generated["seed"] == 3 and generated["documents"] > 20
    assert sum(p["tokens"]["train"] for p in manifest["parts"]) == manifest["tokens"]["train"]
    assert sum(p["tokens"]["val"] for p in manifest["parts"]) == manifest["tokens"]["val"]
    mix = manifest["mix"]
    assert mix[str(corpus)] == round(folder["tokens"]["train"] / manifest["tokens"]["train"], 4)
    assert 0 < mix["simple-python"] < 1 and abs(sum(mix.values()) - 1) < 1e-3
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["parts"] == manifest["parts"]
    assert all(not f["path"].startswith("simple-python") for f in manifest["files"])


def test_simple_share_sizes_the_generated_part_from_the_other_parts(tmp_path):
    corpus = tmp_path / "code"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"m{i}.py").write_text("".join(f"def f{i}_{j}(x, y={j}):\n    return x * y + {i}\n" for j in range(40)))
    manifest = prepare(tmp_path / "data", corpus=["simple-python", str(corpus)], vocab_size=300, val_fraction=0.1,
                       show_progress=False, simple_share=0.3)
    generated, folder = manifest["parts"]  # the order given is kept, though the folder is read first
    assert generated["corpus"] == "simple-python" and generated["share_asked"] == 0.3 and folder["documents"] == 40
    assert 0.15 < manifest["mix"]["simple-python"] < 0.5  # sized by characters at the 2048-token BPE's rates


def test_simple_share_needs_another_part_and_a_share_inside_zero_one(tmp_path):
    with pytest.raises(SparseCircuitsError, match="mixes simple-python with other text"):
        prepare(tmp_path / "a", corpus=["simple-python"], simple_share=0.3, show_progress=False)
    with pytest.raises(SparseCircuitsError, match="must be between 0 and 1"):
        prepare(tmp_path / "b", corpus=["stdlib", "simple-python"], simple_share=1.0, show_progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
