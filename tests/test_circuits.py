
import pytest
import torch

from sparsecircuits.circuits.graph import circuit_edges, edge_counts, weight_edge_count
from sparsecircuits.circuits.masks import NodeMask, ablation_hooks, keep_top_n
from sparsecircuits.circuits.find import fit_logit_scale, smallest_passing
from sparsecircuits.config import ModelConfig
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.model.sparsity import apply_weight_topk, sparse_parameters
from sparsecircuits.config import SparsityConfig
from sparsecircuits.tasks.records import read_jsonl_records, tokenize_records, task_records


def sparse_model() -> SparseGPT:
    model = SparseGPT(ModelConfig(vocab_size=64, d_model=32, n_layer=2, d_head=16, ctx_len=16))
    with torch.no_grad():
        for p in model.parameters():  # give biases and norms real values so no path is trivially zero
            p.add_(0.05 * torch.randn_like(p))
    apply_weight_topk(sparse_parameters(model, SparsityConfig()), 0.2, 2)
    return model.eval()


def random_means(model):
    return {site: torch.randn(width) for site, width in model.node_sites.items()}


def test_every_mask_on_equals_the_plain_model():
    model = sparse_model()
    tokens = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        plain = model(tokens)
    keep = {site: torch.ones(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    with model.hooks(ablation_hooks(model, keep, random_means(model))), torch.no_grad():
        masked = model(tokens)
    assert torch.equal(masked, plain)
    mask = NodeMask(model.node_sites, init_mean=0.5, init_std=0.01)  # every τ > 0: every gate is exactly 1
    means = random_means(model)
    with model.hooks({s: (lambda x, site: x * mask.gate(site) + means[site] * (1 - mask.gate(site))) for s in model.node_sites}):
        with torch.no_grad():
            assert torch.equal(model(tokens), plain)
        # With gradients flowing into τ, attention may take another kernel: equal to float tolerance.
        torch.testing.assert_close(model(tokens), plain)


def test_every_node_ablated_leaves_only_the_direct_path():
    """With all node sites ablated the attention and MLPs contribute constants: a position's logits
    depend on its own token only (through the embedding-unembedding path and the bigram table)."""
    model = sparse_model()
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in model.node_sites.items()}
    a = torch.randint(0, 64, (2, 16))
    b = torch.randint(0, 64, (2, 16))
    b[:, -1] = a[:, -1]
    with model.hooks(ablation_hooks(model, keep, random_means(model))):
        la, lb = model(a)[:, -1], model(b)[:, -1]
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-6)
    assert not torch.allclose(model(a)[:, -1], model(b)[:, -1])


def brute_force_edges(model, keep):
    count = 0
    live = lambda w, i, j: w[i, j] != 0
    for layer, block in enumerate(model.blocks):
        k = lambda kind: keep[f"{layer}.{kind}"]
        for kind, proj in (("attn.q", block.q_proj), ("attn.k", block.k_proj), ("attn.v", block.v_proj)):
            for i in range(len(k(kind))):
                for j in range(len(k("attn.act_in"))):
                    count += bool(k(kind)[i] and k("attn.act_in")[j] and live(proj.weight, i, j))
        count += sum(bool(k("attn.q")[j] and k("attn.k")[j]) for j in range(len(k("attn.q"))))
        for d in range(len(k("attn.resid_delta"))):
            for j in range(len(k("attn.v"))):
                count += bool(k("attn.resid_delta")[d] and k("attn.v")[j] and live(block.o_proj.weight, d, j))
        for n in range(len(k("mlp.post_act"))):
            for c in range(len(k("mlp.act_in"))):
                count += bool(k("mlp.post_act")[n] and k("mlp.act_in")[c] and live(block.fc.weight, n, c))
            for d in range(len(k("mlp.resid_delta"))):
                count += bool(k("mlp.post_act")[n] and k("mlp.resid_delta")[d] and live(block.proj.weight, d, n))
    # Residual edges: every write to every later read on the same channel, embedding reads, unembedding writes.
    order = [f"{l}.{s}" for l in range(len(model.blocks)) for s in ("attn.act_in", "attn.resid_delta", "mlp.act_in", "mlp.resid_delta")]
    for c in range(model.config.d_model):
        embed = bool((model.wte.weight[:, c] != 0).any())
        unembed = bool((model.lm_head.weight[:, c] != 0).any())
        for i, src in enumerate(order):
            if src.endswith("act_in"):
                count += bool(embed and keep[src][c])
                continue
            count += bool(unembed and keep[src][c])
            for dst in order[i + 1:]:
                count += bool(dst.endswith("act_in") and keep[src][c] and keep[dst][c])
    return count


