"""Issue #13 part B: no hangs on unreachable services, no tracebacks for user mistakes, safe defaults (workers do not
import the launch folder, local Ray on loopback, files follow the umask, TorchScript only for OpenAI weights, the
shipped toy checkpoint is never overwritten), honest provenance and one-line data errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from dplbench.errors import ConfigError, DataNotFoundError, WeightsNotFoundError

ROOT = Path(__file__).resolve().parent.parent
HANG_LIMIT_S = 15.0


def _cli(args: list[str], cwd: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dplbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - start


# -- 1. no hangs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, expected", [
    ("ray.address=127.0.0.1:1", "cannot attach to the Ray cluster at ray.address=127.0.0.1:1"),
    ("tracking.uri=http://127.0.0.1:1", "cannot reach the MLflow tracking server tracking.uri=http://127.0.0.1:1"),
])
def test_an_unreachable_service_fails_within_seconds_with_one_line(setting, expected, tmp_path):
    try:
        proc, seconds = _cli(["run", setting, "method=zsclip", "dataset=toy_shapes", "seeds=[1]",
                              f"run.output_dir={tmp_path / 'out'}"], tmp_path, timeout=3 * HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{setting}: still running after {3 * HANG_LIMIT_S:.0f} s")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], \
        proc.stderr[-2000:]
    assert seconds < HANG_LIMIT_S


def test_a_port_that_is_not_ray_is_refused_without_hanging(tmp_path):
    import socket
    import threading

    from dplbench.orchestrate.session import RayConnectionError, ensure_reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer_like_http1() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=answer_like_http1, daemon=True).start()
    start = time.perf_counter()
    with pytest.raises(RayConnectionError, match="does not speak gRPC"):
        ensure_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    assert time.perf_counter() - start < 10
    server.close()
    with pytest.raises(RayConnectionError, match="expected host:port"):
        ensure_reachable("ray://host:notaport")


def test_a_token_given_for_an_explicit_address_turns_on_token_auth(monkeypatch, tmp_path):
    from dplbench.orchestrate import session

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    session._enable_token_auth_if_token_given()
    assert "RAY_AUTH_MODE" not in os.environ               # no token: Ray's default is left alone
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    session._enable_token_auth_if_token_given()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")         # an explicit choice is kept
    session._enable_token_auth_if_token_given()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_MODE=token" in session.AUTH_HINT


# -- 2. user mistakes are one line --------------------------------------------------------------------------------
def test_output_folder_checks(tmp_path, monkeypatch):
    from dplbench.workspace import Workspace

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        Workspace.at(a_file).require_writable()
    with pytest.raises(ConfigError, match="cannot be created: .* is a file"):
        Workspace.at(a_file / "sub").require_writable()
    Workspace.at(tmp_path / "new" / "deeper").require_writable()  # creatable: fine
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    with pytest.raises(ConfigError, match="is not writable"):
        Workspace.at(locked).require_writable()
    with pytest.raises(ConfigError, match="cannot be created"):
        Workspace.at(locked / "out").require_writable()


def _checksummed(record: dict, path: Path) -> None:
    from dplbench.results import _checksum

    record = dict(record)
    record["checksum"] = _checksum(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


GOOD = {"format": "dplbench-result/1", "status": "done", "config_hash": "abcdef0123456789",
        "unit": {"protocol": "base2novel", "method": "coop", "dataset": "toy_shapes", "seed": 1, "shots": 16,
                 "overrides": {}},
        "metrics": {"base": 70.0, "novel": 60.0, "hm": 64.6}, "config": {}, "error": None}


@pytest.mark.parametrize("change, problem", [
    ({"unit": {**GOOD["unit"], "seed": "one"}}, "unit.seed is 'one', not an integer"),
    ({"unit": {**GOOD["unit"], "shots": 1.5}}, "unit.shots is 1.5"),
    ({"unit": {**GOOD["unit"], "method": 3}}, "unit.method is 3"),
    ({"metrics": {"base": "high"}}, "metrics.base is 'high', not a number"),
    ({"metrics": [1, 2]}, "metrics is not a mapping"),
    ({"config": "x"}, "config is not a mapping"),
])
def test_a_checksummed_result_with_wrong_types_is_skipped_with_a_warning(change, problem, tmp_path, capsys, caplog):
    from dplbench import cli

    runs = tmp_path / "out" / "runs" / "base2novel" / "coop" / "toy_shapes"
    _checksummed(GOOD, runs / "good.json")
    _checksummed({**GOOD, **change}, runs / "bad.json")
    assert cli.main(["table", "protocol=base2novel", f"run.output_dir={tmp_path / 'out'}"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(runs / "bad.json") in w and problem in w for w in warnings), warnings


# -- 3. security ----------------------------------------------------------------------------------------------------
PROBE_DRIVER = """
import json, os, socket, subprocess, sys
from dplbench.config import build_config
from dplbench.orchestrate.session import proven_processes, ray_session
from dplbench.workspace import Workspace
import ray

