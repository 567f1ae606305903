"""The global registries of dplbench. Filling them is lazy and never imports torch."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from importlib import resources

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


def _method_decorator_args(tree: ast.Module):
    """Yield (class name, registry name, aliases, description) for each @register_method(...) class."""
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", None))
                    == "register_method"):
                continue
            try:
                name = ast.literal_eval(deco.args[0])
                kwargs = {k.arg: ast.literal_eval(k.value) for k in deco.keywords if k.arg}
            except (ValueError, IndexError):
                continue
            yield node.name, name, tuple(kwargs.get("aliases", ())), kwargs.get("description", "")


def _discover_methods(registry: Registry) -> None:
    """Find adapters in the ``methods`` package by reading the source (no import)."""
    try:
        package = resources.files("dplbench.methods")
    except ModuleNotFoundError:  # pragma: no cover - broken install
        return
    for path in sorted(package.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".py") or path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = f"dplbench.methods.{path.name[:-3]}"
        for cls, name, aliases, description in _method_decorator_args(tree):
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
