"""Orchestration: Ray Tune runs, failure isolation, resume after kill -9, MLflow mirror, pre-flight, sweeps.

The pure-orchestration tests inject a fake executor (deterministic metrics, an option value that fails like a
NaN loss); the end-to-end tests at the bottom use the real ``dplbench.execute.execute_unit`` on the toy suite.
One Ray instance (2 CPUs) serves the whole session (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dplbench.config import build_config
from dplbench.errors import ConfigError
from dplbench.orchestrate import runner
from dplbench.orchestrate.preflight import ResourceError
from dplbench.results import ResultStore, read_result
from dplbench.units import expand_units

REPO = Path(__file__).resolve().parent.parent
FAIL_N_CTX = 13  # the fake executor fails like a NaN loss for coop with method.n_ctx=13


def fake_execute(unit, runtime, on_epoch=None):
    """Two 'epochs', metrics derived from the unit; fails like a diverged run for n_ctx == FAIL_N_CTX."""
    for epoch in (1, 2):
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "lr": 0.1, "loss": 1.0 / epoch})
        if unit.options.get("n_ctx") == FAIL_N_CTX and epoch == 2:
            raise FloatingPointError("non-finite loss (nan) at epoch 2")
    lr = unit.settings.train.lr or 0.002
    n_ctx = unit.options.get("n_ctx", 4)
    return {"metrics": {"base": 70.0 + n_ctx, "novel": 60.0 + 100 * lr, "hm": 0.0},
            "history": [], "faithfulness": {"precision": "fp32"}, "extra": {}}


@pytest.fixture(autouse=True)
def _pickle_this_module_by_value():
    """Ray workers cannot import this test module: ship its functions by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def make_cfg(out: Path, *overrides: str):
    return build_config(["method=[zsclip,coop]", "dataset=toy_shapes", "seeds=[1]", f"run.output_dir={out}",
                         *overrides])


def result_files(out: Path) -> list[Path]:
    return sorted((out / "runs").rglob("*.json"))


# -- pre-flight ---------------------------------------------------------------------------------------------------
def test_gpu_request_on_a_cpu_cluster_fails_at_once(ray_instance, tmp_path):
    cfg = make_cfg(tmp_path, "ray.gpus_per_trial=0.5")
    start = time.perf_counter()
    with pytest.raises(ResourceError) as err:
        runner.run(cfg, expand_units(cfg), executor=fake_execute)
    assert time.perf_counter() - start < 15
    message = str(err.value)
    assert "ray.gpus_per_trial=0.5" in message and "no GPU" in message and "\n" not in message
    assert not (tmp_path / "mlflow.db").exists() and not result_files(tmp_path)  # nothing started


def test_more_cpus_per_trial_than_the_cluster_has_fails_at_once(ray_instance, tmp_path):
    cfg = make_cfg(tmp_path, "ray.cpus_per_trial=3", "tracking.enabled=false")
    with pytest.raises(ResourceError, match=r"ray.cpus_per_trial=3 .* at most 2"):
        runner.run(cfg, expand_units(cfg), executor=fake_execute)


def test_cuda_device_without_a_gpu_per_trial_is_a_config_error(tmp_path):
    cfg = make_cfg(tmp_path, "run.device=cuda", "tracking.enabled=false")
    with pytest.raises(ConfigError, match="ray.gpus_per_trial"):
        runner.run(cfg, expand_units(cfg), executor=fake_execute)


