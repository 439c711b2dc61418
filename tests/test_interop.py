"""The authors' released format: import against an independent forward, export, the data-gym
tokenizer against tiktoken, and every bad input refused by name with nothing written."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from sparsecircuits.cli import main
from sparsecircuits.config import load_config
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.interop.openai import export_openai, import_openai, read_openai_model
from sparsecircuits.io import load_tensors
from sparsecircuits.model.gpt import SparseGPT
from sparsecircuits.train.trainer import train

from .conftest import TINY_OVERRIDES

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
make_fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_fixtures)


@pytest.mark.parametrize("name", sorted(make_fixtures.CONFIGS))
def test_imported_model_matches_the_independent_forward_at_every_site(name):
    folder = FIXTURES / name
    assert all(p.stat().st_size < 200_000 for p in folder.iterdir())
    config, state, _ = read_openai_model(folder)
    model = SparseGPT(config)
    model.load_state_dict(state)
    expected = load_tensors(folder / "expected.safetensors")
    with torch.no_grad():
        logits, cache = model.run_with_cache(expected.pop("tokens"))
    torch.testing.assert_close(logits, expected.pop("logits"), rtol=1e-4, atol=1e-5)
    sites = {key.removeprefix("site:"): value for key, value in expected.items()}
    assert set(sites) == set(cache)  # every site of ours is one of theirs, and the other way round
    for site, value in sites.items():
        torch.testing.assert_close(cache[site], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{site}: {m}")


def test_option_table_of_the_fixtures():
    configs = {name: read_openai_model(FIXTURES / name)[0] for name in make_fixtures.CONFIGS}
    assert configs["layer_norm_with_bias"].norm == "layer" and configs["layer_norm_with_bias"].norm_bias
    assert configs["rms_sink_bigram_all_sites"].norm_eps == torch.finfo(torch.float32).eps
    relu = configs["relu_mlp_and_residual"]
    assert relu.mlp_activation == relu.residual_activation == "relu"
    assert relu.site_keep_fraction == {"attn.act_in": "off", "attn.v": "off", "attn.resid_delta": "off",
                                       "mlp.act_in": "off", "mlp.resid_delta": "off"}
    tied = configs["tied_without_biases"]
    assert tied.tied_embedding and not tied.linear_bias and tied.keep_fraction == 1
    old = configs["old_keys_layer_norm_no_bias"]
    assert old.d_mlp == 64 and not old.attention_sinks and old.heads * old.d_head == 16 and not old.norm_bias
    floor = SparseGPT(configs["floor_keeps_zero"])
    assert floor.blocks[0].keep["0.attn.q"] == 0 and floor.blocks[0].keep["0.mlp.post_act"] == 3
    concat = SparseGPT(configs["concat_positions"])
    assert configs["concat_positions"].positional == "concat" and concat.node_sites["0.attn.act_in"] == 32 + 8
    sinusoidal = configs["sinusoidal_positions_residual_topk"]
    assert sinusoidal.positional == "concat_sinusoidal" and sinusoidal.d_pos == 6
    assert sinusoidal.residual_keep_fraction == {"after_attn": 0.5, "after_mlp": 0.5}


def _released_folder(tmp_path: Path, vocab_size: int, **changes) -> Path:
    c = {**make_fixtures.BASE, "vocab_size": vocab_size, "block_size": 32, "afrac": 0.25,
         "afrac_loctypes": make_fixtures.ALL_SITES, "sink": True, **changes}
    folder = tmp_path / "released"
    folder.mkdir()
    (folder / "beeg_config.json").write_text(json.dumps(c))
    torch.save(make_fixtures.released_state(c, torch.Generator().manual_seed(0)), folder / "final_model.pt")
    return folder


def test_import_cli_makes_a_run_that_every_command_accepts(data_dir, tmp_path, capsys):
    from tokenizers import Tokenizer

    folder = _released_folder(tmp_path, Tokenizer.from_file(str(data_dir / "tokenizer.json")).get_vocab_size())
    run = tmp_path / "run"
    main(["import-openai", str(folder), "--out", str(run), "--tokenizer", str(data_dir / "tokenizer.json"),
          "--data", str(data_dir)])
    assert "wrote" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["imported_from"]["format"] == "openai/circuit_sparsity" and info["data"]
    model = SparseGPT.from_pretrained(run)
    assert model.config.keep_rounding == "floor" and model.config.attention_sinks
    main(["eval", str(run), "--json"])
    assert "val_loss" in json.loads(capsys.readouterr().out)
    main(["sample", str(run), "--max-new-tokens", "4"])
    main(["explain", str(run), "--node", "1.mlp.post_act:3", "--tokens", "512", "--top", "2", "--no-color"])
    assert "1.mlp.post_act:3" in capsys.readouterr().out
    out = export_openai(run, tmp_path / "exported")
    again = read_openai_model(out)[1]
    assert torch.equal(again["wte.weight"], model.wte.weight) and torch.equal(again["blocks.1.k_proj.bias"],
                                                                             model.blocks[1].k_proj.bias)


def test_export_then_import_is_the_identity_on_a_trained_run(data_dir, tmp_path):
    eps = torch.finfo(torch.float32).eps
    run = train(load_config("tiny", TINY_OVERRIDES + [f"model.norm_eps={eps!r}"]), data_dir, tmp_path / "run",
                show_progress=False)
    exported = export_openai(run, tmp_path / "released")
    assert json.loads((exported / "beeg_config.json").read_text())["afrac"] == 0.25
    back = import_openai(exported, tmp_path / "back", tokenizer_path=exported / "tokenizer.json")
    original, imported = SparseGPT.from_pretrained(run), SparseGPT.from_pretrained(back)
    tokens = torch.randint(0, original.config.vocab_size, (3, 32))
    with torch.no_grad():
        assert torch.equal(original(tokens), imported(tokens))  # bit for bit


def test_export_refuses_what_their_code_cannot_compute(trained_run, data_dir, tmp_path):
    with pytest.raises(SparseCircuitsError, match="model.norm_eps = 1e-06 .* --allow-eps-change"):
        export_openai(trained_run, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    export_openai(trained_run, tmp_path / "b", allow_eps_change=True)
    mixed = train(load_config("tiny", TINY_OVERRIDES + ["model.site_keep_fraction.mlp.post_act=0.5", "train.steps=2"]),
                  data_dir, tmp_path / "mixed", show_progress=False)
    with pytest.raises(SparseCircuitsError, match="site_keep_fraction .* one fraction"):
        export_openai(mixed, tmp_path / "c", allow_eps_change=True)


@pytest.mark.parametrize("change, message", [
    ({"d_pos_emb": -1}, "d_pos_emb = -1 must be a positive integer"),
    ({"afrac_loctypes": "attn_in,resid_post_everything"}, "'resid_post_everything' is not a location"),
    ({"some_new_key": 1}, "some_new_key = 1 is not a GPTConfig field"),
    ({"activation_type": "swiglu"}, "activation_type = 'swiglu' is not one of gelu, relu"),
    ({"afrac": 1.5}, "afrac = 1.5 must be a fraction"),
    ({"n_layer": 0}, "n_layer = 0 must be a positive integer"),
])
def test_import_refuses_config_keys_by_name(tmp_path, change, message):
    folder = _released_folder(tmp_path, 40)
    beeg = json.loads((folder / "beeg_config.json").read_text())
    (folder / "beeg_config.json").write_text(json.dumps({**beeg, **change}))
    with pytest.raises(SparseCircuitsError, match=message):
        import_openai(folder, tmp_path / "run")
    assert not (tmp_path / "run").exists()


class NotATensor:
    pass


def test_import_refuses_bad_weights_and_writes_nothing(tmp_path, capsys):
    folder = _released_folder(tmp_path, 40)
    state = torch.load(folder / "final_model.pt", weights_only=True)
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.bias"},
                    "missing tensor transformer.h.1.mlp.c_fc.bias"),
        "unexpected": ({**state, "transformer.h.9.attn.c_attn.weight": torch.zeros(1)},
                       "unexpected tensor transformer.h.9.attn.c_attn.weight"),
        "object": ({**state, "payload": NotATensor()}, "holds Python objects besides tensors"),
    }
    for name, (bad, message) in cases.items():
        torch.save(bad, folder / "final_model.pt")
        with pytest.raises(SparseCircuitsError, match=message):
            import_openai(folder, tmp_path / name, tokenizer_path=folder)
        assert not (tmp_path / name).exists(), name
    (folder / "final_model.pt").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["import-openai", str(folder), "--out", str(tmp_path / "none")])
    assert exit_info.value.code == 2 and "final_model.pt is missing" in capsys.readouterr().err
    torch.save(state, folder / "final_model.pt")
    with pytest.raises(SparseCircuitsError, match="holds no tokenizer.*--tokenizer"):
        import_openai(folder, tmp_path / "none")


SAMPLE_TEXT = [
    "def f(x):\r\n    return x  \r\n",
    "name = 'caf\u00e9' + \"na\u00efve \u65e5\u672c\"  # \u00fcber\n",
    "n = 1234567890123 + 0x1F\n\n\n",
    "data = [[1, 2], [3]]\nprint(data[0][1]])\n",
    "    \n\t\tif a == b:   \n        pass\n",
    "x=\"\"\"doc\"\"\"\n# trailing   ",
]


def _datagym_folder(tmp_path: Path) -> Path:
    """A small vocab.bpe + encoder.json trained on Python text by HF tokenizers, in GPT-2's data-gym layout."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

    from sparsecircuits.interop.datagym import write_datagym_files

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    source = [Path(shutil.__file__).read_text(), Path(json.__file__).read_text()] + SAMPLE_TEXT
    tokenizer.train_from_iterator(source, trainer)
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return write_datagym_files(tokenizer, tmp_path / "datagym")


