"""Issue #16 (items 1, 2, 6, 7, 8, 9): what the user sees before, during and after a run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dplbench.cli import main, pretrain_argv
from dplbench.config import build_config
from dplbench.orchestrate import runner
from dplbench.units import expand_units


def fake_execute(unit, runtime, on_epoch=None):
    print(f"training {unit.name}")
    if on_epoch is not None:
        on_epoch({"epoch": 1, "epochs": 1, "lr": 0.1, "loss": 1.0})
    n_ctx = unit.options.get("n_ctx", 4)
    return {"metrics": {"base": 70.0 + n_ctx, "novel": 60.0 + unit.seed, "hm": 65.0}, "history": [],
            "faithfulness": {}, "extra": {}}


def _run(out: Path, *keys: str):
    cfg = build_config([f"run.output_dir={out}", "ray.enabled=false", "tracking.enabled=false", *keys])
    return runner.run(cfg, expand_units(cfg), executor=fake_execute)


# -- 1. resolved config ---------------------------------------------------------------------------------------
def test_cfg_prints_the_effective_recipe_after_protocol_and_overrides(capsys):
    assert main(["run", "protocol=few_shot", "method=coop", "shots=[16]", "method.class_position=front",
                 "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "train.epochs = 50" in out          # CoOp's 200-epoch few-shot recipe x the toy suite's epoch_scale 0.25
    assert "method.n_ctx = 16" in out and "method.class_position = front" in out
    assert "backbone.precision = " in out and "train.batch_size = 32" in out


def test_ls_methods_details_and_mlflow_param_names(capsys):
    assert main(["ls", "methods", "coop", "--details"]) == 0
    out = capsys.readouterr().out
    assert "method.n_ctx = 4" in out and "few_shot:" in out and "cross_dataset: epochs=50" in out
    from dplbench.explain import effective_params

    unit = expand_units(build_config(["method=drople", "method.dropout_rate=0.2", "seeds=[1]"]))[0]
    params = effective_params(unit, "cpu")
    assert params["method.dropout_rate"] == 0.2 and params["backbone.precision"] == "fp32"
    assert not any(k.startswith("options.") for k in params) and params["train.epochs"] > 0


# -- 2. selections ----------------------------------------------------------------------------------------------
def test_table_and_load_results_honour_selections(tmp_path, capsys):
    import dplbench

    _run(tmp_path, "methods=[coop,kgcoop]", "datasets=[toy_shapes_noisy]", "seeds=[1,2]")
    records = dplbench.load_results(**{"run.output_dir": str(tmp_path)})
    assert len(records) == 4
    picked = dplbench.load_results(methods=["coop"], seeds=[2], **{"run.output_dir": str(tmp_path)})
    assert [(r["unit"]["method"], r["unit"]["seed"]) for r in picked] == [("coop", 2)]
    capsys.readouterr()
    assert main(["table", "method=kgcoop", f"run.output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "kgcoop" in out.lower() and "coop " not in out.lower().replace("kgcoop", "")
    assert main(["table", "method.n_ctx=99", f"run.output_dir={tmp_path}"]) == 2  # nothing matches: said so


def test_sweep_in_process_and_dry_run_preview(tmp_path, capsys):
    from dplbench.orchestrate.sweep import run_sweep

    keys = ["method=coop", "dataset=toy_shapes_noisy", "seeds=[1]", f"run.output_dir={tmp_path}",
            "sweep.params.method.n_ctx=[2,8]"]
    assert main(["dry-run", *keys]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s) x 1 unit(s)" in out and "method.n_ctx=8" in out
    cfg = build_config([*keys, "ray.enabled=false", "tracking.enabled=false"])
    summary = run_sweep(cfg, executor=fake_execute)
    lines = capsys.readouterr().out.splitlines()  # each trial's unit as it finishes, then the trial's line
    assert [line.split()[0] for line in lines if line.startswith(("[", "         done"))] == \
        ["done", "[1/2]", "done", "[2/2]"]
    assert "ray" not in {p.name for p in tmp_path.iterdir()}  # no Ray storage: the trials ran in this process
    assert [t["params"]["method.n_ctx"] for t in summary.trials] == [2, 8] and summary.ok
    records = __import__("dplbench").load_results(**{"run.output_dir": str(tmp_path), "sweep.params.method.n_ctx": [8]})
    assert [r["unit"]["overrides"]["method.n_ctx"] for r in records] == [8]
    assert main(["ls", "sweeps"]) == 0 and "drople_ablation" in capsys.readouterr().out


def test_optuna_values_print_rounded():
    from dplbench.orchestrate.sweep import SweepSummary

    summary = SweepSummary("s", "optuna", "hm", "max", "TPESampler", 0, "4",
                           trials=[{"params": {"train.lr": 0.0012345678912}, "objective": 70.0}])
    assert "train.lr=0.001235" in str(summary)


# -- 3. sweeps do not pollute the main table --------------------------------------------------------------------
def test_variants_join_the_main_table_only_when_asked(tmp_path, capsys):
    import dplbench
    from dplbench.report.api import naming_variants

    one = ["method=coop", "datasets=[toy_shapes_noisy]", "seeds=[1]"]
    _run(tmp_path / "variants", *one, "method.n_ctx=8")
    out = f"run.output_dir={tmp_path / 'variants'}"
    capsys.readouterr()
    assert main(["table", out]) == 2  # nothing but variants: said how to show them
    assert "report.variants=true" in capsys.readouterr().err
    assert main(["table", out, "report.variants=true"]) == 0 and "(n_ctx=8)" not in capsys.readouterr().out

    _run(tmp_path, *one)
    _run(tmp_path, *one, "method.n_ctx=8")
    _run(tmp_path, *one, "method.n_ctx=2")
    out = f"run.output_dir={tmp_path}"
    tables = tmp_path / "tables"
    for keys, knob_values in (([], None), (["methods=[coop]"], None), (["report.variants=true"], ["—", "2", "8"]),
                              (["method.n_ctx=8"], None), (["sweep.params.method.n_ctx=[2,8]"], ["2", "8"])):
        assert main(["table", out, "report.n_boot=20", *keys]) == 0, keys
        md = (tables / "base2novel.md").read_text()
        assert ("Every row: n_ctx=8." in md) is (keys == ["method.n_ctx=8"])
        header, _, *rows = [line for line in md.splitlines() if line.startswith("| ")]
        rows = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
        if knob_values is None:  # one row per block, no knob column
            assert "n_ctx" not in header and len(rows) == 2, keys
        else:
            assert header.split("|")[3].strip() == "n_ctx" and [r[2] for r in rows[:len(knob_values)]] == knob_values
    assert len(dplbench.load_results(**{"run.output_dir": str(tmp_path)})) == 1
    assert len(dplbench.load_results(**{"run.output_dir": str(tmp_path), "report.variants": True})) == 3
    assert naming_variants({"methods", "seeds", "backbone.pretrained", "run.device", "train.epochs", "sweep.name",
                            "method.n_ctx", "report.variants"}) == {"train.epochs", "sweep.name", "method.n_ctx"}
    capsys.readouterr()
    assert main(["plot", out]) == 0  # the ablation over n_ctx comes from the variants; the main table's plots not
    assert any("ablation_method.n_ctx" in line for line in capsys.readouterr().out.splitlines())
    index = (tmp_path / "index.md").read_text()
    assert "2 variant(s) (units run with overrides, e.g. sweeps) are not in this table" in index


# -- 6. progress and logs ----------------------------------------------------------------------------------------
def test_progress_lines_show_eta_and_units_log_to_the_workspace(tmp_path, capsys):
    from dplbench.orchestrate.timing import eta_text
    from dplbench.workspace import Workspace

    assert eta_text(1, 4, 75.0) == "elapsed 1:15, ETA 3:45"
    _run(tmp_path, "method=coop", "datasets=[toy_shapes_noisy]", "seeds=[1,2]")
    out = capsys.readouterr().out
    assert "[1/2]" in out and "ETA" in out
    logs = sorted(Workspace.at(tmp_path).logs.glob("*.log"))
    assert len(logs) == 2 and "training coop-toy_shapes_noisy" in logs[0].read_text()


# Ray's, Tune's, MLflow's and alembic's INFO lines as they read on a console (logger format of each library)
LIBRARY_INFO = ("INFO worker.py", "Started a local Ray instance", "INFO tune.py", "Wrote the latest version",
                "INFO mlflow", "Creating initial MLflow database tables", "Updating database tables",
                "Context impl", "Will assume non-transactional DDL", "Running upgrade")


def _console(tmp_path: Path, *keys: str) -> str:
    """stdout + stderr of a real `dplbench run` of one zero-shot toy unit, tracking on (a fresh MLflow database)."""
    proc = subprocess.run([sys.executable, "-m", "dplbench", "run", "method=zsclip", "dataset=toy_shapes_noisy",
                           "seeds=[1]", f"run.output_dir={tmp_path}", *keys], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_mlflow_info_lines_stay_off_the_console_unless_asked(tmp_path, capfd):
    """A fresh MLflow database logs its creation and migration at INFO: not shown unless run.log_level=info."""
    from dplbench.orchestrate import tracking

    try:
        for level, shown in (("warning", False), ("info", True)):
            cfg = build_config([f"run.output_dir={tmp_path / level}", f"run.log_level={level}"])
            info = tracking.start_parent(cfg, "run-test", {}, {})
            tracking.end_parent(info, {}, failed=False)
            console = "".join(capfd.readouterr())
            assert ("Creating initial MLflow database tables" in console) is shown, console
            assert shown or not [line for line in console.splitlines() if any(s in line for s in LIBRARY_INFO)]
    finally:
        from dplbench.orchestrate.console import hold_library_logs

        hold_library_logs("warning")
    assert main(["run", "--verbose", "--cfg"]) == 0 and "log_level: info" in capfd.readouterr().out


@pytest.mark.slow
def test_a_ray_run_prints_dplbench_lines_and_library_warnings_only(tmp_path):
    """A real `dplbench run` with Ray and MLflow (a fresh local instance and database): the console holds
    dplbench's lines, not the libraries' INFO lines."""
    out = _console(tmp_path, "ray.num_cpus=1")
    assert "[1/1] done" in out and "Average" in out
    leaked = [line for line in out.splitlines() if any(s in line for s in LIBRARY_INFO)]
    assert not leaked, "\n".join(leaked)


# -- 7. data -----------------------------------------------------------------------------------------------------
def test_validate_data_on_a_missing_root_is_fast_and_nonzero():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dplbench", "validate", "data", "suite=standard",
                           "data.root=/nonexistent"], capture_output=True, text=True)
    assert proc.returncode == 1 and time.perf_counter() - start < 4  # 2 s on an idle machine; CI is shared
    assert "caltech101" in proc.stdout and "missing" in proc.stdout and "/nonexistent/caltech-101" in proc.stdout


def _dtd(folder: Path, n_test: int) -> None:
    items = {"train": [["a/1.jpg", 0, "a"]], "val": [], "test": [["a/2.jpg", 0, "a"]] * n_test}
    (folder / "images" / "a").mkdir(parents=True)
    (folder / "images" / "a" / "1.jpg").write_bytes(b"x")
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(items))


def test_validate_data_reports_wrong_counts_missing_images_and_checksums(tmp_path, capsys):
    _dtd(tmp_path / "elsewhere", 3)
    assert main(["validate", "data", "datasets=[dtd]", f"data.paths.dtd={tmp_path / 'elsewhere'}"]) == 1
    out = capsys.readouterr().out
    assert "wrong count" in out and "2820" in out          # train: 1 found, 2820 expected
    assert "e.g. missing a/2.jpg" in out and "split sha256" in out


def test_run_refuses_missing_data_in_one_line(tmp_path, capsys):
    rc = main(["run", "suite=standard", "method=coop", "datasets=[dtd]", f"data.root={tmp_path}",
               f"run.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "data missing" in err[0] and str(tmp_path / "dtd") in err[0]
    assert not (tmp_path / "out").exists()


def test_lift_folder_names_and_images_next_to_the_split_files(tmp_path):
    from dplbench.data import load_dataset

    d = tmp_path / "Places_LT"
    (d / "train" / "a").mkdir(parents=True)
    (d / "train" / "a" / "1.jpg").write_bytes(b"x")
    (d / "classnames.txt").write_text("a alpha\nb beta\n")
    for split in ("train", "test"):
        (d / f"Places_LT_{split}.txt").write_text("train/a/1.jpg 0\ntrain/a/1.jpg 1\n")
    splits = load_dataset("places_lt", tmp_path)
    assert splits.image_dir == d and len(splits.train) == 2


def test_result_files_record_the_sha256_of_the_split_and_few_shot_files(tmp_path, monkeypatch):
    import hashlib

    from test_data_layouts import make_json_dataset

    from dplbench.data.fewshot import fewshot_path
    from dplbench.results import read_result

    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))
    make_json_dataset(tmp_path / "data", "eurosat")
    split_file = tmp_path / "data" / "eurosat" / "split_zhou_EuroSAT.json"

    def recorded(out: Path) -> dict:  # the real executor, on the toy backbone
        cfg = build_config([f"run.output_dir={out}", "ray.enabled=false", "tracking.enabled=false",
                            "protocol=few_shot", "suite=standard", "method=zsclip", "datasets=[eurosat]", "seeds=[1]",
                            "shots=[1]", f"data.root={tmp_path / 'data'}"])
        summary = runner.run(cfg, expand_units(cfg))
        record = read_result(summary.paths[0])
        assert record["status"] == "done", record["error"]
        return record["faithfulness"]["data_files"]["eurosat"]

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    files = recorded(tmp_path / "first")
    index = fewshot_path(tmp_path / "first" / "cache", "eurosat", 1, 1)
    assert files == {"split": {"file": split_file.name, "sha256": sha256(split_file)},
                     "fewshot": {"file": index.name, "sha256": sha256(index)}}
    split = json.loads(split_file.read_text())
    split["test"] = split["test"][:-1]  # an edited split file: another hash, recorded as such
    split_file.write_text(json.dumps(split))
    edited = recorded(tmp_path / "second")
    assert edited["split"] == {"file": split_file.name, "sha256": sha256(split_file)}
    assert edited["split"]["sha256"] != files["split"]["sha256"]


# -- 8. rough edges ----------------------------------------------------------------------------------------------
def test_bare_command_list_hint_and_pretrain_syntax(capsys):
    assert main([]) == 0 and "COMMAND" in capsys.readouterr().out
    assert main(["dry-run", "seeds=1,2"]) == 2 and "seeds=[1,2]" in capsys.readouterr().err
    assert pretrain_argv(["steps=200", "batch_size=64", "--seed", "1"]) == \
        ["--steps", "200", "--batch-size", "64", "--seed", "1"]
    for command, key in (("sweep", "sweep.params"), ("table", "tables/"), ("validate", "data.paths")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert key in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pretrain-toy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 1300)", "(default: 128)", "(default: 30000)", "(default: 0.001)", "(default: 0.6)",
                    "(default: 0.4)", "(default: 1)", "(default: 0)", "default: toy_clip/toy_clip.pt"):
        assert default in text, default
    assert "key=value" in text and "(default: None)" not in text


def test_dry_run_into_a_closed_pipe_exits_quietly():
    proc = subprocess.run(f"{sys.executable} -m dplbench dry-run | head -1", shell=True, capture_output=True,
                          text=True)
    assert proc.stdout.strip() and "Traceback" not in proc.stderr and "Broken" not in proc.stderr


def test_gitignore_covers_every_workspace_folder():
    from dplbench.workspace import Workspace

    repo = Path(__file__).resolve().parents[1]
    ws = Workspace(repo / "results")
    paths = [ws.runs, ws.cache, ws.checkpoints, ws.tables, ws.plots, ws.sweeps, ws.ray, ws.logs, ws.mlflow_db,
             ws.mlflow_artifacts, ws.mlflow_lock, ws.leases, ws.leases_lock, ws.sessions]
    rel = [str(p.relative_to(repo)) + ("/x" if p.suffix == "" and not p.name.startswith(".") else "") for p in paths]
    proc = subprocess.run(["git", "check-ignore", *rel], cwd=repo, capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(rel)
    kept = subprocess.run(["git", "check-ignore", "results/reference/reference_numbers.csv"], cwd=repo)
    assert kept.returncode == 1


def test_plot_creates_no_mlflow_run(tmp_path, capsys):
    _run(tmp_path, "method=coop", "datasets=[toy_shapes_noisy]", "seeds=[1]")
    main(["plot", f"run.output_dir={tmp_path}"])
    assert not (tmp_path / "mlflow.db").exists()


def test_a_copied_results_folder_never_writes_into_the_original(tmp_path, capsys):
    import shutil
    from urllib.parse import unquote, urlparse

    from mlflow.tracking import MlflowClient

    from dplbench.workspace import Workspace

    def run_unit(out: Path, seed: int):
        cfg = build_config([f"run.output_dir={out}", "ray.enabled=false", "method=coop",
                            "datasets=[toy_shapes_noisy]", f"seeds=[{seed}]"])
        return runner.run(cfg, expand_units(cfg), executor=fake_execute)

    original, copy = tmp_path / "original", tmp_path / "copy"
    run_unit(original, 1)
    shutil.copytree(original, copy)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in original.rglob("*")}
    summary = run_unit(copy, 2)  # tracking on: a unit run with its result artifact
    assert main(["table", f"run.output_dir={copy}", "report.n_boot=20"]) == 0
    assert main(["plot", f"run.output_dir={copy}", "report.n_boot=20"]) == 0
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in original.rglob("*")} == before

    client = MlflowClient(summary.tracking_uri)
    assert summary.tracking_uri == Workspace.at(copy).mlflow_uri
    runs = client.search_runs([client.get_experiment_by_name("dplbench").experiment_id])
    units = [r for r in runs if r.data.tags.get("dplbench.role") == "unit"]
    assert sorted(r.data.tags["dplbench.seed"] for r in units) == ["1", "2"]
    for run in runs:  # old and new runs alike point into the copy
        folder = Path(unquote(urlparse(run.info.artifact_uri).path))
        assert folder.is_relative_to(Workspace.at(copy).mlflow_artifacts), run.info.artifact_uri
    (new,) = [r for r in units if r.data.tags["dplbench.seed"] == "2"]
    assert list((Path(unquote(urlparse(new.info.artifact_uri).path)) / "result").glob("*.json"))


# -- 9. Python API -------------------------------------------------------------------------------------------
def test_python_api_resolves_like_the_command_line():
    import dplbench

    cfg = dplbench.resolve_config(methods=["coop"], train={"epochs": 2}, **{"method.n_ctx": 8})
    assert cfg.train.epochs == 2 and cfg.method.n_ctx == 8 and list(cfg.methods) == ["coop"]
    assert callable(dplbench.run) and callable(dplbench.table)
