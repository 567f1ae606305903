"""The optional ``[llm]`` extra: pieces of the LLM-prompted backbone of ``drople_llamp`` (docs/methods.md §5.2).

Nothing here is imported by ``import dplbench``; the submodules that need ``transformers`` import it at their top
and are only reached when an LLM method is selected or ``dplbench build-knowledge`` runs. :func:`require_llm_extra`
turns a missing extra into one readable line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from dplbench.errors import DplbenchError, WeightsNotFoundError

EXTRA_HINT = 'pip install "dplbench[llm]"'
EXTRA_PACKAGES = ("transformers",)
LLM_METHODS = ("drople_llamp",)   # methods that need llm.path (checked before a run starts)


class MissingExtraError(DplbenchError):
    """A feature needs an optional extra that is not installed."""


def missing_packages() -> list[str]:
    """The packages of the ``[llm]`` extra that cannot be imported."""
    missing = []
    for name in EXTRA_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a stub without a spec (sys.modules[name] = None) counts as missing
            found = False
        if not found:
            missing.append(name)
    return missing


def require_llm_extra(what: str) -> None:
    """Raise :class:`MissingExtraError` (one line) when the ``[llm]`` extra is not installed."""
    missing = missing_packages()
    if missing:
        raise MissingExtraError(f"{what} needs the optional LLM extra ({', '.join(missing)} not installed): "
                                f"{EXTRA_HINT}")


def check_llm_path(path: str | Path | None) -> Path:
    """The LLM folder, or one readable line saying what is missing (weights are never downloaded)."""
    if not path:
        raise WeightsNotFoundError("this needs a local LLM checkpoint: set llm.path=/folder/with/config.json "
                                   "(e.g. Meta-Llama-3-8B-Instruct; dplbench never downloads weights)")
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"llm.path={path}: no config.json there (expected a transformers checkpoint "
                                   "folder, e.g. Meta-Llama-3-8B-Instruct; dplbench never downloads weights)")
    return folder


def llm_identity(path: str | Path) -> dict[str, Any]:
    """What identifies the LLM: a digest of its config.json and of its files' names and sizes."""
    folder = check_llm_path(path)
    config = (folder / "config.json").read_bytes()
    digest = hashlib.sha256(config)
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            digest.update(f"{entry.name}:{entry.stat().st_size};".encode())
    settings = json.loads(config)
    return {"id": digest.hexdigest()[:16], "name_or_path": settings.get("_name_or_path") or folder.name,
            "model_type": settings.get("model_type"), "hidden_size": settings.get("hidden_size"),
            "num_hidden_layers": settings.get("num_hidden_layers"), "path": str(folder.resolve())}
