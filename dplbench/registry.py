"""A small generic registry: decorator registration, lazy ``module:attr`` entries, wildcard listing,
aliases, did-you-mean errors and an optional entry-point group for third-party plugins."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from dplbench.errors import UnknownNameError

T = TypeVar("T")


@dataclass
class _Entry:
    name: str
    description: str = ""
    target: str | None = None  # "module:attr" for lazy entries
    obj: Any = None
    aliases: tuple[str, ...] = ()

    @property
    def loaded(self) -> bool:
        return self.obj is not None


class Registry(Generic[T]):
    """Name -> object map. Entries may be registered eagerly (decorator / ``add``) or lazily
    (``add_lazy(name, "pkg.module:Attr")``): a lazy entry is imported on first ``get``."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}
        self._entry_points_loaded = entry_point_group is None
        self._discoverers: list[Callable[[Registry[T]], None]] = []
        self._discovered = False

    # -- registration -------------------------------------------------------------------------
    def add(self, name: str, obj: T, *, description: str = "", aliases: tuple[str, ...] = ()) -> T:
        entry = self._entries.get(name)
        if entry is None:
            entry = _Entry(name=name, description=description, aliases=tuple(aliases))
            self._entries[name] = entry
        entry.obj = obj
        if description:
            entry.description = description
        entry.aliases = tuple(dict.fromkeys(entry.aliases + tuple(aliases)))
        for alias in entry.aliases:
            self._aliases[alias] = name
        return obj

    def register(self, name: str, *, description: str = "", aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorator(obj: T) -> T:
            doc = description or (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return self.add(name, obj, description=text, aliases=aliases)

        return decorator

    def add_lazy(self, name: str, target: str, *, description: str = "", aliases: tuple[str, ...] = ()) -> None:
        """Register ``name`` to be imported from ``"module:attr"`` when first used."""
        if name in self._entries and self._entries[name].loaded:
            return
        self._entries[name] = _Entry(name=name, description=description, target=target, aliases=tuple(aliases))
        for alias in aliases:
            self._aliases[alias] = name

    def add_discoverer(self, fn: Callable[[Registry[T]], None]) -> None:
        """A callable that fills the registry the first time it is queried (keeps import cheap)."""
        self._discoverers.append(fn)
        self._discovered = False

    # -- lookup ---------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if not self._discovered:
            self._discovered = True  # set first: a discoverer may query the registry it fills
            try:
                for fn in self._discoverers:
                    fn(self)
            except BaseException:
                self._discovered = False  # a failed discovery raises again on the next query, never half-silently
                raise
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                self.add_lazy(ep.name, ep.value, description=f"(plugin {ep.value})")

    def canonical(self, name: str) -> str:
        """Resolve an alias to its registered name; raise UnknownNameError with choices otherwise."""
        self._ensure()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(self.kind, name, self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries or name in self._aliases

    def get(self, name: str) -> T:
        entry = self._entries[self.canonical(name)]
        if not entry.loaded:
            module_name, _, attr = entry.target.partition(":")
            module = importlib.import_module(module_name)
            obj = getattr(module, attr) if attr else module
            if not entry.loaded:  # importing may have registered it through the decorator already
                entry.obj = obj
        return entry.obj

    def describe(self, name: str) -> str:
        return self._entries[self.canonical(name)].description

    def aliases(self, name: str) -> tuple[str, ...]:
        return self._entries[self.canonical(name)].aliases

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard (aliases not included)."""
        self._ensure()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __iter__(self):
        return iter(self.list())

    def __len__(self) -> int:
        self._ensure()
        return len(self._entries)
