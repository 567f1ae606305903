"""The toy world tells the method families apart (slow: about 3-4 min on 2 cores).

A reduced copy of the default base-to-novel run (one skewed dataset, three seeds, in process) must reproduce the
headline ordering of the README's default table: CoOp loses Novel accuracy against zero-shot CLIP, KgCoOp's HM is
above CoOp's, and PromptSRC's HM is above IVLP's (docs/stack.md §7.5).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.slow

DATASET = "toy_patterns_noisy_skewed"
METHODS = ["zsclip", "coop", "kgcoop", "ivlp", "promptsrc"]


def _hm(base: float, novel: float) -> float:
    return 2 * base * novel / (base + novel)


def test_reduced_default_run_reproduces_the_headline_ordering(tmp_path):
    import dplbench

    settings = {"protocol": "base2novel", "datasets": [DATASET], "methods": METHODS, "seeds": [1, 2, 3],
                "ray.enabled": False, "tracking.enabled": False, "run.output_dir": str(tmp_path)}
    summary = dplbench.run(**settings)
    assert not summary.failed, summary.failed
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in dplbench.load_results(**settings):
        for split in ("base", "novel"):
            sums[record["unit"]["method"]][split].append(record["metrics"][split])
    assert {m: len(v["base"]) for m, v in sums.items()} == {m: 3 for m in METHODS}
    mean = {m: {s: sum(v) / len(v) for s, v in splits.items()} for m, splits in sums.items()}
    hm = {m: _hm(v["base"], v["novel"]) for m, v in mean.items()}
    # measured at the default (seeds 1-3): CoOp Novel 86.3 vs zero-shot 92.0; HM KgCoOp 84.5, CoOp 81.8,
    # PromptSRC 85.6, IVLP 80.5
    assert mean["coop"]["novel"] < mean["zsclip"]["novel"] - 3, mean
    assert hm["kgcoop"] > hm["coop"] + 1, hm
    assert hm["promptsrc"] > hm["ivlp"] + 2, hm