def test_attaching_to_a_missing_cluster_names_the_address_and_the_token(monkeypatch, tmp_path):
    import ray

    from dplbench.orchestrate import session
    from dplbench.orchestrate.session import RayConnectionError, _connect

    def refuse(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nmore")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(session, "ensure_reachable", lambda address: None)  # the address answers; ray.init refuses
    with pytest.raises(RayConnectionError, match=r"ray.address=ray://nowhere:10001.*RAY_AUTH_TOKEN"):
        _connect("ray://nowhere:10001", tmp_path)


# -- runs ---------------------------------------------------------------------------------------------------------
def test_ray_run_isolates_a_failing_unit_mirrors_mlflow_and_resumes(ray_instance, output_dir):
    from mlflow.tracking import MlflowClient

    cfg = make_cfg(output_dir, f"method.n_ctx={FAIL_N_CTX}")
    units = expand_units(cfg)
    summary = runner.run(cfg, units, executor=fake_execute)
    assert (summary.total, summary.done, summary.failed, summary.skipped) == (2, 1, 1, 0) and not summary.ok
    records = {r["unit"]["method"]: r for r in map(read_result, summary.paths)}
    assert records["zsclip"]["status"] == "done" and records["zsclip"]["metrics"]["base"] == 74.0
    assert [h["epoch"] for h in records["zsclip"]["history"]] == [1, 2]
    failed = records["coop"]
    assert failed["status"] == "failed" and failed["metrics"] == {}
    assert failed["error"] == "FloatingPointError: non-finite loss (nan) at epoch 2"
    assert failed["unit"]["overrides"] == {"method.n_ctx": FAIL_N_CTX} and "traceback" in failed["extra"]
    assert failed["extra"]["trial"]["name"] == [u.name for u in units if u.method == "coop"][0]
    assert [p.name for p in (output_dir / "ray").iterdir()][0].startswith("run-base2novel-")  # absolute storage

    client = MlflowClient(summary.tracking_uri)
    assert summary.tracking_uri == f"sqlite:///{(output_dir / 'mlflow.db').as_posix()}"
    experiment = client.get_experiment_by_name("dplbench")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_id == summary.parent_run_id][0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.status == "FAILED" and parent.data.metrics == {"done": 1, "failed": 1, "skipped": 0}
    assert set(children) == {u.name for u in units}
    zs = children[[u.name for u in units if u.method == "zsclip"][0]]
    assert zs.info.status == "FINISHED" and zs.data.metrics["base"] == 74.0
    assert [m.step for m in client.get_metric_history(zs.info.run_id, "loss")] == [1, 2]
    assert {a.path for a in client.list_artifacts(zs.info.run_id)} == {"config.json", "result"}
    coop = children[[u.name for u in units if u.method == "coop"][0]]
    assert coop.info.status == "FAILED" and "nan" in coop.data.tags["dplbench.error"]

    # rerun (in process: the same resume logic, without a second Tune start): the finished unit is skipped
    # (file untouched), the failed one is retried
    done_path = [p for p in summary.paths if "zsclip" in str(p)][0]
    before = done_path.stat().st_mtime_ns
    cfg.ray.enabled = False
    again = runner.run(cfg, units, executor=fake_execute)
    assert (again.skipped, again.done, again.failed) == (1, 0, 1)
    assert done_path.stat().st_mtime_ns == before and len(result_files(output_dir)) == 2


def test_in_process_run_writes_the_same_files_and_force_recomputes(tmp_path):
    cfg = make_cfg(tmp_path, "ray.enabled=false", "tracking.enabled=false")
    units = expand_units(cfg)
    first = runner.run(cfg, units, executor=fake_execute)
    assert (first.done, first.failed) == (2, 0)
    assert [p.relative_to(tmp_path).as_posix() for p in first.paths] == [
        f"runs/base2novel/{u.method}/toy_shapes/shots16_seed1_{u.config_hash[:8]}.json" for u in units]
    assert runner.run(cfg, units, executor=fake_execute).skipped == 2
    started = [read_result(p)["timing"]["started"] for p in first.paths]
    time.sleep(1.1)
    cfg.run.force = True
    forced = runner.run(cfg, units, executor=fake_execute)
    assert (forced.done, forced.skipped) == (2, 0)
    assert [read_result(p)["timing"]["started"] for p in first.paths] != started
    assert len(result_files(tmp_path)) == 2


def test_dry_run_shows_status_and_starts_nothing(tmp_path, monkeypatch):
    import dplbench.orchestrate.session as session
    import dplbench.orchestrate.tracking as tracking

    def forbidden(*args, **kwargs):
        raise AssertionError("dry-run must not start Ray or MLflow")

    cfg = make_cfg(tmp_path, "seeds=[1,2]")
    units = expand_units(cfg)
    runner.run(make_cfg(tmp_path, "ray.enabled=false", "tracking.enabled=false"), units[:1], executor=fake_execute)
    monkeypatch.setattr(session, "ray_session", forbidden)
    monkeypatch.setattr(tracking, "start_parent", forbidden)
    text = runner.dry_run(cfg, units)
    lines = text.splitlines()
    assert lines[0].split() == ["#", "method", "dataset", "shots", "seed", "overrides", "hash", "status"]
    assert lines[2].split()[-1] == "done" and all(line.split()[-1] == "pending" for line in lines[3:6])
    assert "4 unit(s) for protocol base2novel (suite toy): 1 done, 0 failed, 3 pending" in text
    assert "resolved config:" in text and "cpus_per_trial" in text


# -- kill -9 and resume -------------------------------------------------------------------------------------------
KILL_SCRIPT = """
import sys, time
from dplbench.config import build_config
from dplbench.orchestrate.runner import run
from dplbench.units import expand_units

def slow_execute(unit, runtime, on_epoch=None):
    time.sleep(3.0)
    return {"metrics": {"base": 80.0, "novel": 70.0, "hm": 74.7}, "history": [], "faithfulness": {}, "extra": {}}

cfg = build_config(sys.argv[2:])
run(cfg, expand_units(cfg), executor=slow_execute)
"""


def must_not_run(unit, runtime, on_epoch=None):
    raise AssertionError(f"{unit.name} was recomputed")


def quick_execute(unit, runtime, on_epoch=None):
    return {"metrics": {"base": 80.0, "novel": 70.0, "hm": 74.7}, "history": [], "faithfulness": {}, "extra": {}}


def test_kill_9_loses_no_finished_unit_and_rerun_completes_without_duplicates(tmp_path):
    from dplbench.orchestrate.processes import pid_alive
    from dplbench.orchestrate.session import clean_stale_sessions, proven_processes
    from dplbench.workspace import Workspace

    script = tmp_path / "killme.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    overrides = ["method=[zsclip,coop]", "dataset=toy_shapes", "seeds=[1,2]", f"run.output_dir={tmp_path}",
                 "tracking.enabled=false", "ray.max_concurrent=1", "ray.num_cpus=1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), "run", *overrides], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        while not result_files(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert result_files(tmp_path), "the run wrote no result file in time"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    survivors = {p: p.stat().st_mtime_ns for p in result_files(tmp_path)}
    assert 1 <= len(survivors) < 4

    # the killed driver's session record is found by the next run, which stops whatever is left of exactly that
    # Ray session (on Linux Ray's own processes usually die with their driver; workers may linger)
    records = list(Workspace.at(tmp_path).sessions.glob("*.json"))
    assert len(records) == 1
    session = json.loads(records[0].read_text())
    assert session["driver"]["pid"] == proc.pid and not pid_alive(proc.pid) and session["processes"]
    stopped = clean_stale_sessions(Workspace.at(tmp_path))
    assert not any(pid_alive(pid) for pid in stopped)
    assert proven_processes(session) == [] and not records[0].exists()

    cfg = build_config(overrides + ["ray.enabled=false"])
    units = expand_units(cfg)
    summary = runner.run(cfg, units, executor=quick_execute)
    assert summary.skipped == len(survivors) and summary.done == 4 - len(survivors) and summary.ok
    files = result_files(tmp_path)
    assert len(files) == 4 and sorted(files) == sorted(summary.paths)  # exactly one file per unit
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in survivors.items())
    assert all(ResultStore(tmp_path).is_done(u.unit_dict(), u.config_hash) for u in units)


