"""Table-driven bad inputs across every command: each exits non-zero within seconds with exactly one line naming
the problem (or succeeds on purpose). Value ranges of config keys are covered by tests/test_validation.py; this
table covers the other inputs: config files, names, output folders, result files, table/plot/ls options,
pretrain-toy arguments and unreachable services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dplbench import cli

ROOT = Path(__file__).resolve().parent.parent
IN_PROCESS_SECONDS = 20.0   # generous: CI machines are shared; a hang would take minutes
SUBPROCESS_SECONDS = 15.0


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _result(tmp: Path, name: str, record: dict, checksum: bool = True) -> None:
    from dplbench.results import _checksum

    record = {"format": "dplbench-result/1", "status": "done", "config_hash": "abcdef0123456789",
              "unit": {"protocol": "base2novel", "method": "coop", "dataset": "toy_shapes", "seed": 1, "shots": 16,
                       "overrides": {}}, "metrics": {"base": 70.0, "novel": 60.0, "hm": 64.6}, "config": {},
              **record}
    if checksum:
        record["checksum"] = _checksum(record)
    _write(tmp, f"out/runs/base2novel/coop/toy_shapes/{name}.json", json.dumps(record))


SETUPS = {
    "yaml_syntax": lambda t: _write(t, "c.yaml", "seeds: [1, 2\n"),
    "yaml_list": lambda t: _write(t, "c.yaml", "- seeds\n- 1\n"),
    "yaml_scalar": lambda t: _write(t, "c.yaml", "just a string\n"),
    "yaml_unknown_key": lambda t: _write(t, "c.yaml", "trian: {epochs: 1}\n"),
    "yaml_wrong_type": lambda t: _write(t, "c.yaml", "train: {epochs: many}\n"),
    "yaml_unknown_method": lambda t: _write(t, "c.yaml", "method: copo\n"),
    "yaml_unknown_dataset": lambda t: _write(t, "c.yaml", "datasets: [toy_shape]\n"),
    "yaml_binary": lambda t: _write(t, "c.yaml", b"\xff\xfe\x00\x01seeds"),
    "yaml_python_tag": lambda t: _write(t, "c.yaml", "seeds: !!python/object/apply:os.system ['true']\n"),
    "yaml_conflict": lambda t: _write(t, "c.yaml", "method: coop\nmethods: [kgcoop]\n"),
    "yaml_empty": lambda t: _write(t, "c.yaml", ""),
    "out_is_file": lambda t: _write(t, "out", "not a folder"),
    "out_parent_is_file": lambda t: _write(t, "blocker", "x"),
    "result_garbage": lambda t: _result(t, "a", {}) or _write(t, "out/runs/base2novel/coop/toy_shapes/z.json", "{"),
    "result_edited": lambda t: _result(t, "a", {}) or _result(t, "b", {"metrics": {"hm": 99.0}}, checksum=False),
    "result_bad_seed": lambda t: _result(t, "a", {}) or _result(
        t, "b", {"unit": {"protocol": "base2novel", "method": "coop", "dataset": "toy_shapes", "seed": "x"}}),
    "result_bad_metric": lambda t: _result(t, "a", {}) or _result(t, "b", {"metrics": {"hm": "high"}}),
    "result_only_bad": lambda t: _result(t, "b", {"metrics": {"hm": [1]}}),
    "data_root_file": lambda t: _write(t, "data", "x"),
    "checkpoint_text": lambda t: _write(t, "ckpt.pt", "not a checkpoint"),
}

# (case, argv, setup, expected text in the one line, expected exit code)
CASES = [
    # --config files
    ("config_missing", ["run", "--config", "{tmp}/nope.yaml"], None, "config file not found", 2),
    ("config_is_folder", ["run", "--config", "{tmp}"], None, "config file not found", 2),
    ("config_yaml_syntax", ["run", "--config", "{tmp}/c.yaml"], "yaml_syntax", "not valid YAML", 2),
    ("config_yaml_list", ["run", "--config", "{tmp}/c.yaml"], "yaml_list", "must hold a mapping", 2),
    ("config_yaml_scalar", ["dry-run", "--config", "{tmp}/c.yaml"], "yaml_scalar", "must hold a mapping", 2),
    ("config_unknown_key", ["run", "--config", "{tmp}/c.yaml"], "yaml_unknown_key", "trian", 2),
    ("config_wrong_type", ["run", "--config", "{tmp}/c.yaml"], "yaml_wrong_type", "train.epochs", 2),
    ("config_unknown_method", ["run", "--config", "{tmp}/c.yaml"], "yaml_unknown_method", "did you mean 'coop'", 2),
    ("config_unknown_dataset", ["dry-run", "--config", "{tmp}/c.yaml"], "yaml_unknown_dataset", "toy_shape", 2),
    ("config_binary", ["run", "--config", "{tmp}/c.yaml"], "yaml_binary", "c.yaml", 2),
    ("config_python_tag", ["run", "--config", "{tmp}/c.yaml"], "yaml_python_tag", "not valid YAML", 2),
    ("config_conflict", ["run", "--config", "{tmp}/c.yaml"], "yaml_conflict", "'methods'", 2),
    ("config_table_unknown_key", ["table", "--config", "{tmp}/c.yaml"], "yaml_unknown_key", "trian", 2),
    ("config_sweep_syntax", ["sweep", "--config", "{tmp}/c.yaml"], "yaml_syntax", "not valid YAML", 2),
    ("config_empty_is_fine", ["dry-run", "--config", "{tmp}/c.yaml", "method=zsclip", "dataset=toy_shapes",
                              "seeds=[1]"], "yaml_empty", None, 0),
    # names
    ("unknown_protocol", ["run", "protocol=base2nvel"], None, "did you mean 'base2novel'", 2),
    ("unknown_protocol_table", ["table", "protocol=nope"], None, "unknown protocol 'nope'", 2),
    ("unknown_protocol_plot", ["plot", "protocol=fw_shot"], None, "unknown protocol 'fw_shot'", 2),
    ("unknown_method", ["dry-run", "method=kgcop"], None, "did you mean 'kgcoop'", 2),
    ("unknown_method_list", ["run", "methods=[coop,zclip]"], None, "'zclip'", 2),
    ("unknown_dataset", ["run", "dataset=toy_shapez"], None, "did you mean 'toy_shapes'", 2),
    ("unknown_source", ["run", "protocol=cross_dataset", "source=toy_shape"], None, "toy_shape", 2),
    ("unknown_target", ["dry-run", "protocol=cross_dataset", "targets=[toy_colours]"], None, "toy_colours", 2),
    ("unknown_suite", ["run", "suite=standrd"], None, "suite", 2),
    ("unknown_backbone", ["run", "backbone=ViT-B-61"], None, "unknown backbone 'ViT-B-61'", 2),
    ("unknown_method_option", ["run", "method=coop", "method.n_ctxx=4"], None, "did you mean 'method.n_ctx'", 2),
    ("method_option_wrong_type", ["run", "method=coop", "method.n_ctx=four"], None, "method.n_ctx", 2),
    ("unknown_top_key", ["dry-run", "epochs=3"], None, "epochs", 2),
    ("not_key_value", ["run", "coop"], None, "coop", 2),
    ("seeds_not_a_list", ["run", "seeds=[1,"], None, "seeds", 2),
    ("unknown_sweep_name", ["sweep", "sweep.name=drople_ablaton"], None, "drople_ablaton", 2),
    ("sweep_params_not_mapping", ["sweep", "sweep.params=[1,2]"], None, "sweep.params", 2),
    ("sweep_unknown_param_key", ["sweep", "sweep.params={train.lrr: [0.1]}"], None, "train.lrr", 2),
    ("sweep_runtime_key", ["sweep", "sweep.params={run.device: [cpu]}"], None, "run.device", 2),
    # output folder
    ("out_is_file_run", ["run", "run.output_dir={tmp}/out", "method=zsclip"], "out_is_file", "is a file", 2),
    ("out_is_file_sweep", ["sweep", "sweep.name=drople_ablation", "run.output_dir={tmp}/out"], "out_is_file",
     "is a file", 2),
    ("out_is_file_table", ["table", "run.output_dir={tmp}/out"], "out_is_file", "is a file", 2),
    ("out_is_file_plot", ["plot", "run.output_dir={tmp}/out"], "out_is_file", "is a file", 2),
    ("out_parent_is_file", ["run", "run.output_dir={tmp}/blocker/out", "method=zsclip"], "out_parent_is_file",
     "cannot be created", 2),
    # unreachable services (probed before Ray / MLflow start)
    ("ray_address_refused", ["run", "ray.address=127.0.0.1:1", "method=zsclip"], None, "ray.address=127.0.0.1:1", 2),
    ("ray_client_refused", ["run", "ray.address=ray://127.0.0.1:1", "method=zsclip"], None, "ray://127.0.0.1:1", 2),
    ("ray_address_garbage", ["run", "ray.address=not an address", "method=zsclip"], None, "ray.address", 2),
    ("ray_address_unknown_host", ["sweep", "ray.address=nohost.invalid:6379"], None, "unknown host", 2),
    ("tracking_refused", ["run", "tracking.uri=http://127.0.0.1:1", "method=zsclip"], None, "tracking.uri", 2),
    ("tracking_refused_sweep", ["sweep", "tracking.uri=http://127.0.0.1:1"], None, "tracking.uri", 2),
    # result files
    ("table_no_results", ["table", "run.output_dir={tmp}/empty"], None, "no result files", 2),
    ("plot_no_results", ["plot", "run.output_dir={tmp}/empty"], None, "no plots", 1),
    ("table_only_bad_results", ["table", "run.output_dir={tmp}/out"], "result_only_bad", "no result files", 2),
    ("table_skips_garbage", ["table", "run.output_dir={tmp}/out"], "result_garbage", None, 0),
    ("table_skips_edited", ["table", "run.output_dir={tmp}/out"], "result_edited", None, 0),
    ("table_skips_bad_seed", ["table", "run.output_dir={tmp}/out"], "result_bad_seed", None, 0),
    ("table_skips_bad_metric", ["table", "run.output_dir={tmp}/out"], "result_bad_metric", None, 0),
    ("table_unknown_key", ["table", "table.formatt=md"], None, "table.formatt", 2),
    ("plot_unknown_key", ["plot", "plot.kind=pie"], None, "plot", 2),
    # data and weights
    ("data_root_missing_standard", ["dry-run", "suite=standard", "data.root={tmp}/nowhere"], None, None, 0),
    ("checkpoint_folder", ["run", "backbone.checkpoint={tmp}"], None, "backbone.checkpoint", 2),
    # ls
    ("ls_unknown_kind", ["ls", "metods"], None, "invalid choice: 'metods'", 2),
    ("ls_no_kind", ["ls"], None, "kind", 2),
    ("ls_backbones_setting", ["ls", "backbones", "data.root=/x"], None, "takes no setting 'data.root'", 2),
    ("ls_pattern_no_match", ["ls", "methods", "zzz*"], None, None, 0),
    ("ls_datasets_root_is_file", ["ls", "datasets", "data.root={tmp}/data"], "data_root_file", None, 0),
    # command line shape
    ("no_command_prints_help", [], None, None, 0),  # a bare `dplbench` prints the help on purpose
    ("unknown_command", ["rn"], None, "invalid choice: 'rn'", 2),
    ("unknown_flag", ["run", "--forse"], None, "--forse", 2),
    ("force_on_table", ["table", "--force"], None, "--force", 2),
    # pretrain-toy
    ("pretrain_steps_zero", ["pretrain-toy", "--steps", "0"], None, "--steps", 2),
    ("pretrain_steps_text", ["pretrain-toy", "--steps", "ten"], None, "not an integer", 2),
    ("pretrain_lr_negative", ["pretrain-toy", "--lr", "-0.1"], None, "--lr", 2),
    ("pretrain_lr_nan", ["pretrain-toy", "--lr", "nan"], None, "--lr", 2),
    ("pretrain_batch_zero", ["pretrain-toy", "--batch-size", "0"], None, "--batch-size", 2),
    ("pretrain_pool_negative", ["pretrain-toy", "--pool-size", "-5"], None, "--pool-size", 2),
    ("pretrain_fraction_range", ["pretrain-toy", "--align-fraction", "1.5"], None, "--align-fraction", 2),
    ("pretrain_fractions_sum", ["pretrain-toy", "--warmup-fraction", "0.7"], None, "must not exceed 1", 2),
    ("pretrain_out_folder", ["pretrain-toy", "--out", "{tmp}"], None, "is a folder", 2),
    ("pretrain_unknown_flag", ["pretrain-toy", "--epochs", "3"], None, "--epochs", 2),
    ("pretrain_threads_negative", ["pretrain-toy", "--threads", "-1"], None, "--threads", 2),
]


def _argv(argv: list[str], tmp: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)) for a in argv]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _check(case: str, code: int, out: str, err: str, expected: str | None, want: int, seconds: float,
           limit: float) -> None:
    assert seconds < limit, f"{case}: {seconds:.1f} s"
    assert code == want, f"{case}: exit {code}, expected {want}\n{err[-2000:]}"
    if want == 0:
        assert not any(line.startswith(("Traceback", "error:")) for line in _lines(err)), err[-2000:]
        return
    lines = [line for line in _lines(out) + _lines(err) if not line.startswith("ignoring ")]  # skipped files
    assert len(lines) == 1, f"{case}: {len(lines)} lines: {lines[:8]}"
    assert expected in lines[0], f"{case}: {lines[0]!r} does not name {expected!r}"


@pytest.fixture
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case, argv, setup, expected, want", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, argv, setup, expected, want, _isolated, capsys, caplog):
    tmp = _isolated
    if setup:
        SETUPS[setup](tmp)
    start = time.perf_counter()
    try:
        code = cli.main(_argv(argv, tmp))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    err = captured.err + "".join(f"{r.getMessage()}\n" for r in caplog.records if r.levelname in ("WARNING", "ERROR")
                                 and want != 0)
    _check(case, code, captured.out, err, expected, want, seconds, IN_PROCESS_SECONDS)
    if setup and setup.startswith("result_") and want == 0:  # a skipped file is named in a warning
        assert any("ignoring" in r.getMessage() for r in caplog.records)


SUBPROCESS_CASES = ["ray_address_refused", "tracking_refused", "out_is_file_run", "config_yaml_syntax",
                    "ls_unknown_kind", "unknown_command"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_as_a_real_command(case, tmp_path):
    _, argv, setup, expected, want = next(c for c in CASES if c[0] == case)
    if setup:
        SETUPS[setup](tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "DPLBENCH_CACHE": str(tmp_path / "cache")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dplbench", *_argv(argv, tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=6 * SUBPROCESS_SECONDS)
    _check(case, proc.returncode, proc.stdout, proc.stderr, expected, want, time.perf_counter() - start,
           SUBPROCESS_SECONDS)


def test_the_table_has_enough_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1][0] for c in CASES if c[1]}
    assert {"run", "dry-run", "sweep", "table", "plot", "ls", "pretrain-toy"} <= commands
