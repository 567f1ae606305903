"""Shared fixtures: one Ray instance per test session (2 CPUs) and one pre-migrated MLflow SQLite DB, copied per
test (creating a fresh DB runs the schema migrations, several seconds each time). Both are lazy: only tests that
ask for them pay for them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# quiet Tune output, no per-worker `uv run`, no SIGINT takeover by Tune inside the tests
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


@pytest.fixture(scope="session")
def ray_instance():
    """A local Ray instance shared by the whole test session (dplbench reuses an initialised Ray)."""
    import ray

    repo = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path.as_posix()}").search_experiments()  # runs the migrations
    return path


@pytest.fixture
def output_dir(tmp_path, mlflow_db_template) -> Path:
    """An output directory that already holds a migrated ``mlflow.db`` (the default tracking URI)."""
    out = tmp_path / "results"
    out.mkdir()
    shutil.copy(mlflow_db_template, out / "mlflow.db")
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread; several threads on a 2-core CI box mostly contend."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