cfg = build_config(["method=zsclip", "dataset=toy_shapes", "seeds=[1]", "ray.num_cpus=1",
                    "run.output_dir=" + sys.argv[1]])
with ray_session(cfg):
    @ray.remote
    def worker_view():
        import importlib.util
        spec = importlib.util.find_spec("methods")
        return {"path": __import__("sys").path, "methods": spec.origin if spec else None}
    view = ray.get(worker_view.remote())
    (record,) = Workspace.at(sys.argv[1]).sessions.glob("*.json")  # this run's session record
    pids = set(proven_processes(json.loads(record.read_text())))
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    ours = [line.split()[3] for line in listening if any(f"pid={p}," in line for p in pids)]
print(json.dumps({"view": view, "listening": ours, "cwd": os.getcwd()}))
"""


def test_local_ray_keeps_the_launch_folder_off_workers_and_listens_on_loopback_only(tmp_path):
    """Ray puts the driver's working directory first on every worker's sys.path and (on Linux) listens on all
    interfaces; dplbench's local instance does neither."""
    launch = tmp_path / "launch"
    (launch / "methods").mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    (launch / "methods" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    driver = tmp_path / "driver" / "probe.py"
    driver.parent.mkdir()
    driver.write_text(PROBE_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "out")], cwd=launch, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(launch) not in report["view"]["path"]
    assert not str(report["view"]["methods"]).startswith(str(launch))
    assert report["cwd"] == str(launch)                                  # the driver's folder is restored
    assert report["listening"], "found no listening socket of the Ray session"
    assert all(a.rsplit(":", 1)[0].endswith(("127.0.0.1", "127.0.0.1]", "[::1]")) for a in report["listening"]), \
        report["listening"]
    assert not marker.exists()


@pytest.mark.slow
def test_a_real_toy_unit_under_ray_does_not_import_code_planted_in_the_launch_folder(tmp_path):
    launch = tmp_path / "launch"
    marker = tmp_path / "planted-code-ran"
    for package in ("methods", "open_clip"):  # open_clip: imported lazily inside the trial
        (launch / package).mkdir(parents=True)
        (launch / package / "__init__.py").write_text(
            f"open({str(marker)!r}, 'a').write({package!r})\nraise ImportError('planted')\n")
    proc, _ = _cli(["run", "method=zsclip", "dataset=toy_shapes_noisy", "seeds=[1]", "tracking.enabled=false",
                    "ray.num_cpus=1", f"run.output_dir={tmp_path / 'out'}"], launch, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert not marker.exists(), marker.read_text()
    record = json.loads(next((tmp_path / "out" / "runs").rglob("*.json")).read_text())
    assert record["status"] == "done"
    assert record["environment"]["argv"][:2] == ["dplbench", "run"]   # the user's command, not Ray's worker argv


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(umask, mode, tmp_path):
    from dplbench.fileio import atomic_torch_save, atomic_write_text
    from dplbench.results import ResultStore

    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({"x": 1}, tmp_path / "c.pt")
        path = ResultStore(tmp_path / "out").write({**GOOD})
    finally:
        os.umask(previous)
    for written in (tmp_path / "a.txt", tmp_path / "c.pt", path):
        assert written.stat().st_mode & 0o777 == mode, written


def _torchscript_file(path: Path) -> Path:
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    return path


def test_torchscript_is_opened_only_for_openai_architectures(tmp_path, monkeypatch):
    from dplbench.backbone import loading

    path = _torchscript_file(tmp_path / "model.pt")
    assert loading._is_torchscript(path)
    plain = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    assert zipfile.is_zipfile(plain) and not loading._is_torchscript(plain)
    opened = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: opened.append(a) or torch.nn.Linear(2, 2))
    with pytest.raises(WeightsNotFoundError, match="TorchScript only as OpenAI's released CLIP weights"):
        loading._load_weights(torch.nn.Linear(2, 2), path, "ViT-B-16-SigLIP")
    assert opened == []                                               # refused before anything was opened
    loading._load_weights(torch.nn.Linear(2, 2), path, "ViT-B-16")   # an OpenAI architecture: opened
    assert len(opened) == 1


