import pytest

from sparsecircuits.config import Config, builtin_config_names, load_config
from sparsecircuits.errors import SparseCircuitsError


def test_builtin_configs_load():
    assert {"tiny", "small", "paper-1x"} <= set(builtin_config_names())
    for name in builtin_config_names():
        assert isinstance(load_config(name), Config)
    paper = load_config("paper-1x")
    assert (paper.model.d_model, paper.model.n_layer, paper.model.d_head) == (256, 8, 16)


def test_overrides_are_typed():
    config = load_config("tiny", ["train.steps=7", "optim.lr=1e-3", "model.positional=learned",
                                  "model.site_keep_fraction.mlp.post_act=0.5", "sparsity.sparse_biases=false"])
    assert config.train.steps == 7 and config.optim.lr == 1e-3
    assert config.model.positional == "learned"
    assert config.model.keep_fraction_at("mlp.post_act") == 0.5
    assert config.model.keep_fraction_at("attn.q") == 0.25
    assert config.sparsity.sparse_biases is False


@pytest.mark.parametrize("override, message", [
    ("model.d_modle=3", "unknown config key 'model.d_modle'"),
    ("modle.d_model=3", "unknown config section 'modle'"),
    ("train.steps=many", "bad value for 'train.steps'"),
    ("train.steps=1.5", "bad value for 'train.steps'"),
    ("model.keep_fraction=0", "model.keep_fraction = 0.0 is out of range (0, 1]"),
    ("model.positional=rotary", "model.positional must be"),
    ("model.site_keep_fraction.mlp.pre_act=0.5", "unknown site kind"),
    ("trainsteps", "use section.key=value"),
])
def test_bad_config_values_name_the_key(override, message):
    with pytest.raises(SparseCircuitsError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config("tiny", [override])


def test_toml_file_extends_a_builtin(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "tiny"\n[model]\nd_model = 48\n')
    config = load_config(str(path))
    assert config.model.d_model == 48 and config.model.n_layer == load_config("tiny").model.n_layer
    path.write_text("[model]\nwidth = 3\n")
    with pytest.raises(SparseCircuitsError, match="unknown config key 'model.width'"):
        load_config(str(path))
    path.write_text("[model\n")
    with pytest.raises(SparseCircuitsError, match="not valid TOML"):
        load_config(str(path))


def test_unknown_config_name_lists_builtins():
    with pytest.raises(SparseCircuitsError, match="tiny"):
        load_config("huge")
