"""The command line as a user meets it: exit codes, one-line errors, listings, --cfg and dry-run."""

import subprocess
import sys

import pytest


def dplbench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dplbench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("args,needle", [
    (("run", "method=copo"), "did you mean 'coop'"),
    (("run", "protocol=base2nvel"), "did you mean 'base2novel'"),
    (("dry-run", "train.epoch=3"), "did you mean 'epochs'"),
    (("run", "train.epochs=abc"), "train.epochs"),
    (("run", "datasets=[toy_shapez]"), "did you mean 'toy_shapes'"),
    (("run", "method=coop", "method.n_ctxx=4"), "did you mean 'method.n_ctx'"),
    (("run", "novalue"), "key=value"),
    (("run", "--config", "/nonexistent/x.yaml"), "config file not found"),
])
def test_bad_input_prints_one_line_and_exits_2(args, needle):
    proc = dplbench(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_ls_lists_descriptions_and_dataset_availability(tmp_path):
    methods = dplbench("ls", "methods").stdout
    assert "coop" in methods and "KgCoOp" in methods and "drople" in methods
    (tmp_path / "dtd").mkdir()
    datasets = dplbench("ls", "datasets", f"data.root={tmp_path}").stdout
    lines = {line.split()[0]: line for line in datasets.splitlines()[1:]}
    assert "built-in" in lines["toy_shapes"]
    assert "missing" in lines["dtd"] and "missing" in lines["imagenet"]
    assert "base2novel" in dplbench("ls", "protocols").stdout
    assert "toy" in dplbench("ls", "backbones").stdout


def test_cfg_prints_resolved_config():
    proc = dplbench("run", "method=coop", "train.epochs=3", "--cfg")
    assert proc.returncode == 0, proc.stderr
    assert "protocol: base2novel" in proc.stdout and "epochs: 3" in proc.stdout and "- coop" in proc.stdout


def test_dry_run_shows_units_without_running(tmp_path):
    proc = dplbench("dry-run", "method=coop", "seeds=[1,2]", f"run.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("coop") >= 6  # 3 toy datasets x 2 seeds
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_table_without_results_is_a_clear_error(tmp_path):
    proc = dplbench("table", f"run.output_dir={tmp_path}")
    assert proc.returncode == 2 and "no result files" in proc.stderr
