"""``dplbench build-knowledge``: the knowledge cache of each requested dataset (all its classes: base and novel)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dplbench.errors import ConfigError
from dplbench.llm.templates import MAX_NEW_TOKENS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_datasets(names: Sequence[str], settings: Mapping[str, Any]) -> None:
    from dplbench.backbone.precision import resolve_device
    from dplbench.catalog import DATASETS
    from dplbench.data import load_dataset
    from dplbench.data.paths import resolve_data_root
    from dplbench.llm.knowledge import build_knowledge
    from dplbench.llm.questions import question_set
    from dplbench.workspace import Workspace

    dtype_name = str(settings.get("dtype", "float32"))
    if dtype_name not in DTYPES:
        raise ConfigError(f"invalid dtype {dtype_name!r}; valid choices: {', '.join(DTYPES)}")
    workspace = Workspace.at(settings.get("run.output_dir", "results"))
    workspace.require_writable()
    root = resolve_data_root(settings.get("data.root"))
    paths = {k.split(".", 2)[2]: v for k, v in settings.items() if k.startswith("data.paths.")}
    device = resolve_device(str(settings.get("run.device", "auto")))
    for name in names:
        name = DATASETS.canonical(name)
        splits = load_dataset(name, root, path=paths.get(name))
        report = build_knowledge(name, splits.classnames, settings["llm.path"], workspace.knowledge,
                                 questions=question_set(name, settings.get("llm.questions")),
                                 extractor=str(settings.get("noun_phrases", "auto")),
                                 batch_size=int(settings.get("batch_size", 16)), device=str(device),
                                 dtype=DTYPES[dtype_name],
                                 max_new_tokens=int(settings.get("max_new_tokens", MAX_NEW_TOKENS)))
        print(f"{name}: {report.built} classes built, {report.skipped} already there -> {report.folder}")