# -- 4. other findings ----------------------------------------------------------------------------------------------
def test_pretrain_toy_never_writes_into_the_package_by_default(tmp_path, monkeypatch):
    from dplbench.toy import pretrain
    from dplbench.toy.model import DEFAULT_CHECKPOINT

    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))
    written = []
    monkeypatch.setattr(pretrain, "pretrain", lambda steps, out, *a, **k: written.append(Path(out)))
    assert pretrain.main(["--steps", "1"]) == 0
    assert written == [tmp_path / "cache" / "toy_clip" / "toy_clip.pt"] and written[0] != DEFAULT_CHECKPOINT
    monkeypatch.setattr(pretrain, "DEFAULT_CHECKPOINT", tmp_path / "site-packages" / "dplbench" / "toy_clip.pt")
    with pytest.raises(ConfigError, match="shipped inside the installed dplbench package"):
        pretrain.main(["--out", str(tmp_path / "site-packages" / "dplbench" / "toy_clip.pt")])


def test_git_commit_is_recorded_only_for_dplbench_own_tree(tmp_path):
    from dplbench.environment import git_commit

    assert git_commit() is None or len(git_commit()["sha"]) == 40    # this checkout (if it is a git checkout)
    project = tmp_path / "someone-elses-project"
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "pyproject.toml").write_text('[project]\nname = "theirs"\n')
    subprocess.run(["git", "-C", str(project), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    assert git_commit(project) is None
    (project / "pyproject.toml").write_text('[project]\nname = "dplbench"\n')
    assert git_commit(project) is not None
    assert git_commit(project / "sub") is None


def test_the_driver_command_line_reaches_the_result(tmp_path):
    from dplbench import cli
    from dplbench.environment import environment_record
    from dplbench.runtime import Runtime

    args = cli.build_parser().parse_args(["run", "seeds=[1]"])
    args.argv = ["run", "seeds=[1]"]
    cfg = cli._config(args)
    runtime = Runtime.from_config(cfg)
    assert runtime.command == ("dplbench", "run", "seeds=[1]")
    assert environment_record("cpu", command=runtime.command)["argv"] == ["dplbench", "run", "seeds=[1]"]


def test_a_truncated_image_fails_with_its_path_and_dataset(tmp_path):
    from PIL import Image

    from dplbench.data.base import DatasetSplits, Datum
    from dplbench.data.loader import ImageDataset

    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good)
    bad.write_bytes(good.read_bytes()[:200])
    splits = DatasetSplits("mini", ["a"], [Datum("good.jpg", 0, "a"), Datum("bad.jpg", 0, "a")], [], [],
                           image_dir=tmp_path)
    dataset = ImageDataset(splits, splits.train)
    assert dataset[0][1] == 0
    with pytest.raises(DataNotFoundError, match=rf"mini: cannot read image {bad}"):
        dataset[1]
    (tmp_path / "junk.jpg").write_text("not an image")
    with pytest.raises(DataNotFoundError, match="junk.jpg"):
        ImageDataset(splits, [Datum("junk.jpg", 0, "a")])[0]


def test_an_empty_imagenet_class_folder_is_an_error(tmp_path, monkeypatch):
    from dplbench.data import load_dataset

    from test_data_layouts import make_imagenet

    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))
    d = make_imagenet(tmp_path)
    (d / "images" / "train" / "n09999999").mkdir()
    with pytest.raises(DataNotFoundError, match="class folders without images.*n09999999"):
        load_dataset("imagenet", tmp_path)
