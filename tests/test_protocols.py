"""Protocol files, their validation, expansion into units, config hashing, sweep planning and the sweep objective.
No Ray, no MLflow, no training here."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from dplbench.catalog import DATASETS, METHODS, PROTOCOLS
from dplbench.config import build_config
from dplbench.errors import ConfigError, UnknownNameError
from dplbench.protocol import Protocol, discover_protocols, load_protocol_text
from dplbench.registry import Registry
from dplbench.units import expand_units

ELEVEN = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
          "sun397", "dtd", "eurosat", "ucf101"]

MINIMAL = """
kind: base2novel
recipe: base2novel
methods: [coop]
seeds: [1]
shots: [16]
suites: {toy: {datasets: [toy_shapes]}}
metric: {name: hm, mode: max}
table: {layout: base2novel}
"""


def cfg_for(*overrides: str, tmp_path=None):
    extra = [f"run.output_dir={tmp_path}"] if tmp_path is not None else []
    return build_config(list(overrides) + extra)


# -- files --------------------------------------------------------------------------------------------------------
def test_every_shipped_protocol_loads_and_names_registered_datasets():
    names = PROTOCOLS.list()
    assert {"base2novel", "cross_dataset", "domain_generalization", "few_shot", "long_tail_lift",
            "long_tail_b2n", "long_tail_b2n_candle"} <= set(names)
    for name in names:
        protocol = PROTOCOLS.get(name)
        assert isinstance(protocol, Protocol) and protocol.seeds == (1, 2, 3)
        assert set(protocol.suites) == {"toy", "standard"}
        for spec in protocol.suites.values():
            for dataset in [spec.get("source"), *spec.get("datasets", []), *spec.get("targets", [])]:
                if dataset is not None:
                    assert dataset in DATASETS, (name, dataset)
        assert all(DATASETS.get(d).kind == "toy" for d in
                   [protocol.suites["toy"].get("source"), *protocol.suites["toy"].get("datasets", []),
                    *protocol.suites["toy"].get("targets", [])] if d)


def test_standard_suites_follow_the_papers():
    assert PROTOCOLS.get("base2novel").suites["standard"]["datasets"] == ELEVEN
    assert PROTOCOLS.get("few_shot").suites["standard"]["datasets"] == ELEVEN
    assert PROTOCOLS.get("few_shot").shots == (1, 2, 4, 8, 16)
    xd = PROTOCOLS.get("cross_dataset").suites["standard"]
    assert xd["source"] == "imagenet" and xd["targets"] == ELEVEN[1:]
    dg = PROTOCOLS.get("domain_generalization").suites["standard"]
    assert dg == {"source": "imagenet", "targets": ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]}
    assert PROTOCOLS.get("long_tail_lift").suites["standard"]["datasets"] == ["imagenet_lt", "places_lt"]
    ltb2n = PROTOCOLS.get("long_tail_b2n")
    assert ltb2n.suites["standard"]["datasets"] == ELEVEN[1:] and ltb2n.shots == (None,)
    assert ltb2n.params["imbalance"] == {"ratio": 10, "rounding": "ceil", "cap": None}
    assert PROTOCOLS.get("base2novel").metric == {"name": "hm", "mode": "max"}
    assert PROTOCOLS.canonical("long_tail_b2n_drople") == "long_tail_b2n"
    # both transfer protocols use the cross-dataset recipe and the same source: one source model serves both
    assert PROTOCOLS.get("cross_dataset").recipe == PROTOCOLS.get("domain_generalization").recipe == "cross_dataset"
    for suite in ("toy", "standard"):
        assert (PROTOCOLS.get("cross_dataset").suites[suite]["source"]
                == PROTOCOLS.get("domain_generalization").suites[suite]["source"])


@pytest.mark.parametrize("edit, message", [
    ("kind: base2novel\nrecipes: x", "unknown key 'recipes'; did you mean 'recipe'"),
    ("kind: nope", "invalid value for 'kind': unknown kind 'nope'"),
    ("kind: transfr", "unknown kind 'transfr'; did you mean 'transfer'"),
    ("shots: [0]", r"shots=\[0\]: must be a list of integers > 0"),
    ("seeds: []", r"seeds=\[\]: must be non-empty"),
    ("seeds: [x]", r"invalid value for 'seeds\[0\]'"),
    ("table: {layout: pie}", "invalid value for 'table.layout': unknown layout 'pie'"),
    ("metric: {name: hm, mode: up}", "invalid value for 'metric.mode': unknown mode 'up'"),
    ("suites: {toy: {datasetz: [a]}}", "unknown key 'suites.toy.datasetz'; did you mean 'datasets'"),
    ("suites: {toy: {datasets: [a], epoch_scale: 0}}", r"suites.toy.epoch_scale=0.0: must be a finite number > 0"),
    ("table: {}", "missing required key 'table.layout'"),
    ("suites: {toy: {source: toy_shapes}}", "only transfer protocols"),
])
def test_invalid_protocols_raise_one_line_naming_the_file(edit, message):
    data = MINIMAL
    for line in edit.splitlines():
        key = line.split(":")[0]
        data = "\n".join(x for x in data.splitlines() if not x.startswith(key + ":")) + "\n" + line
    with pytest.raises(ConfigError, match=message) as err:
        load_protocol_text(data, "protocols/bad.yaml", "bad")
    assert str(err.value).startswith("protocols/bad.yaml: ") and "\n" not in str(err.value)


def test_transfer_suites_need_a_source_and_targets_and_bad_yaml_is_reported():
    text = MINIMAL.replace("kind: base2novel", "kind: transfer")
    with pytest.raises(ConfigError, match="suites.toy: a transfer protocol names one 'source' dataset"):
        load_protocol_text(text, "protocols/t.yaml", "t")
    with pytest.raises(ConfigError, match="protocols/x.yaml: not valid YAML"):
        load_protocol_text("kind: [unclosed", "protocols/x.yaml")
    protocol = load_protocol_text(MINIMAL, "protocols/mini.yaml", "mini")
    assert protocol.name == "mini" and protocol.shots == (16,) and not protocol.is_transfer


def test_discovery_fills_a_registry_with_descriptions_and_aliases():
    registry = Registry("protocol")
    discover_protocols(registry)
    assert registry.list() == PROTOCOLS.list()
    assert registry.canonical("b2n") == "base2novel" and "base-to-novel" in registry.describe("base2novel")


def test_default_methods_are_filtered_to_registered_ones_with_a_warning(caplog):
    protocol = PROTOCOLS.get("base2novel")
    fake = Protocol(**{**protocol.__dict__, "methods": ("coop", "not_a_method_yet")})
    with caplog.at_level(logging.WARNING):
        assert fake.registered_methods() == ["coop"]
    assert "not_a_method_yet" in caplog.text


# -- expansion ----------------------------------------------------------------------------------------------------
def test_base2novel_expansion_is_method_x_dataset_x_seed(tmp_path):
    cfg = cfg_for("method=[zsclip,coop]", tmp_path=tmp_path)
    units = expand_units(cfg)
    datasets = PROTOCOLS.get("base2novel").suites["toy"]["datasets"]
    assert len(units) == 2 * len(datasets) * 3
    assert {(u.method, u.dataset, u.seed) for u in units} == {
        (m, d, s) for m in ("zsclip", "coop") for d in datasets for s in (1, 2, 3)}
    assert all(u.shots == 16 and u.kind == "base2novel" and u.targets == () for u in units)
    assert len({u.config_hash for u in units}) == len(units)
    assert units[0].unit_dict() == {"protocol": "base2novel", "method": "zsclip", "dataset": datasets[0],
                                    "seed": 1, "shots": 16, "overrides": {}}


def test_few_shot_expands_shots_and_long_tail_uses_the_full_split(tmp_path):
    units = expand_units(cfg_for("protocol=few_shot", "method=coop", "dataset=toy_shapes", "seeds=[1]",
                                 tmp_path=tmp_path))
    assert [u.shots for u in units] == [1, 2, 4, 8, 16]
    lt = expand_units(cfg_for("protocol=long_tail_b2n", "method=coop", "seeds=[1]", tmp_path=tmp_path))
    assert {u.shots for u in lt} == {None} and all(u.name.split("-")[2] == "full" for u in lt)
    assert lt[0].config["protocol_params"]["imbalance"]["ratio"] == 10


@pytest.mark.parametrize("protocol", ["cross_dataset", "domain_generalization"])
def test_transfer_units_hold_every_target_and_are_never_split(protocol, tmp_path):
    units = expand_units(cfg_for(f"protocol={protocol}", "method=[zsclip,coop]", tmp_path=tmp_path))
    suite = PROTOCOLS.get(protocol).suites["toy"]
    assert len(units) == 2 * 3  # (method, source, seed): one unit each, all targets inside
    assert all(u.dataset == suite["source"] and list(u.targets) == suite["targets"] for u in units)
    assert all(u.recipe == "cross_dataset" and u.kind == "transfer" for u in units)
    assert units[0].config["targets"] == suite["targets"]


def test_config_hash_ignores_locations_and_ray_but_not_settings(tmp_path):
    base = expand_units(cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", tmp_path=tmp_path))[0]
    same = expand_units(cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", "data.num_workers=4",
                                "ray.cpus_per_trial=2", "tracking.enabled=false", "run.force=true",
                                f"run.output_dir={tmp_path / 'elsewhere'}"))[0]
    assert same.config_hash == base.config_hash and same.overrides == {}
    # the seed list of the run does not matter, only the unit's own seed (adding seeds keeps old results)
    more = expand_units(cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1,2]", tmp_path=tmp_path))[0]
    assert more.config_hash == base.config_hash
    epochs = expand_units(cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", "train.epochs=3",
                                  tmp_path=tmp_path))[0]
    assert epochs.config_hash != base.config_hash and epochs.overrides == {"train.epochs": 3}


def test_method_options_apply_only_to_the_methods_that_have_them(tmp_path):
    units = expand_units(cfg_for("method=[zsclip,coop]", "dataset=toy_shapes", "seeds=[1]", "method.n_ctx=8",
                                 tmp_path=tmp_path))
    by_method = {u.method: u for u in units}
    assert by_method["coop"].options == {"n_ctx": 8} and by_method["coop"].overrides == {"method.n_ctx": 8}
    assert by_method["zsclip"].options == {} and by_method["zsclip"].overrides == {}
    plain = expand_units(cfg_for("method=zsclip", "dataset=toy_shapes", "seeds=[1]", tmp_path=tmp_path))[0]
    assert plain.config_hash == by_method["zsclip"].config_hash


def test_unknown_explicit_names_fail_with_choices(tmp_path):
    cfg = cfg_for("method=coop", tmp_path=tmp_path)
    cfg.methods = ["copo"]
    with pytest.raises(UnknownNameError, match="did you mean 'coop'"):
        expand_units(cfg)
    cfg.methods = ["coop"]
    cfg.datasets = ["toy_shapez"]
    with pytest.raises(UnknownNameError, match="unknown dataset 'toy_shapez'"):
        expand_units(cfg)


def test_empty_method_list_falls_back_to_the_registered_defaults(tmp_path):
    cfg = cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", tmp_path=tmp_path)
    cfg.methods = []
    units = expand_units(cfg)
    expected = [m for m in PROTOCOLS.get("base2novel").methods if m in METHODS]
    assert [u.method for u in units] == expected


# -- sweeps -------------------------------------------------------------------------------------------------------
def test_shipped_drople_ablation_definition():
    from dplbench.orchestrate.sweep import load_sweep_definition, sweep_names

    assert "drople_ablation" in sweep_names()
    d = load_sweep_definition("drople_ablation")
    assert d.protocol == "base2novel" and d.methods == ["drople"] and d.search == "grid"
    assert set(d.params) == {"method.iwtd.mode", "method.dropout_rate", "method.res.weight"} and d.metric.name == "hm"
    # dropped tokens are zeroed (the default +-3 % noise leaves the rate inert); rate 0 and weight 0 are the baselines
    assert d.params["method.iwtd.mode"] == ["zero"]
    assert 0.0 in d.params["method.dropout_rate"] and 0.0 in d.params["method.res.weight"]
    with pytest.raises(UnknownNameError, match="unknown sweep"):
        load_sweep_definition("nope")


def test_plan_grid_from_overrides_and_validation(tmp_path):
    from dplbench.orchestrate.sweep import plan_sweep

    cfg = cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", "sweep.params.method.n_ctx=[2,4]",
                  "sweep.params.train.lr=[0.1,0.01]", tmp_path=tmp_path)
    plan = plan_sweep(cfg)
    assert plan.search == "grid" and plan.metric == "hm" and plan.mode == "max" and plan.num_samples == 4
    assert plan.grid == [{"method.n_ctx": 2, "train.lr": 0.1}, {"method.n_ctx": 2, "train.lr": 0.01},
                         {"method.n_ctx": 4, "train.lr": 0.1}, {"method.n_ctx": 4, "train.lr": 0.01}]
    for params, message in [({"run.device": ["cpu"]}, "cannot be swept"),
                            ({"train.nope": [1]}, "unknown config key 'train.nope'"),
                            ({"method.n_ctxx": [1]}, "unknown method option"),
                            ({"train.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, "a grid needs a list"),
                            ({"train.lr": [0.1, -0.1]}, r"sweep.params: train.lr=-0.1: must be a finite number > 0")]:
        bad = cfg.copy()
        bad.sweep.params = params
        with pytest.raises(ConfigError, match=message):
            plan_sweep(bad)
    optuna_cfg = cfg.copy()
    optuna_cfg.sweep.params = {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}
    OmegaConf.update(optuna_cfg, "sweep.search", "optuna")
    optuna_cfg.sweep.num_samples = 3
    plan = plan_sweep(optuna_cfg)
    assert plan.search == "optuna" and plan.num_samples == 3 and plan.grid == []


def test_sweep_values_land_in_the_units_overrides(tmp_path):
    from dplbench.orchestrate.sweep import apply_params

    cfg = cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", tmp_path=tmp_path)
    params = {"method.n_ctx": 2, "train.lr": 0.01}
    unit = expand_units(apply_params(cfg, params), extra_overrides=params)[0]
    assert unit.overrides == {"method.n_ctx": 2, "train.lr": 0.01}
    assert unit.options == {"n_ctx": 2} and unit.config["train"]["lr"] == 0.01
    assert OmegaConf.select(cfg, "train.lr") is None  # the original config is untouched


@pytest.mark.parametrize("key", ["data.num_workers", "data.root", "backbone.cache_dir", "run.device"])
def test_sweeping_a_runtime_key_is_refused(tmp_path, key):
    """A runtime key never reaches a unit's config: every trial would map to the same result files."""
    from dplbench.orchestrate.sweep import plan_sweep
    from dplbench.runtime import HASH_EXCLUDE

    assert key in HASH_EXCLUDE
    cfg = cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", tmp_path=tmp_path)
    cfg.sweep.params = {key: [0, 1] if key == "data.num_workers" else ["/a", "/b"]}
    with pytest.raises(ConfigError, match=f"'{key}' cannot be swept: it is a runtime setting"):
        plan_sweep(cfg)


