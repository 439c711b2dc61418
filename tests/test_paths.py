"""The paths that carry the answer, on a hand-wired circuit that is linear where the records take it.

One layer: the last token writes its answer's sign s = +1 or -1 on residual channel 0. Three ReLU
neurons read it, each with a bias that keeps it on (so each is linear in s): neuron 0 (s + 5) and
neuron 2 (s / 2 + 5) write channel 1, which the unembedding reads as " X"; neuron 1 (5 - s) writes
channel 2, read as " Y". A norm epsilon far above the residual's square makes every norm a fixed
scale, so the whole circuit is linear and its logit difference is the sum of its three paths.
"""

import itertools
import json
import random

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from sparsecircuits.circuits.paths import answer_paths, format_paths
from sparsecircuits.config import ModelConfig
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.tasks.records import load_task_splits

FILLERS = list("abcdefgh")
EPS = 1e6  # the norms divide by about sqrt(EPS): a fixed scale
SCALE = EPS ** 0.5
NODES = {"0.mlp.act_in": [0], "0.mlp.post_act": [0, 1, 2], "0.mlp.resid_delta": [1, 2]}


@torch.no_grad()
def linear_model() -> SparseGPT:
    vocab = {w: i for i, w in enumerate(["<unk>", *FILLERS, "ka", "ja", "X", "Y"])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    model = SparseGPT(ModelConfig(vocab_size=len(vocab), d_model=16, n_layer=1, d_head=8, d_mlp=16, ctx_len=8,
                                  bigram_table=False, keep_fraction=1.0, norm_eps=EPS, mlp_activation="relu"))
    for name, p in model.named_parameters():
        p.zero_() if not name.endswith("norm.weight") else p.fill_(1.0)
    block = model.blocks[0]
    model.wte.weight[vocab["ka"], 0], model.wte.weight[vocab["ja"], 0] = 1, -1
    block.fc.weight[0, 0], block.fc.weight[1, 0], block.fc.weight[2, 0] = SCALE, -SCALE, SCALE / 2
    block.fc.bias[:3] = 5
    block.proj.weight[1, 0], block.proj.weight[1, 2], block.proj.weight[2, 1] = 1, 1, 1
    model.lm_head.weight[vocab["X"], 1], model.lm_head.weight[vocab["Y"], 2] = SCALE, SCALE
    model.tokenizer = tokenizer
    return model


def write_task(path) -> str:
    prefixes = list(itertools.permutations(FILLERS, 3))
    random.Random(0).shuffle(prefixes)
    lines = []
    for words in prefixes[:100]:
        prefix = " ".join(words)
        lines += [{"prompt": f"{prefix} ka", "correct": " X", "incorrect": " Y"},
                  {"prompt": f"{prefix} ja", "correct": " Y", "incorrect": " X"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def test_the_paths_of_a_linear_circuit_sum_to_its_logit_difference_and_split_it_by_weight(tmp_path):
    model = linear_model()
    splits = load_task_splits(write_task(tmp_path / "sign.jsonl"), model.tokenizer, max_len=8, warn=False)
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    for site, indices in NODES.items():
        keep[site][indices] = True
    # nodes at a mean that is not zero, so the split is of the difference the nodes make, not of their values
    means = {site: torch.full((width,), 0.3) for site, width in model.node_sites.items()}
    result = answer_paths(model, splits.test, means, keep)
    assert result["delta"] == pytest.approx(result["logit_diff"] - result["logit_diff_empty"])
    assert abs(result["delta"]) > 1.0
    assert result["paths_sum"] == pytest.approx(result["delta"], rel=1e-3)
    assert result["unfollowed"] < 1e-3 * abs(result["delta"])
    main, rest = result["paths"][:3], result["paths"][3:] + result["against"]  # the rest: float32's rounding
    assert all(abs(p["share"]) < 1e-3 for p in rest)
    routes = {tuple(p["nodes"]): p["flow"] for p in main}
    via = lambda neuron, write: ("tokens", "0.mlp.act_in:0", f"0.mlp.post_act:{neuron}", f"0.mlp.resid_delta:{write}", "answer")
    assert set(routes) == {via(0, 1), via(1, 2), via(2, 1)}
    # neuron 2 reads the sign at half neuron 0's weight and writes the same channel: half its flow
    assert routes[via(2, 1)] == pytest.approx(routes[via(0, 1)] / 2, rel=2e-3)
    assert routes[via(1, 2)] == pytest.approx(routes[via(0, 1)], rel=2e-3)
    assert result["top3_share"] == pytest.approx(1.0, rel=2e-3)
    text = format_paths(result, {"0.mlp.post_act:0": "the sign"})
    assert "0.mlp.post_act:0 (the sign)" in text and "top 3 carry 100%" in text
