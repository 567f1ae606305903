"""Runs sharing one output folder: MLflow database creation under a lock, unit leases (no unit computed twice),
per-invocation Ray session records whose cleanup kills only provable Ray processes, crash hygiene of MLflow runs.

Executor calls are counted through files (one file per call, named by unit hash and pid), so counts survive the
processes that made them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dplbench.config import build_config
from dplbench.errors import DplbenchError
from dplbench.orchestrate import lease, runner
from dplbench.orchestrate.processes import ProcessId, children_of, pid_alive, start_time
from dplbench.results import ResultStore, read_result
from dplbench.units import expand_units
from dplbench.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
UNITS = ["protocol=base2novel", "method=[zsclip,coop]", "dataset=toy_shapes", "seeds=[1,2]"]

RUN_SCRIPT = """
import os, sys, time, uuid
from pathlib import Path
from dplbench.config import build_config
from dplbench.orchestrate.runner import run
from dplbench.units import expand_units

CALLS = Path(sys.argv[1])
SLEEP = float(sys.argv[2])

def counting_execute(unit, runtime, on_epoch=None):
    CALLS.mkdir(parents=True, exist_ok=True)
    (CALLS / f"{unit.config_hash}-{os.getpid()}-{uuid.uuid4().hex[:6]}").write_text("")
    time.sleep(SLEEP)
    return {"metrics": {"base": 80.0 + unit.seed, "novel": 70.0, "hm": 74.7}, "history": [], "faithfulness": {},
            "extra": {}}

cfg = build_config(sys.argv[3:])
summary = run(cfg, expand_units(cfg), executor=counting_execute)
sys.exit(0 if summary.ok else 1)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def start_runs(tmp_path: Path, out: Path, overrides: list[str], count: int = 2, delay_s: float = 0.0,
               sleep_s: float = 1.0) -> list[subprocess.Popen]:
    script = tmp_path / "run_counting.py"
    script.write_text(textwrap.dedent(RUN_SCRIPT))
    procs = []
    for i in range(count):
        if i and delay_s:
            time.sleep(delay_s)
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(out / "calls"), str(sleep_s), *UNITS, f"run.output_dir={out}",
             *overrides], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for proc in procs:
        try:
            text, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        out.append((proc.returncode, text))
    return out


def assert_each_unit_once(out: Path, tracking: bool) -> None:
    """Exactly one done result file and one executor call per unit; with tracking, one FINISHED MLflow unit run
    per unit, no run left RUNNING, and a database that still answers."""
    cfg = build_config([*UNITS, f"run.output_dir={out}"])
    units = expand_units(cfg)
    files = sorted((out / "runs").rglob("*.json"))
    store = ResultStore(out)
    assert sorted(files) == sorted(store.path_for(u.unit_dict(), u.config_hash) for u in units)
    assert all(read_result(p)["status"] == "done" for p in files)
    calls = sorted(p.name.split("-")[0] for p in (out / "calls").iterdir())
    assert calls == sorted(u.config_hash for u in units), "a unit was computed more than once (or never)"
    assert not list(Workspace.at(out).leases.glob("*.json"))
    if tracking:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(Workspace.at(out).mlflow_uri)
        experiment = client.get_experiment_by_name("dplbench")
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        unit_runs = [r for r in runs if r.data.tags.get("dplbench.role") == "unit"]
        assert sorted(r.data.tags["dplbench.config_hash"] for r in unit_runs) == sorted(u.config_hash for u in units)
        assert {r.info.status for r in unit_runs} == {"FINISHED"}
        assert all(r.info.status != "RUNNING" for r in runs)


# -- two runs into one fresh folder -------------------------------------------------------------------------------
@pytest.mark.parametrize("delay_s", [0.0, pytest.param(1.5, marks=pytest.mark.slow)],
                         ids=["same-instant", "staggered"])
def test_two_runs_at_once_share_the_work_and_the_database(tmp_path, delay_s):
    out = tmp_path / "out"
    procs = start_runs(tmp_path, out, ["ray.enabled=false"], delay_s=delay_s)
    results = finish(procs)
    assert [rc for rc, _ in results] == [0, 0], "\n".join(text[-3000:] for _, text in results)
    assert_each_unit_once(out, tracking=True)


@pytest.mark.slow
@pytest.mark.parametrize("delay_s", [0.0, 10.0], ids=["same-instant", "staggered"])
def test_two_ray_runs_at_once_share_the_work_and_the_database(tmp_path, delay_s):
    out = tmp_path / "out"
    procs = start_runs(tmp_path, out, ["ray.num_cpus=2"], delay_s=delay_s, sleep_s=3.0)
    results = finish(procs, timeout=500)
    assert [rc for rc, _ in results] == [0, 0], "\n".join(text[-3000:] for _, text in results)
    assert_each_unit_once(out, tracking=True)
    assert not list(Workspace.at(out).sessions.glob("*.json"))  # each run removed its own record only