def test_runs_left_running_by_a_killed_invocation_are_closed_by_the_next_one(output_dir):
    import socket

    from mlflow.tracking import MlflowClient

    from dplbench.orchestrate import tracking

    cfg = build_config([f"run.output_dir={output_dir}"])
    client = MlflowClient(tracking.tracking_uri(cfg))
    experiment_id = client.create_experiment(cfg.tracking.experiment)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()

    def new_run(pid=None, parent=None, other_host=False):
        tags = {"dplbench.role": "parent", "dplbench.host": "elsewhere" if other_host else host,
                "dplbench.pid": str(pid)} if pid else {"dplbench.role": "unit", "mlflow.parentRunId": parent}
        return client.create_run(experiment_id, tags=tags).info.run_id

    killed = new_run(pid=int(dead.stdout))                       # its driver was kill -9'd
    trial = new_run(parent=killed)                               # a sweep trial of it, and the trial's unit
    trial_unit, finished_unit = new_run(parent=trial), new_run(parent=killed)
    client.set_terminated(finished_unit, "FINISHED")
    ended = new_run(pid=os.getpid())                             # Ctrl-C: parent ended, its workers' runs not
    client.set_terminated(ended, "FAILED")
    orphan = new_run(parent=ended)
    live, remote = new_run(pid=os.getpid()), new_run(pid=int(dead.stdout), other_host=True)
    live_unit = new_run(parent=live)

    info = tracking.start_parent(cfg, "next", {}, {})
    status = {run_id: client.get_run(run_id).info.status
              for run_id in (killed, trial, trial_unit, finished_unit, ended, orphan, live, live_unit, remote)}
    assert status == {killed: "KILLED", trial: "KILLED", trial_unit: "KILLED", finished_unit: "FINISHED",
                      ended: "FAILED", orphan: "KILLED", live: "RUNNING", live_unit: "RUNNING", remote: "RUNNING"}
    tags = client.get_run(info.parent_run_id).data.tags
    assert tags["dplbench.pid"] == str(os.getpid()) and tags["dplbench.host"] == host
    assert tags["dplbench.role"] == "parent"


