"""Node labels: a node built to fire inside double-quoted strings is labelled so, and the command
writes what the viewer shows."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from sparsecircuits.circuits.labels import concept_table, label_nodes, shuffled_weights
from sparsecircuits.cli import main
from sparsecircuits.concepts import PYTHON_CONCEPTS
from sparsecircuits.config import load_config
from sparsecircuits.data.dataset import TokenData
from sparsecircuits.data.prepare import prepare
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.rundir import Run


@pytest.fixture(scope="module")
def quoted_data(tmp_path_factory):
    """Python where double-quoted strings hold words that appear nowhere else."""
    root = tmp_path_factory.mktemp("quoted")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    inside, single, names = ["alpha", "beta", "gamma", "delta"], ["red", "green", "blue"], ["value", "item", "count"]
    for i in range(60):
        lines = []
        for j in range(60):
            name, kind = rng.choice(names), rng.randrange(3)
            if kind == 0:
                lines.append(f'{name}{j} = "{" ".join(rng.sample(inside, 3))}"')
            elif kind == 1:
                lines.append(f"{name}{j} = '{' '.join(rng.sample(single, 2))}'")
            else:
                lines.append(f"{name}{j} = {name} + {j}")
        (corpus / f"f{i}.py").write_text("\n".join(lines) + "\n")
    prepare(root / "data", corpus=[corpus], vocab_size=300, val_fraction=0.2, show_progress=False)
    return TokenData(root / "data")


def test_a_node_built_to_fire_inside_double_quoted_strings_gets_that_label_first(quoted_data):
    config = load_config("tiny", ["model.d_model=16", "model.n_layer=1", "model.keep_fraction=1", "model.ctx_len=64",
                                  f"model.vocab_size={quoted_data.vocab_size}"])
    model = SparseGPT(config.model)
    model.tokenizer = quoted_data.tokenizer()
    table = concept_table(quoted_data, quoted_data.tokenizer(), 64, 4096, PYTHON_CONCEPTS, show_progress=False)
    ids = table.inputs.flatten().numpy()
    inside = table.values[:, [c.name for c in PYTHON_CONCEPTS].index("in_double_quoted_string")]
    only_inside = [t for t in np.unique(ids) if (inside[ids == t] == 1).all()]
    assert len(only_inside) >= 3
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for norm in (model.blocks[0].attn_norm, model.blocks[0].mlp_norm, model.final_norm):
            norm.weight.fill_(1.0)
        model.wte.weight[only_inside, 0] = 1.0  # channel 0 of the embedding: on for those tokens only
    result = label_nodes(model, quoted_data, config.sparsity, [("0.attn.act_in", 0), ("0.attn.act_in", 1)], n_tokens=4096,
                         show_progress=False)
    built, silent = result["nodes"]
    assert built["labels"][0]["concept"] == "in_double_quoted_string", built["labels"]
    assert built["labels"][0]["auroc"] > 0.9 and built["labels"][0]["mass_fraction"] == 1.0
    assert silent["labels"] == []  # a node that never fires: no concept above threshold
    with torch.no_grad():
        model.wte.weight[only_inside, 0] = -1.0  # the same node firing negatively: the same label, sign -
    flipped = label_nodes(model, quoted_data, config.sparsity, [("0.attn.act_in", 0)], n_tokens=4096, show_progress=False)["nodes"][0]
    assert flipped["labels"][0]["concept"] == "in_double_quoted_string" and flipped["labels"][0]["sign"] == "-"


def test_shuffled_weights_keep_the_sparsity_pattern_and_change_the_values(trained_run):
    run = Run.open(trained_run)
    model = run.model()
    shuffled = shuffled_weights(model, run.config.sparsity)
    for (name, a), (_, b) in zip(model.named_parameters(), shuffled.named_parameters()):
        assert torch.equal(a != 0, b != 0), name
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values), name
    assert not torch.equal(model.blocks[0].fc.weight, shuffled.blocks[0].fc.weight)


def test_label_command_writes_labels_for_a_circuit_and_the_page_shows_them(circuit_dir, task_run, tmp_path, capsys):
    run, _ = task_run
    main(["label", str(run), "--circuit", str(circuit_dir), "--tokens", "2048"])
    out = capsys.readouterr().out
    assert "labelled above threshold" in out and (circuit_dir / "labels.json").is_file()
    labels = json.loads((circuit_dir / "labels.json").read_text())
    circuit = json.loads((circuit_dir / "circuit.json").read_text())
    assert [(n["site"], n["index"]) for n in labels["nodes"]] == [(n["site"], n["index"]) for n in circuit["nodes"]]
    assert set(labels["concepts"]) == {c.name for c in PYTHON_CONCEPTS}
    page = tmp_path / "page.html"
    main(["view", str(circuit_dir), "--out", str(page)])
    assert '"labels":{' in page.read_text() and "Python concept" in page.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        main(["label", str(run), "--node", "9.attn.q:0"])
    assert "9.attn.q" in capsys.readouterr().err