def test_edge_count_matches_a_brute_force_count():
    model = sparse_model()
    generator = torch.Generator().manual_seed(1)
    keep = {site: torch.rand(width, generator=generator) < 0.4 for site, width in model.node_sites.items()}
    edges = circuit_edges(model, keep)
    assert len(edges) == brute_force_edges(model, keep) > 0
    assert all(e["kind"] != "weight" or e["weight"] != 0 for e in edges)


def test_the_headline_edge_count_is_weight_edges_the_other_kinds_reported_apart():
    """For one node set, residual, q-k and embedding/unembedding links are the same in a sparse model and
    a dense one; only weight edges tell them apart, and only they are the circuit's size."""
    sparse = sparse_model()
    dense = SparseGPT(sparse.config).eval()
    dense.load_state_dict(sparse.state_dict())
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(1e-3 * (p == 0))  # every zero weight made live
    keep = {site: torch.zeros(width, dtype=torch.bool) for site, width in sparse.node_sites.items()}
    for site in ("0.attn.act_in", "0.attn.q", "0.attn.k", "0.attn.v", "0.attn.resid_delta", "1.mlp.act_in"):
        keep[site][:4] = True
    counts = {name: edge_counts(circuit_edges(model, keep)) for name, model in (("sparse", sparse), ("dense", dense))}
    for kind in ("residual", "qk", "embed", "unembed"):
        assert counts["sparse"][kind] == counts["dense"][kind]
    assert counts["sparse"]["qk"] == 4 and counts["sparse"]["residual"] == 4 and counts["sparse"]["embed"] == 8
    # dense: 4x4 from act_in to each of q, k, v and 4x4 from v to resid_delta
    assert counts["dense"]["weight"] == 64 > counts["sparse"]["weight"]
    edges = circuit_edges(sparse, keep)
    assert weight_edge_count(edges) == counts["sparse"]["weight"] == sum(e["kind"] == "weight" for e in edges)


def test_a_circuit_written_before_edge_kinds_counted_apart_reads_with_weight_edges_only(tmp_path):
    import json

    from sparsecircuits.circuits.circuit import Circuit

    src = {"site": "0.attn.act_in", "index": 0}
    edges = [{"src": src, "dst": {"site": "0.attn.q", "index": 1}, "weight": 0.5, "kind": "weight"},
             {"src": {"site": "0.attn.q", "index": 1}, "dst": {"site": "0.attn.k", "index": 1}, "weight": 1.0, "kind": "qk"},
             {"src": {"site": "embed", "index": 0}, "dst": src, "weight": 1.0, "kind": "embed"}]
    metrics = {"n_nodes": 3, "n_edges": 3, "loss_full_model": 0.1, "loss_circuit": 0.1, "loss_circuit_ablated": 0.6,
               "loss_empty_circuit": 0.69, "loss_random_same_size": 0.6}
    record = {"format": 1, "task": "t", "task_source": "t", "model": {"run_dir": "r", "weights_sha256": "0" * 64},
              "target_loss": 0.15, "ablation": "mean", "nodes": [src], "edges": edges, "metrics": metrics, "settings": {}}
    (tmp_path / "circuit.json").write_text(json.dumps(record))
    circuit = Circuit.load(tmp_path)
    assert circuit.metrics["n_edges"] == 1 and circuit.metrics["n_edges_by_kind"]["qk"] == 1


