"""What a result was produced with: package versions, Python, device, git commit."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
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


def _own_checkout(folder: Path) -> bool:
    """Whether ``folder`` is dplbench's own source tree (its pyproject names the project dplbench), as opposed to
    any repository that happens to enclose an installed package (a virtualenv inside a user's project)."""
    try:
        text = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r'(?m)^\s*name\s*=\s*["\']dplbench["\']\s*$', text) is not None


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """Commit SHA and dirty flag of dplbench's own git checkout; None for an installed package or another tree."""
    where = Path(path) if path else Path(__file__).resolve().parent.parent
    if not _own_checkout(where):
        return None
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        if Path(top).resolve() != where.resolve():
            return None
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": dirty}


@cache
def _process_versions() -> tuple[tuple[str, str | None], ...]:
    return tuple(package_versions().items())


@cache
def _process_commit() -> tuple[tuple[str, Any], ...] | None:
    commit = git_commit()
    return None if commit is None else tuple(commit.items())


def device_info(device: str | None = None) -> dict[str, Any]:
    """Device description; imports torch (call only where torch is already needed)."""
    import torch

    info: dict[str, Any] = {"device": device, "cuda_available": torch.cuda.is_available(),
                            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def _own_argv() -> list[str] | None:
    """This process's command line, or None in a Ray worker (whose argv is Ray's, not the user's)."""
    return None if Path(sys.argv[0]).name == "default_worker.py" else list(sys.argv)


def environment_record(device: str | None = None, command: Sequence[str] | None = None) -> dict[str, Any]:
    """``command``: the user's command line as the driver saw it (``Runtime.command``, set by the CLI)."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        # read once per process (a worker runs many units): the code and packages it runs do not change under it
        "packages": dict(_process_versions()),
        "git": None if (commit := _process_commit()) is None else dict(commit),
        "device": device_info(device) if "torch" in sys.modules else {"device": device},
        "argv": list(command) if command is not None else _own_argv(),
    }
