"""The optional ``[llm]`` extra: pieces of the LLM-prompted backbone of ``drople_llamp`` (docs/methods.md §5.2).

Nothing here is imported by ``import dplbench``; the submodules that need ``transformers`` import it at their top
and are only reached when an LLM method is selected or ``dplbench build-knowledge`` runs. :func:`require_llm_extra`
turns a missing extra into one readable line.
"""

from __future__ import annotations

import importlib.util

from dplbench.errors import DplbenchError

EXTRA_HINT = 'pip install "dplbench[llm]"'
EXTRA_PACKAGES = ("transformers",)


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
