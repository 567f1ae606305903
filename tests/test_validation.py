"""Every bad value is refused by the command line before anything starts: exit status 2, one ``error:`` line on
stderr that names the key, nothing written to the output folder (no ``ray/``, no MLflow database, no result file).

The cases run in-process through :func:`dplbench.cli.main` with the runner and the sweep's Ray Tune stage replaced by
tripwires (a check that went missing fails the test at once instead of starting Ray); a handful also run as real
``python -m dplbench`` subprocesses to time the whole refusal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dplbench import catalog, cli
from dplbench.orchestrate import sweep as sweep_mod
from dplbench.registry import Registry
from test_protocols import MINIMAL

ROOT = Path(__file__).resolve().parents[1]
SUBPROCESS_SECONDS = 2.0

# (case id, argv after `dplbench` (output folder added for run/dry-run/sweep), text the one error line must hold)
CASES = [
    ("epochs", ["run", "train.epochs=0"], "train.epochs=0"),
    ("shots", ["run", "protocol=few_shot", "shots=[0,4]"], "shots="),
    ("dropout_rate", ["run", "method=drople", "method.dropout_rate=1.0"], "method.dropout_rate=1.0"),
    ("dropout_rate_negative", ["run", "method=drople", "method.dropout_rate=-0.1"], "method.dropout_rate"),
    ("drop_probability", ["run", "method=drople", "method.iwtd.p_max=1.5"], "method.iwtd.p_max"),
    ("drop_probability_min", ["run", "method=drople", "method.iwtd.p_min=-0.5"], "method.iwtd.p_min"),
    ("drop_probability_const", ["run", "method=drople", "method.iwtd.p_const=2"], "method.iwtd.p_const"),
    ("lr_nan", ["run", "train.lr=nan"], "train.lr=nan"),
    ("lr_inf", ["run", "train.lr=inf"], "train.lr=inf"),
    ("lr_zero", ["run", "train.lr=0"], "train.lr"),
    ("epoch_scale", ["run", "train.epoch_scale=0"], "train.epoch_scale"),
    ("eval_batch_size", ["run", "train.eval_batch_size=0"], "train.eval_batch_size"),
    ("batch_size", ["run", "train.batch_size=-4"], "train.batch_size"),
    ("precision", ["run", "backbone.precision=fp8"], "backbone.precision"),
    ("device", ["run", "run.device=gpu"], "run.device"),
    ("device_index", ["run", "run.device=cuda:x"], "run.device"),
    ("crop_scale_range", ["run", "data.crop_scale=[0.0,1.0]"], "data.crop_scale"),
    ("crop_scale_order", ["run", "data.crop_scale=[0.9,0.5]"], "data.crop_scale"),
    ("checkpoint", ["run", "backbone.checkpoint=/nonexistent/ckpt.pt"], "backbone.checkpoint"),
    ("empty_seeds", ["run", "seeds=[]"], "seeds=[]"),
    ("empty_methods", ["run", "methods=[]"], "methods=[]"),
    ("empty_datasets", ["run", "datasets=[]"], "datasets=[]"),
    ("method_conflict", ["run", "method=coop", "methods=[kgcoop]"], "'methods'"),
    ("seed_conflict", ["run", "seed=1", "seed=2"], "'seeds'"),
    ("dataset_conflict", ["run", "dataset=toy_shapes", "datasets=[toy_patterns]"], "'datasets'"),
    ("num_cpus", ["run", "ray.num_cpus=0"], "ray.num_cpus"),
    ("cpus_per_trial", ["run", "ray.cpus_per_trial=0"], "ray.cpus_per_trial"),
    ("gpus_per_trial", ["run", "ray.gpus_per_trial=-1"], "ray.gpus_per_trial"),
    ("max_concurrent", ["run", "ray.max_concurrent=0"], "ray.max_concurrent"),
    ("num_samples", ["sweep", "sweep.name=drople_ablation", "sweep.num_samples=0"], "sweep.num_samples"),
    ("sweep_value_range", ["sweep", "method=drople", "sweep.params.method.dropout_rate=[0.1,1.5]"],
     "method.dropout_rate=1.5"),
    ("search", ["sweep", "sweep.search=grd"], "sweep.search"),
    ("sampler", ["sweep", "sweep.sampler=tp"], "did you mean 'tpe'"),
    ("mode", ["sweep", "sweep.mode=up"], "sweep.mode"),
    ("dry_run_epochs", ["dry-run", "train.epochs=-1"], "train.epochs"),
    ("ls_unknown_key", ["ls", "methods", "foo=1"], "'foo'"),
    ("ls_datasets_typo", ["ls", "datasets", "data.roo=/x"], "did you mean 'data.root'"),
]

# Bad definition files: (case id, file body, text the error line must hold). Each is loaded by the real command.
GOOD_PROTOCOL = MINIMAL  # the smallest valid protocol file (tests/test_protocols.py)
PROTOCOL_CASES = [
    ("protocol_unknown_key", GOOD_PROTOCOL + "recipes: x\n", "unknown key 'recipes'; did you mean 'recipe'"),
    ("protocol_kind", GOOD_PROTOCOL.replace("kind: base2novel", "kind: transfr"),
     "'kind': unknown kind 'transfr'; did you mean 'transfer'"),
    ("protocol_layout", GOOD_PROTOCOL.replace("layout: base2novel", "layout: pie"), "'table.layout'"),
    ("protocol_mode", GOOD_PROTOCOL.replace("mode: max", "mode: up"), "'metric.mode'"),
    ("protocol_suite_key", GOOD_PROTOCOL.replace("{datasets:", "{datasetz:"), "'suites.toy.datasetz'"),
    ("protocol_seeds", GOOD_PROTOCOL.replace("seeds: [1]", "seeds: []"), "seeds=[]"),
]
GOOD_SWEEP = """methods: [coop]
search: grid
params: {train.lr: [0.1, 0.01]}
metric: {name: hm, mode: max}
"""
SWEEP_CASES = [
    ("sweep_unknown_key", GOOD_SWEEP + "num_sample: 3\n", "unknown key 'num_sample'; did you mean 'num_samples'"),
    ("sweep_search", GOOD_SWEEP.replace("search: grid", "search: bayes"), "'search': unknown search 'bayes'"),
    ("sweep_mode", GOOD_SWEEP.replace("mode: max", "mode: up"), "'metric.mode'"),
    ("sweep_num_samples", GOOD_SWEEP.replace("search: grid", "search: optuna") + "num_samples: 0\n",
     "num_samples=0"),
    ("sweep_empty_params", GOOD_SWEEP.replace("{train.lr: [0.1, 0.01]}", "{}"), "params={}"),
]


def _argv(argv: list[str], out: Path) -> list[str]:
    return argv if argv[0] == "ls" else [*argv, f"run.output_dir={out}"]


def _assert_nothing_written(out: Path) -> None:
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert written == [], f"the refused command wrote {written}"


@pytest.fixture
def tripwires(monkeypatch):
    """Replace everything that would start Ray or MLflow: reaching it means a check is missing."""
    from dplbench.orchestrate import runner

    def reached(*args, **kwargs):
        raise AssertionError("a bad value reached the runner")

    monkeypatch.setattr(runner, "run", reached)
    monkeypatch.setattr(runner, "dry_run", reached)
    monkeypatch.setattr(sweep_mod, "run_sweep", _plan_only(reached))


def _plan_only(reached):
    """The sweep command with everything after planning and unit expansion replaced by ``reached``."""
    def run_sweep(cfg, **kwargs):
        from dplbench.units import expand_units

        plan = sweep_mod.plan_sweep(cfg)
        first = plan.grid[0] if plan.grid else {}
        expand_units(sweep_mod.apply_params(cfg, first), extra_overrides=first)
        reached()
    return run_sweep


def _refused(capsys, argv: list[str], out: Path) -> str:
    start = time.perf_counter()
    status = cli.main(_argv(argv, out))
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert seconds < SUBPROCESS_SECONDS
    _assert_nothing_written(out)
    return lines[0]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_values_are_refused_before_anything_starts(argv, expected, tripwires, capsys, tmp_path):
    line = _refused(capsys, argv, tmp_path / "out")
    assert expected in line, line


@pytest.mark.parametrize("body, expected", [c[1:] for c in PROTOCOL_CASES], ids=[c[0] for c in PROTOCOL_CASES])
def test_bad_protocol_files_are_refused_naming_file_and_key(body, expected, tripwires, capsys, tmp_path,
                                                            monkeypatch):
    from dplbench import protocol as protocol_mod

    (tmp_path / "bad.yaml").write_text(body)
    fresh = Registry("protocol")
    fresh.add_discoverer(catalog._discover_protocols)
    monkeypatch.setattr(catalog, "PROTOCOLS", fresh)
    monkeypatch.setattr(protocol_mod, "protocol_files", lambda: [tmp_path / "bad.yaml"])
    line = _refused(capsys, ["run", "protocol=bad"], tmp_path / "out")
    assert line.startswith("error: protocols/bad.yaml: ") and expected in line, line


@pytest.mark.parametrize("body, expected", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_bad_sweep_files_are_refused_naming_file_and_key(body, expected, tripwires, capsys, tmp_path, monkeypatch):
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (folder / "bad.yaml").write_text(body)
    monkeypatch.setattr(sweep_mod, "sweep_folder", lambda: folder)
    line = _refused(capsys, ["sweep", "sweep.name=bad"], tmp_path / "out")
    assert line.startswith("error: protocols/sweeps/bad.yaml: ") and expected in line, line


def test_the_good_definition_files_pass(tripwires, capsys, tmp_path, monkeypatch):
    """The bad files above differ from these by one edit each, so each error is that edit's."""
    from dplbench import protocol as protocol_mod

    (tmp_path / "good.yaml").write_text(GOOD_PROTOCOL)
    fresh = Registry("protocol")
    fresh.add_discoverer(catalog._discover_protocols)
    monkeypatch.setattr(catalog, "PROTOCOLS", fresh)
    monkeypatch.setattr(protocol_mod, "protocol_files", lambda: [tmp_path / "good.yaml"])
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (folder / "good.yaml").write_text(GOOD_SWEEP)
    monkeypatch.setattr(sweep_mod, "sweep_folder", lambda: folder)
    with pytest.raises(AssertionError, match="reached the runner"):
        cli.main(["sweep", "protocol=good", "sweep.name=good", f"run.output_dir={tmp_path / 'out'}"])