# -- leases -------------------------------------------------------------------------------------------------------
@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def write_lease(workspace: Workspace, chash: str, owner: ProcessId) -> None:
    workspace.leases.mkdir(parents=True, exist_ok=True)
    workspace.lease(chash).write_text(json.dumps(owner.to_dict()))


def test_a_lease_of_a_live_process_is_respected_and_a_stale_one_taken_over(tmp_path, sleeper):
    workspace = Workspace.at(tmp_path)
    live = ProcessId.of(sleeper.pid)
    assert live.start is not None and live.alive()
    write_lease(workspace, "h1", live)
    assert lease.try_claim(workspace, "h1") == live
    claim = lease.acquire(workspace, "h1", tmp_path / "r.json", lambda: False, wait_s=0.3, poll_s=0.05)
    assert claim.busy_with == live and claim.lease is None

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for stale in (ProcessId(live.host, int(dead.stdout), 12345),           # its process is gone
                  ProcessId(live.host, sleeper.pid, live.start - 1)):      # pid reused by another process
        write_lease(workspace, "h2", stale)
        got = lease.try_claim(workspace, "h2")
        assert isinstance(got, lease.Lease) and lease.holder(workspace.lease("h2")) == ProcessId.current()
        lease.release(got, workspace)
        assert not workspace.lease("h2").exists()
    write_lease(workspace, "h3", ProcessId("another-host", sleeper.pid, 1))  # cannot be checked: respected
    assert isinstance(lease.try_claim(workspace, "h3"), ProcessId)


def test_a_waiting_run_takes_the_owners_result_instead_of_recomputing(tmp_path, sleeper):
    workspace = Workspace.at(tmp_path)
    result = tmp_path / "result.json"
    write_lease(workspace, "h", ProcessId.of(sleeper.pid))

    def owner_finishes():
        time.sleep(0.3)
        result.write_text("{}")
        workspace.lease("h").unlink()

    threading.Thread(target=owner_finishes).start()
    claim = lease.acquire(workspace, "h", result, lambda: False, wait_s=10, poll_s=0.05)
    assert claim.settled and claim.lease is None and not workspace.lease("h").exists()


def test_a_unit_leased_by_a_live_run_is_not_computed_and_reported_busy(tmp_path, sleeper, monkeypatch):
    monkeypatch.setattr(lease, "WAIT_S", 0.5)
    cfg = build_config([*UNITS, f"run.output_dir={tmp_path}", "ray.enabled=false", "tracking.enabled=false"])
    units = expand_units(cfg)
    leased = units[0]
    write_lease(Workspace.at(tmp_path), leased.config_hash, ProcessId.of(sleeper.pid))
    computed = []

    def execute(unit, runtime, on_epoch=None):
        computed.append(unit.name)
        return {"metrics": {"base": 1.0, "novel": 1.0, "hm": 1.0}, "history": [], "faithfulness": {}, "extra": {}}

    summary = runner.run(cfg, units, executor=execute)
    assert leased.name not in computed and len(computed) == len(units) - 1
    assert summary.busy == [(leased.name, str(ProcessId.of(sleeper.pid)))] and not summary.ok
    assert summary.failed == 0 and "busy: " in str(summary)
    assert ResultStore(tmp_path).load(leased.unit_dict(), leased.config_hash) is None  # no crash record written


