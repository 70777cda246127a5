"""TrainConfig: presets, overrides, and every config error caught before work starts."""

import pytest

from bertforge.config import ConfigError, load_config, save_config
from train.config import TrainConfig, load_train_config

DEMO = "train/configs/demo.toml"


def test_demo_config_folds_in_the_preset_and_overrides():
    config = load_train_config(DEMO, ["train.max_steps=7", "model.num_hidden_layers=3", "optim.name=lamb"])
    assert config.model.preset == "tiny" and config.model.hidden_size == 128 and config.model.init == "local"
    assert config.model.num_hidden_layers == 3  # override beats preset
    assert config.model.max_position_embeddings == 128  # run file beats preset
    assert config.train.max_steps == 7 and config.optim.name == "lamb"


@pytest.mark.parametrize("preset,layers,hidden", [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512),
                                                  ("medium", 8, 512), ("base", 12, 768), ("large", 24, 1024)])
def test_presets(preset, layers, hidden):
    config = load_train_config(None, [f"model.preset={preset}"])
    assert (config.model.num_hidden_layers, config.model.hidden_size) == (layers, hidden)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.bogus=1", "unknown key"),
        ("bogus.key=1", "unknown key"),
        ("train.max_steps='ten'", "expected an integer"),
        ("train.max_steps=0", "must be positive"),
        ("model.num_attention_heads=3", "not divisible"),
        ("data.seq_len=1024", "exceeds model.max_position_embeddings"),
        ("model.preset=gigantic", "unknown preset .gigantic. .no train/configs/models/gigantic.toml.; available: base, large"),
        ("optim.name=sgd", "is not one of"),
        ("data.mask_prob=1.5", "mask_prob"),
        ("train.compile=yes", "expected true/false"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(DEMO, [override])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "nope.toml")


def test_resolved_config_round_trips(tmp_path):
    config = load_train_config(DEMO, ["optim.betas=[0.8, 0.9]"])
    save_config(config, tmp_path / "config.toml")
    again = load_config(TrainConfig, tmp_path / "config.toml")
    assert again == config


def test_shipped_run_configs_load():
    for name, preset, family in (("demo", "tiny", "modernbert"), ("demo-bert", "tiny", "bert"), ("base", "base", "bert"),
                                 ("modernbert-base", "modernbert-base", "modernbert"), ("large", "large", "bert")):
        config = load_train_config(f"train/configs/{name}.toml")
        assert config.name == name and config.model.preset == preset and config.model.family == family
    # the GPU presets' vocabularies are multiples of 64 (tensor-core-sized embedding and decoder GEMMs)
    assert all(load_train_config(f"train/configs/{name}.toml").data.vocab_size % 64 == 0
               for name in ("base", "modernbert-base"))
