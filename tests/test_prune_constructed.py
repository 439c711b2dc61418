"""Pruning and its controls on a hand-wired model whose circuits are known node by node.

One layer, weights all zero but a few: the last token writes two residual channels, "k" vs "j"
(channel 0, the task) and an even vs odd name length (channel 3, a meaningless feature). Four MLP
neurons read them and write channels 1 and 2, which the unembedding reads as " X" and " Y". The
task path is twice as strong as the length path, so the full model does the task; the length path
alone can do the nonsense rule "the parity of a name's length picks the answer".
"""

import json
import random

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from sparsecircuits.circuits.find import AdaptivePenalty, PruneSettings, find_circuit
from sparsecircuits.circuits.validate import controls, nonsense_control
from sparsecircuits.config import ModelConfig
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.tasks.records import load_task_splits

FILLERS = list("abcdefghilmnopqrstuvw")  # one-letter names: their parity never varies
LAST = {"ka": (1, 1), "kab": (1, -1), "ja": (-1, 1), "jab": (-1, -1)}  # (task sign, length-parity sign)
TASK_NODES = {("0.mlp.act_in", 0), ("0.mlp.post_act", 0), ("0.mlp.post_act", 1),
              ("0.mlp.resid_delta", 1), ("0.mlp.resid_delta", 2)}
NONSENSE_NODES = {("0.mlp.act_in", 3), ("0.mlp.post_act", 2), ("0.mlp.post_act", 3),
                  ("0.mlp.resid_delta", 1), ("0.mlp.resid_delta", 2)}


def _tokenizer() -> Tokenizer:
    vocab = {w: i for i, w in enumerate(["<unk>", *FILLERS, *LAST, "X", "Y"])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return tokenizer


@torch.no_grad()
def wired_model() -> SparseGPT:
    tokenizer = _tokenizer()
    model = SparseGPT(ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=32, n_layer=1, d_head=16, d_mlp=32,
                                  ctx_len=8, bigram_table=False))
    for name, p in model.named_parameters():
        p.zero_() if not name.endswith("norm.weight") else p.fill_(1.0)
    block = model.blocks[0]
    for word, (task, length) in LAST.items():
        row = model.wte.weight[tokenizer.token_to_id(word)]
        row[0], row[3] = task, length
    block.fc.weight[0, 0], block.fc.weight[1, 0], block.fc.weight[2, 3], block.fc.weight[3, 3] = 1, -1, 1, -1
    block.proj.weight[1, 0], block.proj.weight[2, 1] = 2, 2  # task path
    block.proj.weight[1, 2], block.proj.weight[2, 3] = 1, 1  # length path, half as strong
    model.lm_head.weight[tokenizer.token_to_id("X"), 1] = 1
    model.lm_head.weight[tokenizer.token_to_id("Y"), 2] = 1
    model.tokenizer = tokenizer
    return model


