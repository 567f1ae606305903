"""Runtime vs unit config: a unit's hashed config holds every result-relevant setting, the Runtime exactly the
hash-excluded ones, and one Workspace owns the output folder's layout."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from omegaconf import OmegaConf

from dplbench.config import Config, TrainConfig, build_config
from dplbench.runtime import HASH_EXCLUDE, Runtime
from dplbench.units import expand_units, make_unit, unit_settings_keys
from dplbench.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_NAMES = {"runs", "cache", "knowledge", "checkpoints", "resume", "tables", "plots", "sweeps", "ray", "mlflow.db",
                "mlartifacts", "mlflow.lock", "leases", "sessions"}


def test_hash_exclude_is_derived_from_runtime_and_names_real_config_keys():
    keys = {f.metadata["key"] for f in dataclasses.fields(Runtime)}
    assert HASH_EXCLUDE == keys and len(keys) == len(dataclasses.fields(Runtime))
    defaults = OmegaConf.structured(Config)
    runtime = Runtime.from_config()
    for field in dataclasses.fields(Runtime):
        assert OmegaConf.select(defaults, field.metadata["key"]) == getattr(runtime, field.name)


def test_runtime_reads_the_resolved_config(tmp_path):
    cfg = build_config([f"run.output_dir={tmp_path}", "run.device=cpu", "data.num_workers=3", "train.lr=0.5"])
    runtime = Runtime.from_config(cfg)
    assert (runtime.device, runtime.num_workers, runtime.output_dir) == ("cpu", 3, str(tmp_path))
    assert runtime.workspace == Workspace.at(tmp_path)


def test_units_carry_no_runtime_key_and_runtime_keys_do_not_change_hashes(tmp_path):
    def hashes(*extra: str) -> list[str]:
        cfg = build_config(["protocol=base2novel", "seeds=[1]", f"run.output_dir={tmp_path}", *extra])
        units = expand_units(cfg)
        for unit in units:
            assert not HASH_EXCLUDE & unit_settings_keys(unit.config)
        return [u.config_hash for u in units]

    base = hashes()
    assert hashes("data.num_workers=2", "run.device=cpu", f"data.root={tmp_path}",
                  f"backbone.cache_dir={tmp_path}", f"run.output_dir={tmp_path / 'elsewhere'}") == base
    assert hashes("train.lr=0.01") != base


def test_unit_settings_are_typed_with_the_dataclass_defaults():
    unit = make_unit(protocol="p", kind="few_shot", recipe="few_shot", method="coop", dataset="d", seed=1, shots=2,
                     settings={"train": {"lr": 0.5}, "backbone": {"precision": "fp32"}})
    settings = unit.settings
    assert isinstance(settings.train, TrainConfig) and settings.train.lr == 0.5
    assert settings.train.eval_batch_size == TrainConfig().eval_batch_size
    assert settings.backbone.precision == "fp32" and settings.backbone.name == "toy"


def _output_path_joins(path: Path) -> list[tuple[int, str]]:
    """String literals naming an output-folder entry that are joined onto a path (``x / "runs"``)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)):
            continue
        if isinstance(node.left, ast.Call) and getattr(node.left.func, "attr", None) == "files":
            continue  # importlib.resources inside the installed package, not the output folder
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and side.value in OUTPUT_NAMES:
                hits.append((node.lineno, side.value))
    return hits


def test_only_the_workspace_spells_output_subfolders():
    offenders = {}
    for folder in ("dplbench", "methods"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name != "workspace.py" and (hits := _output_path_joins(path)):
                offenders[str(path.relative_to(ROOT))] = hits
    assert offenders == {}


def test_the_guard_finds_a_spelled_subfolder(tmp_path):
    planted = tmp_path / "module.py"
    planted.write_text('from pathlib import Path\nOUT = Path("x") / "checkpoints" / "resume"\n')
    assert sorted(name for _, name in _output_path_joins(planted)) == ["checkpoints", "resume"]


def test_every_layout_and_kind_has_its_record():
    from dplbench.catalog import PROTOCOLS
    from dplbench.execute import RUNNERS
    from dplbench.report.layouts import LAYOUTS, layout_spec
    from dplbench.vocabulary import Kind, Layout

    assert set(LAYOUTS) == set(Layout) and set(RUNNERS) == set(Kind)
    for name in PROTOCOLS.list():
        protocol = PROTOCOLS.get(name)
        spec = layout_spec(protocol.table["layout"])
        assert spec.headline in spec.metrics
        assert spec.transfer == (protocol.kind == "transfer")


def test_an_opt_in_feature_left_off_is_not_in_the_hash(tmp_path):
    """Adding the feature bank did not change the hash of any unit that does not use it."""
    def unit(*extra: str):
        cfg = build_config(["method=coop", "dataset=toy_shapes", "seeds=[1]", f"run.output_dir={tmp_path}", *extra])
        return expand_units(cfg)[0]

    off, seeded_off, on = unit(), unit("train.feature_bank.seed=3"), unit("train.feature_bank.views=4")
    assert "feature_bank" not in off.config["train"] and off.config_hash == seeded_off.config_hash
    assert on.config["train"]["feature_bank"]["views"] == 4 and on.config_hash != off.config_hash
    assert off.settings.train.feature_bank.views is None and on.settings.train.feature_bank.views == 4