# -- sweeps -------------------------------------------------------------------------------------------------------
def test_a_unit_run_batches_its_mlflow_calls(output_dir, monkeypatch):
    """A short unit sends its parameters, every epoch's metrics and its final metrics in one log_batch call; a
    long one still shows progress (held metrics go out once FLUSH_SECONDS have passed)."""
    from mlflow.tracking import MlflowClient

    from dplbench.orchestrate import tracking

    cfg = make_cfg(output_dir)
    unit = expand_units(cfg)[0]
    info = tracking.start_parent(cfg, "batching", {}, {})
    calls: list[str] = []
    log_batch = MlflowClient.log_batch

    def counted(self, run_id, **kwargs):
        calls.append(run_id)
        return log_batch(self, run_id, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counted)
    run = tracking.UnitRun(info, unit)
    for epoch in range(1, 31):
        run.log_epoch({"epoch": epoch, "loss": 1.0 / epoch})
    run.finish({"status": "failed", "error": "ValueError: boom", "metrics": {"base": 70.0},
                "history": [{}] * 30}, None)
    assert calls == [run.run_id]
    client = MlflowClient(info.uri)
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == list(range(1, 31))
    logged = client.get_run(run.run_id)
    assert logged.data.params["config_hash"] == unit.config_hash and logged.data.metrics["base"] == 70.0
    assert logged.info.status == "FAILED" and logged.data.tags["dplbench.error"] == "ValueError: boom"
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"config.json"}

    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 0.0)
    live = tracking.UnitRun(info, unit)
    calls.clear()
    live.log_epoch({"epoch": 1, "loss": 0.5})
    assert calls == [live.run_id] and client.get_run(live.run_id).data.params["config_hash"] == unit.config_hash
    assert client.get_run(live.run_id).info.status == "RUNNING"


