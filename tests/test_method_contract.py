"""The contract every registered method adapter keeps, checked on the tiny random CLIP.

The tests are parametrised over ``METHODS.list()`` (the registry, filled by reading ``methods/*.py``), so a new
adapter file is put under contract without editing this file; ``test_new_adapter_file_is_put_under_contract``
(slow) shows it with a temporary copy of the ``methods`` package.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import os
import shutil
import subprocess
import tempfile
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from dplbench.catalog import METHODS  # noqa: E402
from dplbench.engine.method import TRAINABLE, MethodContext, PromptMethod, StepState  # noqa: E402
from dplbench.engine.recipes import Recipe, build_options  # noqa: E402
from dplbench.vocabulary import RecipeFamily  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["cat", "dog", "red fire truck"]
DATASET = "oxford_pets"
RECIPE_CASES = [("imagenet", 16), ("dtd", 1), ("eurosat", 4), ("oxford_pets", None)]
ALL_METHODS = METHODS.list()
NEEDS_LLM = frozenset({"drople_llamp"})   # the [llm] extra, a tiny Llama and its knowledge cache


@functools.cache
def llm_context() -> dict:
    from llm_fixtures import tiny_llm_knowledge

    return tiny_llm_knowledge(Path(tempfile.mkdtemp(prefix="dplbench-contract-llm-")), DATASET, CLASSES)


def build(name: str, backbone, seed: int = 0, family: str = "base2novel") -> PromptMethod:
    cls = METHODS.get(name)
    opts = build_options(cls.Options, cls.recipe(family, DATASET, 16).options, name)
    extra = llm_context() if name in NEEDS_LLM else {}
    torch.manual_seed(seed)
    return cls(backbone, list(CLASSES), DATASET, opts, MethodContext(recipe=family, num_epochs=2, **extra))


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def train_one_step(method: PromptMethod, backbone) -> dict[str, torch.Tensor]:
    """One SGD step on a fixed batch; returns the step's loss terms."""
    batch, labels = images(), torch.tensor([0, 1, 2, 1])
    clean = backbone.frozen_image_features(images(seed=1)) if method.needs_clean_features else None
    method.train()
    torch.manual_seed(3)
    terms = method.training_step(batch, labels, StepState(epoch=0, num_epochs=2, step=0, steps_per_epoch=1,
                                                          clean_features=clean))
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.01)
    optimizer.zero_grad()
    terms["loss"].backward()
    optimizer.step()
    method.eval()
    return terms


@torch.no_grad()
def eval_logits(method: PromptMethod, seed: int = 2) -> torch.Tensor:
    method.eval()
    return method.logits(images(3, seed))


@pytest.fixture(params=ALL_METHODS)
def name(request) -> str:
    if request.param in NEEDS_LLM:
        pytest.importorskip("transformers", reason="drople_llamp needs the [llm] extra")
    return request.param


def test_builds_and_one_training_step_is_finite(name, tiny_backbone):
    method = build(name, tiny_backbone)
    assert isinstance(method, PromptMethod) and METHODS.canonical(method.name) == name
    logits = eval_logits(method)
    assert logits.shape == (3, len(CLASSES)) and torch.isfinite(logits).all()
    if TRAINABLE not in method.capabilities:
        assert method.num_trainable() == 0
        with pytest.raises(NotImplementedError):
            method.training_step(images(), torch.tensor([0, 1, 2, 1]), StepState(0, 1, 0, 1))
        return
    assert method.num_trainable() > 0
    before = {k: v.clone() for k, v in method.learned_state().items()}
    terms = train_one_step(method, tiny_backbone)
    assert terms["loss"].dim() == 0 and all(torch.isfinite(v).all() for v in terms.values()), terms
    after = method.learned_state()
    assert all(torch.isfinite(v).all() for v in after.values()), "a parameter became NaN/inf after one step"
    assert any(not torch.equal(before[k], after[k]) for k in before), "one training step changed nothing"


def _step_and_logits(name: str, backbone) -> dict[str, torch.Tensor]:
    method = build(name, backbone)
    out = {"logits_before": eval_logits(method)}
    if TRAINABLE in method.capabilities:
        terms = train_one_step(method, backbone)
        out |= {f"loss/{k}": v.detach() for k, v in terms.items() if torch.is_tensor(v)}
    out |= {f"param{i}": p.detach().clone() for i, p in enumerate(method.trainable_parameters())}
    return out | {"logits": eval_logits(method)}


def test_fused_tower_blocks_keep_the_method_math(name, tiny_backbone, monkeypatch, legacy_run_block):
    """One training step (loss terms, updated prompts) and the evaluation logits are the same with the fused
    attention blocks as with open_clip's own block/MultiheadAttention path (docs/methods.md §2.2-2.4)."""
    from dplbench.backbone import towers

    if name in NEEDS_LLM:
        pytest.skip("LoRA adds a q/v delta to the packed projection, which open_clip's block path cannot take")
    fused = _step_and_logits(name, tiny_backbone)
    monkeypatch.setattr(towers, "run_block", legacy_run_block)
    legacy = _step_and_logits(name, tiny_backbone)
    assert fused.keys() == legacy.keys()
    for key in fused:
        torch.testing.assert_close(fused[key], legacy[key], rtol=1e-5, atol=1e-5, msg=f"{name}: {key}")