def write_task(path, n_pairs=300):
    rng, lines = random.Random(0), []
    for _ in range(n_pairs):
        prefix = " ".join(rng.sample(FILLERS, 2))
        first, second = rng.choice([("ka", "ja"), ("kab", "jab"), ("ka", "jab"), ("kab", "ja")])
        lines += [{"prompt": f"{prefix} {first}", "correct": " X", "incorrect": " Y"},
                  {"prompt": f"{prefix} {second}", "correct": " Y", "incorrect": " X"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(path)


def node_set(keep):
    return {(site, int(i)) for site, k in keep.items() for i in k.nonzero().flatten().tolist()}


@pytest.fixture(scope="module")
def wired(tmp_path_factory):
    model = wired_model()
    task = write_task(tmp_path_factory.mktemp("wired") / "k_or_j.jsonl")
    splits = load_task_splits(task, model.tokenizer, max_len=8, warn=False)
    zeros = {site: torch.zeros(width) for site, width in model.node_sites.items()}
    return model, task, splits, zeros


def test_the_wired_model_does_its_task(wired):
    model, _, splits, zeros = wired
    found = find_circuit(model, splits, zeros, PruneSettings(target_loss=0.15, steps=5), show_progress=False)
    assert found["full_loss"] < 0.05


def test_default_pruning_finds_the_known_nodes_where_a_fixed_penalty_set_too_high_misses(wired):
    model, _, splits, zeros = wired
    settings = PruneSettings(target_loss=0.15, steps=150, calibration_steps=4, ablation="zero")
    found = find_circuit(model, splits, zeros, settings, show_progress=False)
    assert found["reached"] and node_set(found["keep"]) == TASK_NODES, sorted(node_set(found["keep"]))
    assert found["loss_active_choose"] <= settings.target_loss  # the mask's own active set meets the target
    assert found["k_final"] != settings.k_coef  # the penalty moved

    fixed = PruneSettings(target_loss=0.15, steps=150, calibration_steps=4, ablation="zero", penalty="fixed", k_coef=1.0)
    too_high = find_circuit(model, splits, zeros, fixed, show_progress=False)
    assert too_high["loss_active_choose"] > fixed.target_loss  # its mask ends short of the target
    assert too_high["k_final"] == 1.0


def test_a_miss_as_long_as_the_mask_takes_to_recover_does_not_wind_the_penalty_down():
    """The mask answers a lower k only after pruned nodes climb back (tens of steps at lr 1e-2): a
    controller that keeps falling all that time ends orders of magnitude too low."""
    penalty = AdaptivePenalty(PruneSettings(target_loss=0.15))
    for _ in range(100):  # room: k rises
        penalty.update(0.02)
    before = penalty.k
    for _ in range(20):  # the loss at twice the target while the nodes come back
        penalty.update(0.30)
    assert before > 10 * PruneSettings().k_coef
    assert penalty.k >= before / 20, (before, penalty.k)
    after_miss = penalty.k
    for _ in range(20):
        penalty.update(0.02, settling=True)  # settling: k may only fall, even with room
    assert penalty.k <= after_miss


def test_a_nonsense_rule_a_mask_can_fit_fails_its_control(wired):
    model, task, splits, zeros = wired
    settings = PruneSettings(target_loss=0.15, steps=150, calibration_steps=4, ablation="zero")
    real = find_circuit(model, splits, zeros, settings, show_progress=False)
    nonsense = nonsense_control(model, task, zeros, settings, show_progress=False)
    assert "parity of the length of name 3" in nonsense["rule"]
    assert nonsense["reached_target"] and nonsense["loss_test"] <= settings.target_loss
    result = {"target_loss": 0.15, "n_nodes": len(node_set(real["keep"])), "control_nonsense": nonsense,
              "loss_random_same_size": 0.69, "loss_empty_circuit": 0.69}
    verdict = controls(result)["nonsense_rule"]
    assert not verdict["passed"] and "fits nonsense as easily" in verdict["why"], verdict
    assert nonsense["n_nodes"] <= 2 * len(TASK_NODES)


def test_random_and_empty_controls_judge_by_their_thresholds():
    result = {"target_loss": 0.15, "n_nodes": 5, "loss_random_same_size": 0.40, "loss_empty_circuit": 0.2}
    verdicts = controls(result)
    assert not verdicts["random_nodes"]["passed"]  # 0.40 is less than halfway (0.42) from 0.15 to ln 2
    assert verdicts["empty_circuit"]["passed"]
    result.update(loss_random_same_size=0.45, loss_empty_circuit=0.1)
    verdicts = controls(result)
    assert verdicts["random_nodes"]["passed"] and not verdicts["empty_circuit"]["passed"]
    assert set(verdicts) == {"random_nodes", "empty_circuit"}  # the pruning controls were not run


def test_the_nonsense_rule_is_balanced_independent_of_the_answer_or_not_applied():
    from sparsecircuits.tasks.nonsense import nonsense_rule
    from sparsecircuits.tasks.records import task_records

    _, records = task_records("while_return_true", warn=False)
    relabelled, rule = nonsense_rule(records)
    train = relabelled["train"]
    first = sum(r["correct"] == min(r["correct"], r["incorrect"]) for r in train) / len(train)
    agree = sum(a["correct"] == b["correct"] for a, b in zip(train, records["train"])) / len(train)
    assert 0.3 <= first <= 0.7 and 0.4 <= agree <= 0.6, (first, agree)  # not constant, not the task itself
    assert [r["prompt"] for r in train] == [r["prompt"] for r in records["train"]]
    same = [{"prompt": "x = go", "correct": " a", "incorrect": " b"}] * 40
    with pytest.raises(ValueError, match="no name"):
        nonsense_rule({"train": same})
    result = {"target_loss": 0.15, "n_nodes": 5, "loss_random_same_size": 0.69, "loss_empty_circuit": 0.69,
              "control_nonsense": {"rule": None, "skipped": "no name in these prompts varies"}}
    assert "nonsense_rule" not in controls(result)  # not applicable: not counted as passed


def test_attribution_ranks_the_task_path_above_the_meaningless_one(wired):
    from sparsecircuits.circuits.find import attribution_scores

    model, _, splits, zeros = wired
    scores = attribution_scores(model, splits.train, zeros)
    ranked = sorted(((float(s), (site, i)) for site, v in scores.items() for i, s in enumerate(v)), reverse=True)
    assert ranked[0][1] in TASK_NODES, ranked[:6]
    score = {node: s for s, node in ranked}
    task_only, length_only = TASK_NODES - NONSENSE_NODES, NONSENSE_NODES - TASK_NODES
    assert min(score[n] for n in task_only) > max(score[n] for n in length_only), ranked[:8]
    found = find_circuit(model, splits, zeros, PruneSettings(target_loss=0.15, calibration_steps=4, ablation="zero",
                                                             method="attribution"), show_progress=False)
    # its circuit holds the task path and none of the meaningless one (whose ablation would lower the
    # loss: negative scores, ranked last); a shared output channel with a small negative score drags
    # in the zero-scored nodes ranked above it, where the learned mask keeps exactly TASK_NODES
    kept = node_set(found["keep"])
    assert found["reached"] and TASK_NODES <= kept and not kept & (NONSENSE_NODES - TASK_NODES)
    assert "attribution" in found["seconds"] and found["active_after_training"] is None


def test_edge_pruning_removes_a_weight_between_needed_nodes_that_node_pruning_must_keep(wired):
    """A weight from the "k" neuron to the wrong answer's channel (post_act 0 -> resid_delta 2) joins two
    nodes the task needs: node pruning keeps it, edge pruning removes it and keeps the four task weights."""
    from sparsecircuits.circuits.edges import find_edge_circuit
    from sparsecircuits.circuits.graph import circuit_edges

    _, _, splits, zeros = wired
    model = wired_model()
    with torch.no_grad():
        model.blocks[0].proj.weight[2, 0] = 0.5
    settings = PruneSettings(target_loss=0.15, steps=150, calibration_steps=4, ablation="zero")
    found = find_circuit(model, splits, zeros, settings, show_progress=False)
    assert node_set(found["keep"]) == TASK_NODES
    weight = lambda edges: {(e["src"]["site"], e["src"]["index"], e["dst"]["site"], e["dst"]["index"])
                            for e in edges if e["kind"] == "weight"}
    extra = ("0.mlp.post_act", 0, "0.mlp.resid_delta", 2)
    assert extra in weight(circuit_edges(model, found["keep"]))
    edge = find_edge_circuit(model, splits, zeros, found["keep"], settings, show_progress=False)
    assert edge["reached"] and edge["loss_choose"] <= settings.goal and edge["loss"] <= settings.target_loss
    assert weight(edge["edges"]) == {("0.mlp.act_in", 0, "0.mlp.post_act", 0), ("0.mlp.act_in", 0, "0.mlp.post_act", 1),
                                     ("0.mlp.post_act", 0, "0.mlp.resid_delta", 1),
                                     ("0.mlp.post_act", 1, "0.mlp.resid_delta", 2)}, edge["edges"]
    assert node_set(edge["keep"]) == TASK_NODES
    assert torch.equal(model.blocks[0].proj.weight[2, 0], torch.tensor(0.5))  # the weights are restored


def test_nodes_on_no_path_from_input_to_answer_are_removed_with_their_edges(wired):
    from sparsecircuits.circuits.edges import EdgeSet, on_paths

    model = wired_model()
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    for site, i in TASK_NODES | {("0.mlp.act_in", 3), ("0.mlp.post_act", 2)}:
        keep[site][i] = True
    edge_set = EdgeSet(model, keep)
    extra = {("0.mlp.act_in", 3), ("0.mlp.post_act", 2)}
    assert node_set(on_paths(model, keep, edge_set, edge_set.candidates)) == TASK_NODES | extra
    kept = {name: c.clone() for name, c in edge_set.candidates.items()}
    kept["blocks.0.proj"][1, 2] = False  # the length neuron's only kept output removed: it reaches no answer
    assert node_set(on_paths(model, keep, edge_set, kept)) == TASK_NODES  # and the input that fed only it goes too


def test_a_two_level_step_splits_values_where_the_squared_error_is_least():
    from sparsecircuits.circuits.cleanup import two_level_step

    threshold, low, high = two_level_step(torch.tensor([0.0, 0.0, 1.0, 1.0, 5.0, 5.0]))
    assert 1.0 < threshold < 5.0 and abs(low - 0.5) < 1e-9 and abs(high - 5.0) < 1e-9
    assert two_level_step(torch.tensor([2.0, 2.0]))[1:] == (2.0, 2.0)


def test_cleanup_finds_the_constant_query_the_binary_nodes_and_the_node_the_circuit_does_without(wired):
    from sparsecircuits.circuits.cleanup import DROP_THRESHOLD, cleanup_checks, format_cleanup

    _, _, splits, zeros = wired
    model = wired_model()
    with torch.no_grad():  # head 0 of the one layer: a query fixed by its bias, a key that reads the task channel
        model.blocks[0].q_proj.bias[0] = 1.0
        model.blocks[0].k_proj.weight[0, 0] = 1.0
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    for site, i in TASK_NODES | {("0.attn.q", 0), ("0.attn.k", 0), ("0.mlp.act_in", 3)}:
        keep[site][i] = True
    result = cleanup_checks(model, splits, zeros, keep, show_progress=False)
    assert [(h["layer"], h["head"]) for h in result["heads"]] == [(0, 0)]
    assert abs(result["heads"][0]["cost_constant_q"]) < 1e-6  # constant by construction
    costs = {(n["site"], n["index"]): n for n in result["nodes"]}
    assert costs[("0.mlp.act_in", 3)]["cost_dropped"] < DROP_THRESHOLD  # read by no kept neuron
    assert all(costs[node]["cost_dropped"] > DROP_THRESHOLD for node in TASK_NODES)
    assert ("0.mlp.act_in", 3) in {(n["site"], n["index"]) for n in result["droppable"]}
    # the task channel takes three values (-k, 0 for fillers, +k): a step costs little, dropping it much
    assert abs(costs[("0.mlp.act_in", 0)]["cost_binarised"]) < 0.01 < costs[("0.mlp.act_in", 0)]["cost_dropped"]
    assert "query constant +0.00000" in format_cleanup(result)
