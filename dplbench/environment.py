"""What a result was produced with: package versions, Python, device, git commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("dplbench", "torch", "torchvision", "open_clip_torch", "numpy", "ray", "mlflow", "optuna", "pandas")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """Commit SHA and dirty flag of the checkout that holds dplbench, if it is a git checkout."""
    where = Path(path) if path else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": dirty}


def device_info(device: str | None = None) -> dict[str, Any]:
    """Device description; imports torch (call only where torch is already needed)."""
    import torch

    info: dict[str, Any] = {"device": device, "cuda_available": torch.cuda.is_available(),
                            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def environment_record(device: str | None = None) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_commit(),
        "device": device_info(device) if "torch" in sys.modules else {"device": device},
        "argv": list(sys.argv),
    }
