"""Run one unit end to end: build the backbone and the method, prepare the data of the unit's kind, train with
the method's recipe, evaluate the final state, and return metrics + history + faithfulness flags.

Kinds (docs/protocols.md §5): ``base2novel`` and ``long_tail_b2n`` (train on base classes, evaluate base then novel),
``transfer`` (train on the source once per source key, evaluate on the source and every target), ``few_shot``
(all classes, K shots) and ``long_tail_lift`` (full long-tailed train split, many/medium/few buckets).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from dplbench.errors import ConfigError
from dplbench.report.reference import harmonic_mean
from dplbench.runtime import Runtime
from dplbench.units import Unit
from dplbench.vocabulary import Kind

SOURCE_FORMAT = "dplbench-source-model/1"
BACKBONE_INIT_SEED = 0
DEFAULT_IMBALANCE = {"ratio": 10, "rounding": "ceil", "cap": None}


def _peak_memory(device: Any) -> dict[str, float | None]:
    import torch

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = None
    if device.type == "cuda":
        cuda = torch.cuda.max_memory_allocated(device) / 2**20
    return {"peak_rss_mb": rss_kb / 1024, "peak_cuda_mb": cuda}


class _UnitRun:
    """State shared by the steps of one unit (kept small: each kind is one method below)."""

    def __init__(self, unit: Unit, runtime: Runtime, on_epoch: Callable[[dict], None] | None,
                 checkpoint_path: str | os.PathLike | None):
        import torch

        from dplbench.backbone.reuse import reusable_backbone
        from dplbench.backbone.precision import resolve_device
        from dplbench.catalog import DATASETS, METHODS
        from dplbench.data.transforms import DEFAULT_CROP_SCALE, build_transform, describe_transform
        from dplbench.engine.cache import feature_cache
        from dplbench.engine.recipes import resolve_unit_recipe
        from dplbench.engine.seeding import seed_everything, set_deterministic

        self.unit = unit
        self.runtime = runtime
        self.workspace = runtime.workspace
        self.on_epoch = on_epoch
        settings = unit.settings
        train_cfg = settings.train
        self.eval_batch_size = train_cfg.eval_batch_size
        self.deterministic = train_cfg.deterministic
        self.split_seed = unit.seed if train_cfg.split_seed is None else train_cfg.split_seed
        self.train_seed = unit.seed if train_cfg.train_seed is None else train_cfg.train_seed
        self.explicit_checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None

        set_deterministic(self.deterministic)
        self.device = resolve_device(runtime.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        seed_everything(BACKBONE_INIT_SEED)  # a randomly initialised backbone is the same in every unit
        # a worker that runs several units keeps the last backbone (dplbench/backbone/reuse.py)
        self.backbone = reusable_backbone(replace(settings.backbone, cache_dir=runtime.weights_cache_dir),
                                          self.device)
        self.method_cls = METHODS.get(unit.method)
        self.recipe = resolve_unit_recipe(unit)
        bb = self.backbone
        info = DATASETS.get(unit.dataset) if unit.dataset in DATASETS else None  # tests inject unregistered data
        crop_scale = tuple(settings.data.crop_scale or (info.crop_scale if info else DEFAULT_CROP_SCALE))
        self.train_transform = build_transform(True, bb.image_size, bb.mean, bb.std, crop_scale=crop_scale)
        self.test_transform = build_transform(False, bb.image_size, bb.mean, bb.std)
        self.transforms = {"train": describe_transform(True, bb.image_size, bb.mean, bb.std, crop_scale=crop_scale),
                           "test": describe_transform(False, bb.image_size, bb.mean, bb.std)}
        self.features = feature_cache(self.workspace.cache)
        self._cache_counts = (self.features.hits, self.features.misses)
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.extra: dict[str, Any] = {}
        self.data_notes: dict[str, Any] = {}
        self.data_files: dict[str, dict[str, Any]] = {}  # dataset -> sha256 of its split and few-shot index files
        self.method = None
        self.method_faithfulness: dict[str, Any] = {}
        self.predictions: dict[str, Any] = {}    # sidecar split name -> SplitPredictions (metric names)

    # -- data ---------------------------------------------------------------------------------------------
    def load(self, name: str):
        from dplbench.data.reuse import reusable_dataset

        # a worker that runs several units keeps the datasets it loaded (dplbench/data/reuse.py)
        splits = reusable_dataset(name, self.runtime.data_root, path=(self.runtime.data_paths or {}).get(name))
        self.data_files.setdefault(name, {})["split"] = splits.source_digest()
        return splits

    def fewshot(self, splits: Any, shots: int | None):
        from dplbench.data.base import file_sha256
        from dplbench.data.fewshot import fewshot_path, sample_fewshot

        if shots is None:
            return splits
        subset = sample_fewshot(splits, int(shots), self.split_seed, cache_dir=self.workspace.cache)
        path = fewshot_path(self.workspace.cache, splits.name, int(shots), self.split_seed)
        if path.is_file():
            self.data_files.setdefault(splits.name, {})["fewshot"] = {"file": path.name, "sha256": file_sha256(path)}
        return subset

    # -- method -------------------------------------------------------------------------------------------
    def build_method(self, classnames: list[str], dataset: str):
        from dplbench.engine.method import MethodContext
        from dplbench.engine.seeding import seed_everything

        seed_everything(self.train_seed)  # prompt initialisation
        context = MethodContext(recipe=self.unit.recipe, num_epochs=self.recipe.epochs,
                                cache_dir=self.workspace.cache,
                                shots=self.unit.shots, llm_path=self.runtime.llm_path,
                                knowledge_dir=self.workspace.knowledge, llm_questions=self.runtime.llm_questions)
        method = self.method_cls(self.backbone, list(classnames), dataset, self.recipe.options, context)
        self.method = method
        self.extra["num_trainable_params"] = method.num_trainable()
        return method

    def key_parts(self, dataset: str, classes: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Everything that determines a trained state (shared source key / resume key); ``data`` adds
        kind-specific data settings (e.g. the imbalance)."""
        from dplbench.engine.cache import backbone_identity

        r = self.recipe
        return {"method": self.unit.method, "options": r.as_dict()["options"], "recipe": self.unit.recipe,
                "dataset": dataset, "classes": classes, "split_seed": self.split_seed, "train_seed": self.train_seed,
                "shots": self.unit.shots, "backbone": backbone_identity(self.backbone),
                "train": {"epochs": r.epochs, "lr": r.lr, "batch_size": r.batch_size,
                          "deterministic": self.deterministic}, **({"data": dict(data)} if data else {})}

    def train(self, method: Any, splits: Any, key: Mapping[str, Any]) -> None:
        from dplbench.engine.cache import cache_key
        from dplbench.engine.trainer import TrainSettings, train

        resume = self.explicit_checkpoint or self.workspace.resume_checkpoints / f"{cache_key(key)[:16]}.pt"
        bank = self.unit.settings.train.feature_bank
        settings = TrainSettings(epochs=self.recipe.epochs, lr=self.recipe.lr, batch_size=self.recipe.batch_size,
                                 seed=self.train_seed, num_workers=self.runtime.num_workers,
                                 bank_views=bank.views, bank_seed=bank.seed)
        transform, described = method.training_transform(self.train_transform, self.test_transform)
        if described is not None:
            self.transforms["train"] = described
        t0 = time.perf_counter()
        self.history = train(method, splits, settings, transform=transform, on_epoch=self.on_epoch,
                             checkpoint_path=resume if self.recipe.epochs > 0 and method.num_trainable() else None,
                             clean_transform=self.test_transform, clean_transform_desc=self.transforms["test"],
                             cache=self.features, transform_desc=self.transforms["train"])
        if method.needs_clean_features:
            self.transforms["train_teacher"] = self.transforms["test"]
        self.train_seconds += time.perf_counter() - t0
        self.extra["num_train_images"] = len(splits.train)
        self.method_faithfulness = method.faithfulness()
        self._resume_file = resume

    def finish(self) -> None:
        resume = getattr(self, "_resume_file", None)
        if resume is not None and self.explicit_checkpoint is None:
            resume.unlink(missing_ok=True)

    def evaluate(self, splits: Any, name: str, split: str = "test") -> Any:
        """Predict ``splits``' ``split`` items; keep them as the sidecar's split ``name`` (item ids: the items'
        indices in the split's list, the same for every seed and method)."""
        from dplbench.engine.trainer import predict
        from dplbench.predictions import SplitPredictions

        t0 = time.perf_counter()
        result = predict(self.method, splits, splits.split(split), transform=self.test_transform,
                         transform_desc=self.transforms["test"], split=split, batch_size=self.eval_batch_size,
                         num_workers=self.runtime.num_workers, cache=self.features)
        self.eval_seconds += time.perf_counter() - t0
        self.extra.setdefault("num_test_images", {})[splits.name + ("" if split == "test" else f":{split}") +
                                                      (f":{splits.meta['subset']}" if "subset" in splits.meta
                                                       else "")] = int(result.target.numel())
        self.predictions[name] = SplitPredictions(result.item_ids.numpy(), result.predicted.numpy(),
                                                  result.target.numpy(), result.margin.numpy())
        return result

    def accuracy(self, splits: Any, name: str) -> float:
        from dplbench.engine.trainer import accuracy, macro_f1

        result = self.evaluate(splits, name)
        tag = splits.name + (f":{splits.meta['subset']}" if "subset" in splits.meta else "")
        self.extra.setdefault("macro_f1", {})[tag] = macro_f1(result.predicted, result.target, splits.num_classes)
        return accuracy(result.predicted, result.target)

    # -- kinds --------------------------------------------------------------------------------------------
    def run_b2n(self, long_tail: bool) -> dict[str, float]:
        from dplbench.data.splits import subsample_classes

        full = self.load(self.unit.dataset)
        if long_tail:
            params = {**DEFAULT_IMBALANCE, **(self.unit.protocol_params.get("imbalance") or {})}
            ratio = (params.get("ratio_by_dataset") or {}).get(self.unit.dataset, params["ratio"])
            cap = params.get("cap")
            pool = self.fewshot(full, self.unit.shots if self.unit.shots is not None else cap)
            base = self._imbalanced(subsample_classes(pool, "base"), ratio, params["rounding"])
            self.data_notes["imbalance"] = {"ratio": ratio, "rounding": params["rounding"], "cap": cap,
                                            "seed": self.split_seed, "train_counts": base.train_counts()}
        else:
            pool = self.fewshot(full, self.unit.shots)
            base = subsample_classes(pool, "base")
        novel = subsample_classes(pool, "novel")
        method = self.build_method(base.classnames, base.name)
        self.train(method, base, self.key_parts(base.name, "base", {"kind": self.unit.kind, **self.data_notes}))
        base_acc = self.accuracy(base, "base")
        method.set_classnames(novel.classnames, novel.name)
        novel_acc = self.accuracy(novel, "novel")
        return {"base": base_acc, "novel": novel_acc, "hm": harmonic_mean(base_acc, novel_acc)}

    def _imbalanced(self, splits: Any, ratio: float, rounding: str):
        from dplbench.data.longtail import imbalance

        return imbalance(splits, ratio, self.split_seed, rounding=rounding, cache_dir=self.workspace.cache)

    def run_few_shot(self) -> dict[str, float]:
        splits = self.fewshot(self.load(self.unit.dataset), self.unit.shots)
        method = self.build_method(splits.classnames, splits.name)
        self.train(method, splits, self.key_parts(splits.name, "all", {"kind": self.unit.kind}))
        return {"acc": self.accuracy(splits, "acc")}

    def run_lift(self) -> dict[str, float | None]:
        from dplbench.data.longtail import bucket_accuracies, bucket_labels

        splits = self.fewshot(self.load(self.unit.dataset), self.unit.shots)
        method = self.build_method(splits.classnames, splits.name)
        self.train(method, splits, self.key_parts(splits.name, "all", {"kind": self.unit.kind}))
        result = self.evaluate(splits, "test")
        train_counts = splits.train_counts()
        self.extra["class_buckets"] = bucket_labels(train_counts)
        return bucket_accuracies(result.predicted.tolist(), result.target.tolist(), train_counts)

    def run_transfer(self) -> dict[str, float]:
        from dplbench.engine.cache import cache_key
        from dplbench.fileio import atomic_torch_save, file_lock

        source = self.fewshot(self.load(self.unit.dataset), self.unit.shots)
        method = self.build_method(source.classnames, source.name)
        key = self.key_parts(source.name, "all")
        source_key = cache_key(key)[:16]
        path = self.workspace.checkpoints / f"{source_key}.pt"
        self.extra["source_key"] = source_key
        if method.num_trainable() and self.recipe.epochs > 0:
            with file_lock(path.with_suffix(".lock")):
                state = self._read_source(path, key) if path.is_file() else None
                if state is None:
                    self.train(method, source, key)
                    atomic_torch_save({"format": SOURCE_FORMAT, "key": key, "learned": method.learned_state(),
                                        "history": self.history, "train_seconds": self.train_seconds,
                                        "faithfulness": self.method_faithfulness}, path)
                    self.extra["source_model"] = {"path": str(path), "shared": False}
                else:
                    method.load_learned_state(state["learned"])
                    self.history = list(state["history"])
                    self.method_faithfulness = dict(state.get("faithfulness") or method.faithfulness())
                    self.extra["source_model"] = {"path": str(path), "shared": True,
                                                  "source_train_seconds": float(state.get("train_seconds", 0.0))}
        else:
            self.method_faithfulness = method.faithfulness()
        metrics = {f"acc/{source.name}": self.accuracy(source, f"acc/{source.name}")}
        for target in self.unit.targets or ():
            if target == source.name:
                continue
            splits = self.load(target)
            method.set_classnames(splits.classnames, splits.name)
            metrics[f"acc/{target}"] = self.accuracy(splits, f"acc/{target}")
        return metrics

    @staticmethod
    def _read_source(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
        import torch

        from dplbench.engine.cache import canonical_json

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or corrupt: retrain and overwrite
            return None
        if state.get("format") != SOURCE_FORMAT or canonical_json(state.get("key")) != canonical_json(key):
            return None
        return state

    # -- result -------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from dplbench.engine.schedule import describe_schedule

        metrics = RUNNERS[Kind(self.unit.kind)](self)
        self.finish()
        r = self.recipe
        faithfulness = {
            "precision": self.backbone.precision,
            "backbone": {**self.backbone.info(), **({"init_seed": BACKBONE_INIT_SEED}
                                                    if not self.backbone.weights_file else {})},
            "transforms": self.transforms,
            "schedule": ((self.method.describe_schedule(r.lr, r.epochs) if self.method is not None
                          else describe_schedule(r.lr, r.epochs)) if r.epochs else None),
            "recipe": {"family": self.unit.recipe, "source": r.source, "epochs": r.epochs, "lr": r.lr,
                       "batch_size": r.batch_size},
            "options": r.as_dict()["options"],
            "method": self.method_faithfulness,
            "seeds": {"split_seed": self.split_seed, "train_seed": self.train_seed},
            "deterministic": self.deterministic,
            **augmentation_record(self.method, self.unit.settings.train.feature_bank),
            "evaluation": "final state (last epoch), no selection on test data",
            **({"data": self.data_notes} if self.data_notes else {}),
            "data_files": self.data_files,
        }
        extra = {**self.extra, "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                 **_peak_memory(self.device),
                 "feature_cache": {"hits": self.features.hits - self._cache_counts[0],
                                   "misses": self.features.misses - self._cache_counts[1]}}
        return {"metrics": metrics, "history": self.history, "faithfulness": faithfulness, "extra": extra,
                "predictions": self.predictions}


def augmentation_record(method: Any, bank: Any) -> dict[str, Any]:
    """The faithfulness block's ``augmentation`` entry for a feature-bank config ({} when the bank is off)."""
    from dplbench.engine.method import FROZEN_IMAGE_TOWER, TRAINABLE

    if bank.views is None:
        return {}
    caps = method.capabilities if method is not None else frozenset()
    if not {FROZEN_IMAGE_TOWER, TRAINABLE} <= caps:
        return {"augmentation": {"feature_bank": "not applicable (untrained, or the image tower depends on the "
                                                 "learned state): fresh random augmentation every step"}}
    return {"augmentation": {"feature_bank": {"views": bank.views, "view_seed": bank.seed,
                             "sampling": "each step uses, per image, one of the K stored views drawn uniformly "
                                         "(generator seeded by train seed and epoch)",
                             "deviation": "the augmentation is one of K fixed random views per image, not a fresh "
                                          "random view every step"}}}


# how each kind of unit runs (one entry per :class:`~dplbench.vocabulary.Kind`)
RUNNERS: dict[Kind, Callable[[_UnitRun], dict[str, Any]]] = {
    Kind.base2novel: lambda run: run.run_b2n(long_tail=False),
    Kind.long_tail_b2n: lambda run: run.run_b2n(long_tail=True),
    Kind.few_shot: _UnitRun.run_few_shot,
    Kind.long_tail_lift: _UnitRun.run_lift,
    Kind.transfer: _UnitRun.run_transfer,
}


def execute_unit(unit: Unit, runtime: Runtime, on_epoch: Callable[[dict], None] | None = None, *,
                 checkpoint_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run one unit (see the module docstring) and return ``{"metrics", "history", "faithfulness", "extra",
    "predictions"}``; ``predictions`` maps each evaluated split to its per-item
    :class:`~dplbench.predictions.SplitPredictions`, named like the metric it gives (``base``, ``novel``, ``acc``,
    ``acc/<dataset>``; ``test`` for long-tail buckets, whose classes are listed in ``extra["class_buckets"]``).

    ``on_epoch`` receives ``{"epoch", "lr", "loss", "loss/<term>", ..., "seconds"}`` after every epoch.
    ``checkpoint_path``: where the mid-training checkpoint lives (default
    the workspace's resume folder, removed when the unit finishes); an existing one is resumed.
    Every result-relevant setting comes from ``unit.config``; ``runtime`` says only where and on what it runs.
    Raises on failure (the caller records the unit as failed).
    """
    if unit.kind not in Kind.values():
        raise ConfigError(f"unknown unit kind {unit.kind!r}; valid kinds: {', '.join(Kind.values())}")
    return _UnitRun(unit, runtime, on_epoch, checkpoint_path).run()