def test_ls_datasets_still_takes_a_data_root(capsys, tmp_path):
    assert cli.main(["ls", "datasets", f"data.root={tmp_path}"]) == 0
    assert capsys.readouterr().out.startswith(f"data root: {tmp_path}")


SUBPROCESS_CASES = ["epochs", "empty_seeds", "method_conflict", "dropout_rate", "num_samples", "ls_unknown_key"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_the_real_command_refuses_within_two_seconds(case, tmp_path):
    _, argv, expected = next(c for c in CASES if c[0] == case)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "dplbench", *_argv(argv, out)], cwd=tmp_path, env=env, check=False,
                              capture_output=True, text=True, timeout=10 * SUBPROCESS_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: not refused within {10 * SUBPROCESS_SECONDS:.0f} s (it started running)")
    seconds = time.perf_counter() - start
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert seconds < SUBPROCESS_SECONDS, f"{case}: {seconds:.2f} s"
    _assert_nothing_written(out)
    _assert_nothing_written(tmp_path / "results")  # the default output folder, relative to the working directory


def test_every_range_key_names_a_real_config_key_or_method_option():
    """A key renamed or moved out of the config must not leave its check silently unused."""
    import dataclasses

    from omegaconf import OmegaConf

    from dplbench.catalog import METHODS
    from dplbench.config import Config
    from dplbench.schema import CONFIG_RANGES
    from dplbench.units import flatten

    defaults = OmegaConf.structured(Config)
    options = {f"method.{key}" for name in METHODS.list() for key in
               flatten(dataclasses.asdict(METHODS.get(name).Options()))}
    for key in CONFIG_RANGES:
        if key.startswith("method."):
            assert key in options, key
        else:
            assert OmegaConf.select(defaults, key, default="<absent>") != "<absent>", key
