"""The global registries of dplbench. Filling them is lazy and never imports torch."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from importlib import resources

from dplbench.errors import RegistryError
from dplbench.registry import Registry

METHODS: Registry = Registry("method", entry_point_group="dplbench.methods")
DATASETS: Registry = Registry("dataset")
BACKBONES: Registry = Registry("backbone")
PROTOCOLS: Registry = Registry("protocol")


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    description: str
    kind: str  # "toy" | "open_clip"
    model: str  # open_clip model name (or the toy config name)
    pretrained: str | None = None


_DECORATOR_KEYWORDS = {"aliases": (tuple, list), "description": str}  # register_method's keyword arguments


def _method_decorator_args(tree: ast.Module, source: str):
    """Yield (class name, registry name, aliases, description) for each @register_method(...) class.

    The arguments must be literals (discovery reads them without importing the module); anything else raises
    RegistryError naming ``source`` and the line, instead of leaving the method silently unknown."""
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", None))
                    == "register_method"):
                continue
            where = f"{source}:{deco.lineno}"
            if len(deco.args) != 1:
                raise RegistryError(f"{where}: register_method needs the method name as its one positional argument "
                                    f"(class {node.name})")
            name = _literal(deco.args[0], str, "the method name", where)
            kwargs = {}
            for keyword in deco.keywords:
                if keyword.arg not in _DECORATOR_KEYWORDS:
                    shown = f"**{ast.unparse(keyword.value)}" if keyword.arg is None else keyword.arg
                    raise RegistryError(f"{where}: register_method got {shown}; it takes the name, "
                                        f"aliases=(...) and description='...' as literals")
                kwargs[keyword.arg] = _literal(keyword.value, _DECORATOR_KEYWORDS[keyword.arg], keyword.arg, where)
            aliases = tuple(kwargs.get("aliases", ()))
            if not all(isinstance(a, str) for a in aliases):
                raise RegistryError(f"{where}: register_method aliases must be strings, got {aliases!r}")
            yield node.name, name, aliases, kwargs.get("description", "")


def _literal(node: ast.expr, kind: type | tuple[type, ...], what: str, where: str):
    """The value of a literal decorator argument, or RegistryError naming ``where``."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise RegistryError(f"{where}: {what} of register_method must be a literal (discovery reads it without "
                            f"importing the module), got {ast.unparse(node)!r}") from None
    if not isinstance(value, kind):
        raise RegistryError(f"{where}: {what} of register_method must be a {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


def _discover_methods(registry: Registry, package: str = "dplbench.methods") -> None:
    """Find adapters in the ``package`` folder by reading the source (no import)."""
    try:
        folder = resources.files(package)
    except ModuleNotFoundError:  # pragma: no cover - broken install
        return
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".py") or path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module = f"{package}.{path.name[:-3]}"
        for cls, name, aliases, description in _method_decorator_args(tree, str(path)):
            registry.add_lazy(name, f"{module}:{cls}", description=description, aliases=aliases)


def _discover_datasets(registry: Registry) -> None:
    import dplbench.data.catalog  # noqa: F401  (registers the standard datasets)
    import dplbench.toy.catalog  # noqa: F401  (registers the built-in toy datasets)


def _discover_protocols(registry: Registry) -> None:
    from dplbench.protocol import discover_protocols

    discover_protocols(registry)


def _discover_backbones(registry: Registry) -> None:
    import dplbench.toy.catalog  # noqa: F401  (registers the toy backbone)

    for name, model, tag, text in [
        ("ViT-B-16", "ViT-B-16", "openai", "OpenAI CLIP ViT-B/16 (QuickGELU), the papers' backbone"),
        ("ViT-B-32", "ViT-B-32", "openai", "OpenAI CLIP ViT-B/32 (QuickGELU)"),
        ("ViT-L-14", "ViT-L-14", "openai", "OpenAI CLIP ViT-L/14 (QuickGELU)"),
    ]:
        if name not in registry:
            registry.add(name, BackboneInfo(name, text, "open_clip", model, tag), description=text)


METHODS.add_discoverer(_discover_methods)
DATASETS.add_discoverer(_discover_datasets)
PROTOCOLS.add_discoverer(_discover_protocols)
BACKBONES.add_discoverer(_discover_backbones)