def test_epoch_reports_to_ray_tune_are_throttled_and_the_end_is_always_reported(tmp_path, monkeypatch):
    from dplbench.orchestrate import trial
    from dplbench.runtime import Runtime

    def fifty_epochs(unit, runtime, on_epoch=None):
        for epoch in range(1, 51):
            on_epoch({"epoch": epoch, "loss": 1.0 / epoch})
        return {"metrics": {"base": 1.0, "novel": 1.0, "hm": 1.0}, "history": []}

    runtime = Runtime.from_config(device="cpu", output_dir=str(tmp_path))
    for seconds, epochs_reported in ((3600.0, [1]), (0.0, list(range(1, 51)))):
        monkeypatch.setattr(trial, "REPORT_SECONDS", seconds)
        reports: list[dict] = []
        unit = expand_units(make_cfg(tmp_path, f"seeds=[{len(epochs_reported)}]"))[0]
        outcome = trial.execute_and_record(unit, runtime, executor=fifty_epochs, report=reports.append)
        assert [r["epoch"] for r in reports if "epoch" in r] == epochs_reported
        assert reports[-1]["status"] == "done" and len(outcome.record["history"]) == 50


def test_grid_sweep_2x2_runs_4_trials_into_the_store_and_mlflow(ray_instance, output_dir):
    from mlflow.tracking import MlflowClient

    from dplbench.orchestrate.sweep import evaluate_configuration, run_sweep

    cfg = build_config(["method=coop", "dataset=toy_shapes", "seeds=[1]", f"run.output_dir={output_dir}",
                        "sweep.params.method.n_ctx=[2,8]", "sweep.params.train.lr=[0.1,0.01]"])
    summary = run_sweep(cfg, executor=fake_execute)
    assert len(summary.trials) == 4 and summary.ok and summary.search == "grid"
    by_params = {(t["params"]["method.n_ctx"], t["params"]["train.lr"]): t["objective"] for t in summary.trials}
    assert set(by_params) == {(2, 0.1), (2, 0.01), (8, 0.1), (8, 0.01)}
    assert by_params[(8, 0.1)] == pytest.approx(2 * 78 * 70 / 148)  # HM(base 70+8, novel 60+100*0.1)
    assert summary.best["params"] == {"method.n_ctx": 8, "train.lr": 0.1}
    records = [read_result(p) for p in result_files(output_dir)]
    assert sorted((r["unit"]["overrides"]["method.n_ctx"], r["unit"]["overrides"]["train.lr"]) for r in records) \
        == sorted(by_params)
    saved = json.loads(Path(summary.summary_path).read_text())
    assert len(saved["trials"]) == 4 and saved["metric"] == "hm"

    client = MlflowClient(summary.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("dplbench").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary.parent_run_id]
    assert len(trial_runs) == 4 and all(r.data.tags["dplbench.role"] == "sweep_trial" for r in trial_runs)
    unit_runs = [r for r in runs if r.data.tags.get("dplbench.role") == "unit"]
    assert {r.data.tags["mlflow.parentRunId"] for r in unit_runs} == {r.info.run_id for r in trial_runs}

    # a rerun of a configuration reuses its finished units (the executor is never called) and gives the same value
    mtimes = {p: p.stat().st_mtime_ns for p in result_files(output_dir)}
    again = evaluate_configuration(cfg, {"method.n_ctx": 8, "train.lr": 0.1}, "hm", executor=must_not_run)
    assert again["ran"] == 0 and again["objective"] == by_params[(8, 0.1)]
    assert {p: p.stat().st_mtime_ns for p in result_files(output_dir)} == mtimes


def test_optuna_sweep_records_its_seeded_sampler(ray_instance, tmp_path):
    from dplbench.orchestrate.sweep import run_sweep

    cfg = build_config(["method=coop", "dataset=toy_shapes", "seeds=[1]", f"run.output_dir={tmp_path}",
                        "tracking.enabled=false", "sweep.search=optuna", "sweep.num_samples=2",
                        "sweep.sampler_seed=7", "sweep.params.method.n_ctx=[2,4,8]"])
    summary = run_sweep(cfg, executor=fake_execute)
    assert len(summary.trials) == 2 and summary.sampler == "TPESampler"
    assert summary.sampler_seed == 7 and summary.optuna_version
    assert all(t["objective"] is not None for t in summary.trials)


