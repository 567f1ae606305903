"""One record per table layout: what aggregation, tables and plots need to know about it.

A protocol names its layout (``table: {layout: ...}``); protocol kinds that share a layout resolve to it through
:data:`ALIASES`. Adding a layout is adding one :class:`LayoutSpec` here (and its aggregation rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from dplbench.errors import UnknownNameError
from dplbench.vocabulary import Layout


@dataclass(frozen=True)
class LayoutSpec:
    name: Layout
    metrics: tuple[str, ...]                 # metric rows of the tidy frame, in display order
    columns: str                             # what a table column is: "metric" | "target" | "shots"
    headline: str                            # the metric plots compare by default
    caption: str
    rule: str                                # the aggregation rule, printed under the table
    groups: tuple[tuple[str, int | None], ...] = ()  # column group headers: (label, width; None = the rest)

    @property
    def transfer(self) -> bool:
        """Blocks are sources and columns are targets (cross-dataset, domain generalisation)."""
        return self.columns == "target"

    @property
    def by_shots(self) -> bool:
        return self.columns == "shots"

    def column_groups(self, n_columns: int) -> list[tuple[str, int]]:
        fixed = sum(width for _, width in self.groups if width is not None)
        return [(label, n_columns - fixed if width is None else width) for label, width in self.groups]


LAYOUTS: dict[Layout, LayoutSpec] = {spec.name: spec for spec in (
    LayoutSpec(Layout.base2novel, ("base", "novel", "hm"), "metric", "hm",
               "Base-to-novel generalisation: accuracy (%) on base and novel classes and their harmonic mean",
               "HM is computed from the seed means of Base and Novel; the Average block averages Base and Novel over "
               "the datasets and its HM is the HM of those averages (not the mean of per-dataset HMs)."),
    LayoutSpec(Layout.cross_dataset, ("top1",), "target", "top1",
               "Cross-dataset transfer: top-1 accuracy (%) on the source and every target",
               "Average: mean over the targets, source excluded.", (("Source", 1), ("Target", None))),
    LayoutSpec(Layout.domain_generalization, ("top1",), "target", "top1",
               "Domain generalisation: top-1 accuracy (%) on the source and its shifted variants",
               "Average: mean over the target variants, source excluded.", (("Source", 1), ("Target", None))),
    LayoutSpec(Layout.few_shot, ("acc",), "shots", "acc",
               "Few-shot classification: top-1 accuracy (%) per number of shots per class",
               "Average: mean over the datasets for each number of shots.", (("Shots per class", None),)),
    LayoutSpec(Layout.long_tail, ("many", "medium", "few", "overall"), "metric", "overall",
               "Long-tailed classification: accuracy (%) per class-frequency bucket and overall",
               "Many / medium / few: mean per-class accuracy within each training-frequency bucket.",
               (("Bucket", 3), ("", None))),
)}

# protocol and kind names that share another layout
ALIASES = {
    "long_tail_b2n": Layout.base2novel,
    "long_tail_b2n_candle": Layout.base2novel,
    "long_tail_b2n_drople": Layout.base2novel,
    "long_tail_lift": Layout.long_tail,
    "transfer": Layout.cross_dataset,
}


def layout_spec(name: str) -> LayoutSpec:
    """The record of a layout (or of an alias); an unknown name lists the valid ones."""
    name = str(name)
    layout = ALIASES.get(name) or (Layout(name) if name in Layout.values() else None)
    if layout is None:
        raise UnknownNameError("table layout", name, Layout.values())
    return LAYOUTS[layout]


def resolve_layout(name: str) -> str:
    """Canonical layout name (protocol kinds such as ``long_tail_b2n`` map to their table layout)."""
    return layout_spec(name).name.value
