import pytest

from dplbench.config import build_config, load_config_file, parse_overrides, validate_method_options
from dplbench.errors import ConfigError, UnknownNameError


def test_parse_overrides_types_values():
    pairs = dict(parse_overrides(["method.n_ctx=8", "seeds=[1,2,3]", "run.device=cuda", "train.lr=1e-3",
                                  "backbone.pretrained=null", "run.force=true", "method.iwtd.p_max=0.4"]))
    assert pairs == {"method.n_ctx": 8, "seeds": [1, 2, 3], "run.device": "cuda", "train.lr": 1e-3,
                     "backbone.pretrained": None, "run.force": True, "method.iwtd.p_max": 0.4}


@pytest.mark.parametrize("token", ["novalue", "=3", " a=1"])
def test_parse_overrides_rejects_malformed_tokens(token):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([token])


def test_defaults_come_from_the_protocol():
    cfg = build_config([])
    assert cfg.protocol == "base2novel" and cfg.suite == "toy"
    assert cfg.backbone.name == "toy"
    assert list(cfg.seeds) == [1, 2, 3] and list(cfg.shots) == [16]
    assert cfg.methods and cfg.datasets
    assert all(d.startswith("toy") for d in cfg.datasets)


def test_epoch_scale_comes_from_the_suite_unless_given():
    assert build_config(["protocol=few_shot"]).train.epoch_scale == 0.25  # toy suites: a quarter of the epochs
    assert build_config(["protocol=few_shot", "suite=standard"]).train.epoch_scale is None
    assert build_config(["protocol=few_shot", "train.epoch_scale=1"]).train.epoch_scale == 1.0
    assert build_config([]).train.epoch_scale is None  # the default base2novel toy suite runs the full recipes


def test_overrides_and_shorthands():
    cfg = build_config(["method=coop", "seeds=[1]", "train.epochs=2", "run.device=cpu", "method.n_ctx=8"])
    assert list(cfg.methods) == ["coop"]
    assert list(cfg.seeds) == [1]
    assert cfg.train.epochs == 2 and cfg.run.device == "cpu"
    assert cfg.method.n_ctx == 8


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.01\nseeds: [2]\n")
    cfg = build_config(["train.epochs=4"], path)
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.01 and list(cfg.seeds) == [2]


def test_unknown_key_has_did_you_mean_and_choices():
    with pytest.raises(ConfigError) as info:
        build_config(["train.epoch=3"])
    text = str(info.value)
    assert "did you mean 'epochs'" in text and "Valid keys:" in text and "\n" not in text


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="did you mean 'protocol'"):
        build_config(["protocl=base2novel"])


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="train.epochs"):
        build_config(["train.epochs=abc"])


@pytest.mark.parametrize("override,kind,hint", [
    ("method=copo", "method", "coop"),
    ("protocol=base2nvel", "protocol", "base2novel"),
    ("datasets=[toy_shapez]", "dataset", "toy_shapes"),
])
def test_unknown_names_list_valid_choices(override, kind, hint):
    with pytest.raises(UnknownNameError) as info:
        build_config([override])
    text = str(info.value)
    assert f"unknown {kind}" in text and f"did you mean {hint!r}" in text and "Valid choices:" in text


def test_unknown_backbone_name():
    with pytest.raises(ConfigError, match="unknown backbone 'ViT-B-61'.*did you mean"):
        build_config(["backbone=ViT-B-61"])


def test_unknown_method_option_is_rejected_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'method.n_ctx'"):
        build_config(["method=coop", "method.n_ctxx=8"])


def test_method_option_type_is_checked():
    with pytest.raises(ConfigError, match="method.n_ctx"):
        validate_method_options(["coop"], {"n_ctx": "many"})


def test_bad_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad)
