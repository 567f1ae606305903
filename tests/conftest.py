"""Shared fixtures: one Ray instance per test session (2 CPUs), one pre-migrated MLflow SQLite DB copied per test
(creating a fresh DB runs the schema migrations, several seconds each time), and the random-init open_clip models
the backbone, method and engine tests run on. All are lazy: only tests that ask for them pay for them."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="session")
def register_tiny_clip(tmp_path_factory):
    """``register(layers)`` -> the name of a tiny open_clip config (32 px ViT with patch 8, width 64; text width 32,
    the standard tokenizer; QuickGELU) with ``layers`` blocks per tower, registered with open_clip once."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny-clip-configs")

    def register(layers: int) -> str:
        name = f"dplbench-tiny-{layers}l"
        path = folder / f"{name}.json"
        if not path.exists():
            path.write_text(json.dumps({
                "embed_dim": 32, "quick_gelu": True,
                "vision_cfg": {"image_size": 32, "layers": layers, "width": 64, "head_width": 32, "patch_size": 8},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": layers}}))
            open_clip.add_model_config(path)
        return name

    return register


@pytest.fixture(scope="module")
def tiny_config(register_tiny_clip) -> str:
    """The 2-layer tiny open_clip config most method and engine tests use."""
    return register_tiny_clip(2)


@pytest.fixture(scope="module")
def tiny_backbone(tiny_config):
    import open_clip
    import torch

    from dplbench.backbone import Backbone

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_config, pretrained=None)
    return Backbone.from_model(model, name=tiny_config, precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def vitb16():
    """A random-init ViT-B/16 (QuickGELU, as OpenAI's weights need): real shapes and parameter counts."""
    import open_clip
    import torch

    from dplbench.backbone import Backbone

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    return Backbone.from_model(model, name="ViT-B-16", precision="fp32", device="cpu")


@pytest.fixture(scope="session")
def legacy_run_block():
    """The tower block path before the fused attention (open_clip's own), the reference the fused path is checked
    against."""
    from dplbench.backbone.towers import open_clip_run_block

    return open_clip_run_block