# -- Ray session records ------------------------------------------------------------------------------------------
def test_stale_session_cleanup_kills_only_provable_ray_processes(tmp_path, sleeper):
    from dplbench.orchestrate.session import clean_stale_sessions

    workspace = Workspace.at(tmp_path)
    session_dir = str(tmp_path / "ray" / "session_2026-01-01_00-00-00_000000_1")
    os.makedirs(session_dir)
    spawn = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
    ray_like = subprocess.Popen([sys.executable, "-c", spawn + " time.sleep(120)", f"--session-dir={session_dir}"])
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", session_dir])
    reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--logs={session_dir}/logs"])
    procs = [ray_like, decoy, reused]
    try:
        deadline = time.monotonic() + 60
        while not (child := children_of({ray_like.pid}).get(ray_like.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the "raylet" has started its "worker"
        assert child
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        workspace.sessions.mkdir(parents=True)
        stale = workspace.session_record(int(dead.stdout), 1)
        stale.write_text(json.dumps({"driver": ProcessId(ProcessId.current().host, int(dead.stdout), 1).to_dict(),
                                     "session_dir": session_dir, "processes": [
                                         {"pid": ray_like.pid, "start": start_time(ray_like.pid)},
                                         {"pid": reused.pid, "start": start_time(reused.pid) - 1}]}))
        live = workspace.session_record(sleeper.pid, start_time(sleeper.pid))
        live.write_text(json.dumps({"driver": ProcessId.of(sleeper.pid).to_dict(), "session_dir": session_dir,
                                    "processes": [{"pid": decoy.pid, "start": start_time(decoy.pid)}]}))

        stopped = clean_stale_sessions(workspace)
        assert sorted(stopped) == sorted([ray_like.pid, *child])
        ray_like.wait(timeout=10)
        assert not any(pid_alive(pid) for pid in child)
        assert decoy.poll() is None and reused.poll() is None  # named the directory, proved nothing
        assert not stale.exists() and live.exists()             # the live run's record stays
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# -- MLflow database ----------------------------------------------------------------------------------------------
def test_a_broken_mlflow_database_is_one_line_with_the_way_out_and_results_stay_usable(tmp_path):
    def execute(unit, runtime, on_epoch=None):
        return {"metrics": {"base": 1.0, "novel": 1.0, "hm": 1.0}, "history": [], "faithfulness": {}, "extra": {}}

    db = Workspace.at(tmp_path).mlflow_db
    db.write_bytes(b"this is not a database" * 100)
    cfg = build_config([*UNITS, f"run.output_dir={tmp_path}", "ray.enabled=false"])
    with pytest.raises(DplbenchError) as err:
        runner.run(cfg, expand_units(cfg), executor=execute)
    message = str(err.value)
    assert "\n" not in message and f"delete {db}" in message and "tracking.enabled=false" in message
    cfg.tracking.enabled = False
    summary = runner.run(cfg, expand_units(cfg), executor=execute)
    assert summary.ok and summary.done == 4 and all(read_result(p)["status"] == "done" for p in summary.paths)


def test_a_crashed_workers_unit_run_is_closed_failed_with_the_reason(ray_instance, output_dir):
    from mlflow.tracking import MlflowClient

    def die_on_coop(unit, runtime, on_epoch=None):
        if unit.method == "coop":
            os.kill(os.getpid(), signal.SIGKILL)
        return {"metrics": {"base": 1.0, "novel": 1.0, "hm": 1.0}, "history": [], "faithfulness": {}, "extra": {}}

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        cfg = build_config(["method=[zsclip,coop]", "dataset=toy_shapes", "seeds=[1]", f"run.output_dir={output_dir}"])
        summary = runner.run(cfg, expand_units(cfg), executor=die_on_coop)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (summary.done, summary.failed) == (1, 1)
    client = MlflowClient(summary.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("dplbench").experiment_id])
    units = {r.data.tags["dplbench.method"]: r for r in runs if r.data.tags.get("dplbench.role") == "unit"}
    assert units["zsclip"].info.status == "FINISHED"
    assert units["coop"].info.status == "FAILED" and units["coop"].data.tags["dplbench.error"]
    record = read_result([p for p in summary.paths if "coop" in str(p)][0])
    assert record["extra"]["crashed"] and record["error"] == units["coop"].data.tags["dplbench.error"]


# -- kill -9 at random moments ------------------------------------------------------------------------------------
def _lease_holders(out: Path) -> list[int]:
    return [holder.pid for path in Workspace.at(out).leases.glob("*.json")
            if (holder := lease.holder(path)) is not None]


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["driver", "worker"])
def test_kill_9_at_a_random_moment_then_rerun_gives_each_unit_once_with_the_same_metrics(tmp_path, victim):
    """Kill -9 the driver, or a worker computing a unit (its pid is in the unit's lease), at a random moment; a
    rerun completes the matrix: one done result file per unit with the deterministic metrics, results that
    survived the kill untouched, one FINISHED MLflow unit run per unit and nothing left RUNNING."""
    rng = random.Random(f"{victim}-{os.getpid()}")
    out = tmp_path / "out"
    overrides = ["ray.num_cpus=2", "ray.max_concurrent=2"]
    (proc,) = start_runs(tmp_path, out, overrides, count=1, sleep_s=3.0)
    try:
        deadline = time.monotonic() + 240
        while not _lease_holders(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 4.0))
        holders = _lease_holders(out)
        assert holders and proc.poll() is None, "the run finished before the kill"
        os.kill(proc.pid if victim == "driver" else rng.choice(holders), signal.SIGKILL)
        if victim == "driver":
            proc.wait(timeout=30)
        else:
            assert proc.wait(timeout=240) == 1  # the killed unit is recorded as failed, the others go on
    finally:
        if proc.poll() is None:
            proc.kill()
    survivors = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json") if read_result(p)["status"] == "done"}
    (rc, text), = finish(start_runs(tmp_path, out, overrides, count=1, sleep_s=0.1), timeout=400)
    assert rc == 0, text[-3000:]
    cfg = build_config([*UNITS, f"run.output_dir={out}"])
    store = ResultStore(out)
    for unit in expand_units(cfg):
        record = store.load(unit.unit_dict(), unit.config_hash)
        assert record["status"] == "done" and record["metrics"] == {"base": 80.0 + unit.seed, "novel": 70.0,
                                                                    "hm": 74.7}
    assert len(list((out / "runs").rglob("*.json"))) == 4
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in survivors.items())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(Workspace.at(out).mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("dplbench").experiment_id], max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = sorted(r.data.tags["dplbench.config_hash"] for r in runs
                      if r.data.tags.get("dplbench.role") == "unit" and r.info.status == "FINISHED")
    assert finished == sorted(u.config_hash for u in expand_units(cfg))
    assert not list(Workspace.at(out).sessions.glob("*.json"))
