"""User-facing errors: each carries one readable line; the CLI prints it and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DplbenchError(Exception):
    """Base class for every error caused by user input or the environment (not a bug)."""


class ConfigError(DplbenchError):
    """An unknown key, a wrong type or an invalid value in the configuration."""


class UnknownNameError(DplbenchError):
    """A name (method, dataset, protocol, backbone, ...) that is not registered."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind = kind
        self.name = name
        self.choices = sorted(choices)
        super().__init__(unknown_choice_message(kind, name, self.choices))


class RegistryError(DplbenchError):
    """An adapter or plugin that registers itself in a way dplbench cannot read (names the file and line)."""


class DataNotFoundError(DplbenchError):
    """A dataset folder, split file or image is missing or malformed."""


class WeightsNotFoundError(DplbenchError):
    """Model weights are not available locally (no downloads happen at run time)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """Closest valid choice to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_choice_message(kind: str, name: str, choices: Iterable[str]) -> str:
    """One line: unknown X 'name'; did you mean 'y'? valid choices: a, b, c."""
    choices = sorted(choices)
    hint = did_you_mean(name, choices)
    msg = f"unknown {kind} {name!r}"
    if hint:
        msg += f"; did you mean {hint!r}?"
    return msg + f" Valid choices: {', '.join(choices) if choices else '(none)'}"