def test_a_sweep_under_ray_prints_each_unit_of_a_trial_as_it_finishes(ray_instance, tmp_path, capsys):
    from dplbench.orchestrate.sweep import run_sweep

    cfg = build_config(["method=coop", "datasets=[toy_shapes,toy_colors]", "seeds=[1]", f"run.output_dir={tmp_path}",
                        "tracking.enabled=false", "sweep.params.method.n_ctx=[2,8]"])
    units = {n_ctx: [u.name for u in expand_units(build_config(
        ["method=coop", "datasets=[toy_shapes,toy_colors]", "seeds=[1]", f"method.n_ctx={n_ctx}"]),
        extra_overrides={"method.n_ctx": n_ctx})] for n_ctx in (2, 8)}
    capsys.readouterr()
    assert run_sweep(cfg, executor=fake_execute).ok
    lines = capsys.readouterr().out.splitlines()
    trial_ends = [i for i, line in enumerate(lines) if line.startswith(("[1/2]", "[2/2]"))]
    assert len(trial_ends) == 2
    for n_ctx, names in units.items():  # one line per unit, inside its trial: before the trial's own line
        for name in names:
            (at,) = [i for i, line in enumerate(lines) if name in line]
            assert lines[at].split()[0] == "done" and f"(trial method.n_ctx={n_ctx})" in lines[at]
            assert at < trial_ends[-1] and f"base={70 + n_ctx:.2f}" in lines[at]


# -- end to end with the real executor on the toy suite -----------------------------------------------------------
@pytest.fixture(scope="module")
def random_toy_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised toy CLIP (tests must not depend on the shipped pretrained checkpoint)."""
    from dplbench.toy.model import build_toy_clip, checkpoint_state, save_checkpoint

    path = tmp_path_factory.mktemp("toyclip") / "random_toy_clip.pt"
    save_checkpoint(checkpoint_state(build_toy_clip(), []), path)
    return path


def test_real_units_run_as_ray_trials_and_a_missing_dataset_fails_alone(ray_instance, output_dir, tmp_path,
                                                                         random_toy_checkpoint):
    empty_root = tmp_path / "no-data"
    empty_root.mkdir()
    cfg = build_config(["method=[zsclip,coop]", "datasets=[toy_shapes,dtd]", "seeds=[1]", "train.epochs=1",
                        f"run.output_dir={output_dir}", f"data.root={empty_root}",
                        f"backbone.checkpoint={random_toy_checkpoint}"])
    units = expand_units(cfg)
    summary = runner.run(cfg, units)
    assert (summary.total, summary.done, summary.failed) == (4, 2, 2)
    for record in map(read_result, summary.paths):
        if record["unit"]["dataset"] == "toy_shapes":
            assert record["status"] == "done" and set(record["metrics"]) >= {"base", "novel", "hm"}
            assert record["environment"]["packages"]["torch"]
            if record["unit"]["method"] == "coop":
                assert [h["epoch"] for h in record["history"]] == [1]
        else:
            assert record["status"] == "failed" and "dtd" in record["error"]


@pytest.mark.slow
def test_real_grid_sweep_2x2(ray_instance, output_dir, random_toy_checkpoint):
    from dplbench.orchestrate.sweep import run_sweep

    cfg = build_config(["method=coop", "dataset=toy_shapes", "seeds=[1]", "train.epochs=1",
                        f"run.output_dir={output_dir}", f"backbone.checkpoint={random_toy_checkpoint}",
                        "sweep.params.train.batch_size=[8,16]", "sweep.params.train.lr=[0.002,0.02]"])
    summary = run_sweep(cfg)
    assert len(summary.trials) == 4 and summary.ok
    assert all(t["objective"] is not None for t in summary.trials)
    assert len(result_files(output_dir)) == 4