def test_node_count_scan_finds_the_smallest_passing_count():
    losses = {0: 2.0, **{n: 1.0 / n for n in range(1, 101)}}  # falls as nodes are added: passes from n = 20
    calls = []

    def loss_at(n):
        calls.append(n)
        return losses[n]

    assert smallest_passing(loss_at, 0.05, 100) == 20
    assert len(set(calls)) <= 30
    assert smallest_passing(lambda n: losses[n], 3.0, 100) == 0  # the empty circuit is tried first
    assert smallest_passing(lambda n: losses[n], 0.001, 100) is None


def test_node_count_scan_does_not_assume_loss_falls_with_more_nodes():
    """A few nodes can fit nonsense labels better than the whole model: the scan must find them."""
    losses = {n: (0.1 if 8 <= n <= 12 else 0.7) for n in range(0, 1001)}
    assert smallest_passing(lambda n: losses[n], 0.15, 1000) == 8


def test_keep_top_n_and_logit_scale():
    scores = {"a": torch.tensor([0.5, -0.2, 0.9]), "b": torch.tensor([0.1, 0.7])}
    keep = keep_top_n(scores, 3)
    assert keep["a"].tolist() == [False, False, True] or keep["a"].tolist() == [True, False, True]
    assert sum(int(k.sum()) for k in keep.values()) == 3 and keep["b"][1]
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    assert fit_logit_scale(logits) > 1.0  # all correct: sharpening lowers the loss


def test_jsonl_loader_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "correct": "b", "incorrect": "c"}\n{"prompt": "a", "correct": "b"\n')
    with pytest.raises(SparseCircuitsError, match="t.jsonl:2: bad JSON"):
        read_jsonl_records(path)
    path.write_text('{"prompt": "a", "correct": "b", "incorrect": "c"}\n\n{"prompt": "a", "correct": "b"}\n')
    with pytest.raises(SparseCircuitsError, match="t.jsonl:3: missing or non-string field 'incorrect'"):
        read_jsonl_records(path)
    with pytest.raises(SparseCircuitsError, match="task file not found"):
        task_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(SparseCircuitsError, match="unknown task 'nonsense'.*tasks list"):
        task_records("nonsense")


def test_tokenisation_check_drops_and_counts(data_dir, capsys):
    from sparsecircuits.data.dataset import TokenData

    tokenizer = TokenData(data_dir).tokenizer()
    good = [{"prompt": f"for x{i % 7} in data", "correct": ":", "incorrect": ","} for i in range(40)]
    multi = [{"prompt": "x = 1", "correct": " supercalifragilistic", "incorrect": ":"}] * 5
    # A completion that merges with the prompt's last characters into one token breaks the check.
    pair = next(p for p in ("()", "):", "))", "],", "==", "+=", "\n\n") if len(tokenizer.encode(p).ids) == 1)
    merged = [{"prompt": "x = foo" + pair[0], "correct": pair[1], "incorrect": "#"}] * 3
    task = tokenize_records("mine", "train", good + multi + merged, tokenizer)
    assert len(task) == 40 and task.dropped == 8
    assert "dropped 8 of 48" in capsys.readouterr().err
    with pytest.raises(SparseCircuitsError, match="fewer than 32"):
        tokenize_records("mine", "train", good[:20] + multi, tokenizer)


def test_builtin_tasks_are_paired_and_large_enough():
    from sparsecircuits.tasks.builtin import BUILTIN_TASKS

    assert len(BUILTIN_TASKS) == 20
    for name in BUILTIN_TASKS:
        _, splits = task_records(name)
        train, choose, test = splits["train"], splits["choose"], splits["test"]
        assert len(train) >= 512 and len(choose) >= 128 and len(test) >= 128, name
        prompts = [{r["prompt"] for r in split} for split in (train, choose, test)]
        assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2]), name
        first, second = train[0], train[1]
        assert first["correct"] == second["incorrect"] and first["incorrect"] == second["correct"], name
