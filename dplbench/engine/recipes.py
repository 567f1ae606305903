"""Training recipes: per method and protocol family (docs/methods.md §7), resolved against config overrides.

A method module declares a ``RECIPES`` mapping ``family -> Recipe`` (or a function of dataset and shots returning
one). :func:`resolve_recipe` applies ``train.epochs/lr/batch_size`` and ``method.*`` overrides. No torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from dplbench.errors import ConfigError

FAMILIES = ("base2novel", "cross_dataset", "few_shot", "long_tail")


@dataclass(frozen=True)
class Recipe:
    """What a method trains with under one protocol family. ``options`` are option defaults for that family
    (e.g. ``{"depth": 3}`` for cross-dataset); user ``method.*`` overrides win over them."""

    epochs: int
    lr: float
    batch_size: int
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""  # the reference config it follows, recorded in results

    def with_options(self, **options: Any) -> Recipe:
        return dataclasses.replace(self, options={**self.options, **options})


RecipeSpec = Union[Recipe, Callable[[str, Optional[int]], Recipe]]


def lookup_recipe(recipes: Mapping[str, RecipeSpec], family: str, dataset: str, shots: int | None,
                  method: str = "") -> Recipe:
    """The method's recipe for a family; callables receive (dataset, shots)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown recipe family {family!r}; valid choices: {', '.join(FAMILIES)}")
    spec = recipes.get(family)
    if spec is None:
        raise ConfigError(f"method {method!r} has no recipe for the {family!r} protocol family")
    return spec(dataset, shots) if callable(spec) else spec


@dataclass(frozen=True)
class ResolvedRecipe:
    epochs: int
    lr: float
    batch_size: int
    options: Any  # the method's Options dataclass instance
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "options": dataclasses.asdict(self.options), "source": self.source}


def build_options(options_cls: type, values: Mapping[str, Any], method: str = "") -> Any:
    """Instantiate a method's Options dataclass from (possibly nested) values, typed and validated by OmegaConf;
    unknown keys or wrong types raise ConfigError naming the valid options."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    names = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
                          f"valid options: {', '.join(sorted(names))}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(options_cls), dict(values))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid option for method {method!r}: {str(exc).splitlines()[0]}") from None


def resolve_recipe(recipe: Recipe, options_cls: type, *, epochs: int | None = None, lr: float | None = None,
                   batch_size: int | None = None, options: Mapping[str, Any] | None = None,
                   method: str = "", epoch_scale: float | None = None) -> ResolvedRecipe:
    """Recipe defaults <- ``train.*`` overrides (None = keep) <- ``method.*`` option overrides.

    ``epoch_scale`` shortens (or lengthens) the recipe's epochs when ``epochs`` is not given: the built-in toy
    suite uses it so the default run fits a laptop CPU while each method keeps its relative schedule."""
    opts = build_options(options_cls, {**recipe.options, **(options or {})}, method)
    if epochs is None and epoch_scale is not None and recipe.epochs > 0:
        epochs = max(1, round(recipe.epochs * float(epoch_scale)))
    values = {"epochs": recipe.epochs if epochs is None else int(epochs),
              "lr": recipe.lr if lr is None else float(lr),
              "batch_size": recipe.batch_size if batch_size is None else int(batch_size)}
    for key in ("epochs", "batch_size"):
        if values[key] < (0 if key == "epochs" else 1):
            raise ConfigError(f"train.{key} must be positive, got {values[key]}")
    return ResolvedRecipe(options=opts, source=recipe.source, **values)


def resolve_unit_recipe(unit: Any) -> ResolvedRecipe:
    """The recipe a unit really trains with: its method's recipe for the unit's family, dataset and shots, after
    the unit's ``train.*`` settings and ``method.*`` options (what `execute_unit` runs and `--cfg` prints)."""
    from dplbench.catalog import METHODS
    from dplbench.units import to_plain

    method_cls = METHODS.get(unit.method)
    train = unit.settings.train
    return resolve_recipe(method_cls.recipe(unit.recipe, unit.dataset, unit.shots), method_cls.Options,
                          epochs=train.epochs, lr=train.lr, batch_size=train.batch_size,
                          epoch_scale=train.epoch_scale, options=to_plain(unit.options or {}), method=unit.method)