def test_datagym_tokenizer_matches_tiktoken(tmp_path, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from sparsecircuits.interop.datagym import TINYPYTHON_PATTERN, tokenizer_from_datagym

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    folder = _datagym_folder(tmp_path)
    ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    reference = tiktoken.Encoding("test", pat_str=TINYPYTHON_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": len(ranks)})
    ours = tokenizer_from_datagym(folder)
    texts = SAMPLE_TEXT + [Path(shutil.__file__).read_text()[:20000], "]]\n", "a  ", "1" * 10, "\r\n\r\n  x"]
    for text in texts:
        assert ours.encode(text).ids == reference.encode_ordinary(text), repr(text[:40])
        assert ours.decode(ours.encode(text).ids) == text
    assert ours.token_to_id("<|endoftext|>") == len(ranks)


def test_an_exported_and_reimported_model_prunes_validates_and_views_with_data(task_run, tmp_path, capsys):
    run, task = task_run
    data = json.loads((run / "run.json").read_text())["data"]
    released = export_openai(run, tmp_path / "released", allow_eps_change=True)
    imported = import_openai(released, tmp_path / "imported")  # the tokenizer.json export wrote beside the weights
    with pytest.raises(SystemExit):
        main(["prune", str(imported), "--task", str(task), "--out", str(tmp_path / "no-data"), "--steps", "20",
              "--target-loss", "0.6"])  # a target the model reaches: the node means are what is missing
    assert "pass --data DATA_DIR" in capsys.readouterr().err and not (tmp_path / "no-data").exists()
    circuit = tmp_path / "circuit"
    main(["prune", str(imported), "--task", str(task), "--out", str(circuit), "--steps", "40", "--target-loss", "0.6",
          "--data", data])
    assert json.loads((circuit / "circuit.json").read_text())["means_data"] == str(Path(data).resolve())
    try:
        main(["validate", str(circuit), "--no-control"])
    except SystemExit as verdict:
        assert verdict.code == 1  # not evidence (exit 1) is a verdict; bad input (exit 2) would not be
    assert (circuit / "validation.json").is_file()
    main(["view", str(circuit)])
    assert (circuit / "circuit.html").is_file()


def test_a_published_circuit_imports_with_the_same_nodes_and_edges(circuit_dir, task_run, tmp_path, capsys):
    run, task = task_run
    original = json.loads((circuit_dir / "circuit.json").read_text())
    circuit_data = {}
    for node in original["nodes"]:
        circuit_data.setdefault(node["site"], []).append(node["index"])
    viz = {"circuit_data": {site: torch.tensor(indices) for site, indices in circuit_data.items()} | {"prune_config": {"k": 1}},
           "importances": {"loss": torch.tensor(0.4), "interv_loss": 0.5}}
    torch.save(viz, tmp_path / "viz_data.pt")
    out = tmp_path / "imported"
    main(["import-openai-circuit", str(tmp_path / "viz_data.pt"), "--run", str(run), "--task", str(task),
          "--out", str(out), "--target-loss", str(original["target_loss"])])
    assert "nodes" in capsys.readouterr().out
    imported = json.loads((out / "circuit.json").read_text())
    assert imported["nodes"] == original["nodes"] and imported["edges"] == original["edges"]
    assert imported["imported_from"]["authors_losses_on_their_records"] == {"loss_full_model": pytest.approx(0.2),
                                                                            "loss_circuit": 0.25}
    assert imported["metrics"]["loss_full_model"] == original["metrics"]["loss_full_model"]
    main(["view", str(out)])
    assert (out / "circuit.html").is_file()
    torch.save({"circuit_data": {"0.attn.y": [1]}}, tmp_path / "other.pt")
    with pytest.raises(SparseCircuitsError, match="names site '0.attn.y'"):
        from sparsecircuits.interop.openai import import_openai_circuit
        import_openai_circuit(tmp_path / "other.pt", run, str(task), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


class _Store:
    """A loopback HTTP server serving a folder like the authors' store, honouring Range requests; it can
    cut one file short once (a dropped connection) and counts the requests per path."""

    def __init__(self, root: Path):
        import http.server
        import threading

        store = self
        self.root, self.cut_once, self.requests = root, set(), {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = store.root / self.path.lstrip("/")
                store.requests.setdefault(self.path, []).append(self.headers.get("Range"))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path in store.cut_once:  # announce the whole file, send half, hang up
                    store.cut_once.discard(self.path)
                    body = body[: len(body) // 2]
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_released_model_by_name_downloads_resumes_and_refuses_a_damaged_cache(tmp_path, monkeypatch, capsys):
    from tokenizers import Tokenizer

    from sparsecircuits.interop.datagym import tokenizer_from_datagym

    tokenizer_folder = _datagym_folder(tmp_path)
    vocab = tokenizer_from_datagym(tokenizer_folder).get_vocab_size()
    root = tmp_path / "store"
    shutil.copytree(_released_folder(tmp_path, vocab), root / "models" / "csp_tiny")
    (root / "tinypython").mkdir()
    for name in ("vocab.bpe", "encoder.json"):
        shutil.copy(tokenizer_folder / name, root / "tinypython" / name)
    store = _Store(root)
    monkeypatch.setenv("SPARSECIRCUITS_OPENAI_STORE", store.url)
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    weights = "/models/csp_tiny/final_model.pt"
    store.cut_once.add(weights)
    with pytest.raises(SystemExit):  # the connection drops half way: nothing written, the part kept
        main(["import-openai", "csp_tiny", "--out", "run"])
    assert "run the command again to resume" in capsys.readouterr().err and not (tmp_path / "run").exists()
    main(["import-openai", "csp_tiny", "--out", "run"])
    assert store.requests[weights][-1] is not None and store.requests[weights][-1] != "bytes=0-"  # resumed
    info = json.loads((tmp_path / "run" / "run.json").read_text())["imported_from"]["downloaded"]
    cached = tmp_path / "cache" / "openai" / "models" / "csp_tiny" / "final_model.pt"
    assert info["name"] == "csp_tiny" and cached.read_bytes() == (root / weights.lstrip("/")).read_bytes()
    assert info["files_sha256"]["models/csp_tiny/final_model.pt"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json")).get_vocab_size() == vocab

    main(["import-openai", "csp_tiny", "--out", "again", "--offline"])  # the cache alone
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(SystemExit):
        main(["import-openai", "csp_tiny", "--out", "third"])
    assert "is damaged" in capsys.readouterr().err and not (tmp_path / "third").exists()
    with pytest.raises(SystemExit):
        main(["import-openai", "csp_nope", "--out", "fourth"])
    assert "does not exist (HTTP 404)" in capsys.readouterr().err
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SystemExit):
        main(["import-openai", "csp_tiny", "--out", "fifth", "--offline"])
    assert "--offline forbids downloading" in capsys.readouterr().err