def test_sweeping_a_result_key_gives_trials_with_different_hashes(tmp_path):
    from dplbench.orchestrate.sweep import apply_params, plan_sweep
    from dplbench.units import expand_units

    cfg = cfg_for("method=coop", "dataset=toy_shapes", "seeds=[1]", "sweep.params.train.lr=[0.1,0.01]",
                  tmp_path=tmp_path)
    hashes = [expand_units(apply_params(cfg, params))[0].config_hash for params in plan_sweep(cfg).grid]
    assert len(hashes) == 2 and len(set(hashes)) == 2


def test_objective_hm_is_the_hm_of_the_means():
    from dplbench.orchestrate.sweep import objective

    records = [{"status": "done", "metrics": {"base": 80.0, "novel": 60.0}},
               {"status": "done", "metrics": {"base": 90.0, "novel": 70.0}},
               {"status": "failed", "metrics": {}}]
    assert objective(records, "hm") == pytest.approx(2 * 85 * 65 / 150)
    transfer = [{"status": "done", "config": {"targets": ["a", "b"]},
                 "metrics": {"acc/src": 99.0, "acc/a": 50.0, "acc/b": 70.0}}]
    assert objective(transfer, "target_mean") == pytest.approx(60.0)
    assert objective(records, "acc") is None