def test_learned_state_round_trip_reproduces_logits(name, tiny_backbone):
    trained = build(name, tiny_backbone, seed=0)
    if TRAINABLE in trained.capabilities:
        train_one_step(trained, tiny_backbone)
    state = trained.learned_state()
    assert set(state) == {k for k, _ in trained.named_parameters()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = build(name, tiny_backbone, seed=1)
    expected = eval_logits(trained)
    if TRAINABLE in trained.capabilities:
        assert not torch.equal(eval_logits(fresh), expected), "a fresh instance already equals the trained one"
    fresh.load_learned_state(torch.load(buffer, weights_only=True))
    assert torch.equal(eval_logits(fresh), expected)


def test_frozen_image_tower_claim_holds(name, tiny_backbone):
    method = build(name, tiny_backbone)
    if "frozen_image_tower" not in method.capabilities:
        pytest.skip("the image features depend on the learned state")
    x = images(3, seed=5)
    with torch.no_grad():
        from_features = method.logits_from_image_features(tiny_backbone.frozen_image_features(x))
        assert torch.allclose(from_features, eval_logits(method, seed=5), atol=1e-5)


def test_options_round_trip(name):
    from omegaconf import OmegaConf

    cls = METHODS.get(name)
    assert dataclasses.is_dataclass(cls.Options)
    variants = [cls.Options()] + [build_options(cls.Options, cls.recipe(f.value, d, s).options, name)
                                  for f in RecipeFamily if f.value in cls.RECIPES for d, s in RECIPE_CASES]
    for options in variants:
        plain = dataclasses.asdict(options)
        back = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Options), plain))
        assert type(back) is cls.Options and back == options
        assert build_options(cls.Options, json.loads(json.dumps(plain)), name) == options  # as results record them


def test_a_recipe_for_every_family(name):
    cls = METHODS.get(name)
    trainable = TRAINABLE in cls.capabilities
    for family in RecipeFamily:
        for dataset, shots in RECIPE_CASES:
            recipe = cls.recipe(family.value, dataset, shots)
            assert isinstance(recipe, Recipe) and recipe.source, (family, dataset, shots)
            assert recipe.batch_size >= 1 and recipe.epochs >= 0 and recipe.lr >= 0
            assert not trainable or (recipe.epochs > 0 and recipe.lr > 0), (family, dataset, shots)
            build_options(cls.Options, recipe.options, name)  # the recipe's options are the method's options


def test_listed_by_the_cli(name, capsys):
    from dplbench.cli import main

    assert main(["ls", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:1] == [name] and METHODS.describe(name) in line for line in lines), lines


def test_adapter_depends_on_the_engine_not_on_other_adapters(name):
    """No import of another adapter module, no reaching into the backbone's open_clip model."""
    cls = METHODS.get(name)
    own = cls.__module__
    tree = ast.parse(Path(inspect.getsourcefile(cls)).read_text(encoding="utf-8"))
    package = own.rpartition(".")[0]
    for node in ast.walk(tree):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for module in modules:
            assert not (package and module.startswith(package + ".") and module != own), \
                f"{own} imports the adapter module {module} (line {node.lineno})"
        if isinstance(node, ast.Attribute) and node.attr == "model":
            raise AssertionError(f"{own} reaches into `.model` (line {node.lineno}); use the Backbone's API")


# ---------------------------------------------------------------------------------------------------------------
# a new adapter file gets the contract for free
# ---------------------------------------------------------------------------------------------------------------
_DUMMY = '''
"""A dummy adapter: CoOp-style prompts with a 2-token random context."""
from dataclasses import dataclass

from dplbench.engine.method import register_method
from dplbench.engine.recipes import Recipe
from dplbench.engine.text_prompted import TextPromptedMethod


@dataclass
class DummyOptions:
    n_ctx: int = 2
    ctx_init: str = ""
    class_position: str = "end"
    class_specific: bool = False


_RECIPE = Recipe(1, 0.01, 2, source="dummy")


@register_method("{name}", description="a dummy adapter dropped into methods/")
class Dummy(TextPromptedMethod):
    Options = DummyOptions
    RECIPES = {recipes}
'''


@pytest.mark.slow  # a second pytest process: ~25 s on 2 cores
def test_new_adapter_file_is_put_under_contract(tmp_path):
    """Lay out a copy of the package as it is installed (``dplbench/methods`` holding the repository's methods/),
    add two adapter files and run this module on them in a fresh process that imports the copy: both get every
    contract test, and the one without a long-tail recipe fails exactly the recipe test."""
    package = tmp_path / "dplbench"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "dplbench", package, ignore=ignore)
    for folder, installed in (("methods", "methods"), ("protocols", "protocols"), ("results/reference", "reference")):
        shutil.copytree(REPO / folder, package / installed, ignore=ignore)
    families = [f.value for f in RecipeFamily]
    for name, chosen in (("dummy_complete", families), ("dummy_no_long_tail", families[:-1])):
        recipes = "{" + ", ".join(f'"{f}": _RECIPE' for f in chosen) + "}"
        (package / "methods" / f"{name}.py").write_text(textwrap.dedent(_DUMMY.format(name=name, recipes=recipes)))
    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                           "-c", str(REPO / "pyproject.toml"), str(Path(__file__)), "-k", "dummy",
                           f"--junitxml={report}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[case.get("name")] = "failed" if failed else ("skipped" if case.find("skipped") is not None
                                                              else "passed")
    contract = sorted(n for n, obj in globals().items() if n.startswith("test_") and callable(obj)
                      and "name" in inspect.signature(obj).parameters)
    for dummy in ("dummy_complete", "dummy_no_long_tail"):
        ran = {n.split("[")[0]: o for n, o in outcomes.items() if n.endswith(f"[{dummy}]")}
        assert sorted(ran) == contract, (dummy, outcomes, proc.stdout[-2000:])
    assert {n for n, o in outcomes.items() if o == "failed"} == {"test_a_recipe_for_every_family[dummy_no_long_tail]"}, \
        (outcomes, proc.stdout[-3000:])
    assert outcomes["test_frozen_image_tower_claim_holds[dummy_complete]"] == "passed"
