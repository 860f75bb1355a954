import pytest

from shrinkformer.config import config_from_dict, load_config, parse_override
from shrinkformer.errors import UsageError


def test_presets_match_the_documented_sizes():
    small, base = load_config("small").model, load_config("base").model
    assert (small.d_model, small.encoder_layers, small.decoder_layers, small.n_heads, small.d_ff) == (256, 3, 3, 4, 1024)
    assert (base.d_model, base.encoder_layers, base.n_heads, base.d_ff) == (512, 6, 8, 2048)


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: tiny\ntrain:\n  lr: 0.5\n  adam_betas: [0.8, 0.9]\nmodel:\n  pre_norm: false\n")
    cfg = load_config(None, f, ["train.lr=2e-4", "data.train_limit=null"])
    assert cfg.preset == "tiny" and cfg.train.lr == 2e-4 and cfg.train.adam_betas == (0.8, 0.9)
    assert cfg.model.pre_norm is False and cfg.data.train_limit is None


def test_unknown_keys_are_rejected_with_the_valid_ones(tmp_path):
    with pytest.raises(UsageError, match=r"unknown key train\.learning_rate \(valid: .*lr"):
        load_config("tiny", None, ["train.learning_rate=1"])
    f = tmp_path / "c.yaml"
    f.write_text("modle:\n  d_model: 3\n")
    with pytest.raises(UsageError, match="unknown key modle"):
        load_config(None, f)


def test_wrong_types_and_impossible_values():
    with pytest.raises(UsageError, match=r"train\.max_epochs: expected int, got 'many'"):
        load_config("tiny", None, ["train.max_epochs=many"])
    with pytest.raises(UsageError, match="d_model .* must be divisible by n_heads"):
        load_config("tiny", None, ["model.d_model=33"])
    with pytest.raises(UsageError, match="unknown preset 'huge'"):
        load_config("huge")
    with pytest.raises(UsageError, match="must look like"):
        parse_override("train.lr")


def test_round_trip_through_a_dict():
    cfg = load_config("small", None, ["train.lr=3e-4", "decode.beam_size=4"])
    assert config_from_dict(cfg.to_dict()) == cfg
