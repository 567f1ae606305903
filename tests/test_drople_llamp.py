"""drople_llamp and the [llm] extra (docs/methods.md §5.2): parameter count formula, LR schedule, LoRA at init,
exempt tokens under IWTD, the knowledge cache, the CLI without the extra and a two-step run on the toy suite."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["cat", "dog", "red fire truck"]
DATASET = "oxford_pets"


# ---------------------------------------------------------------------------------------------------------------
# without the extra (runs everywhere)
# ---------------------------------------------------------------------------------------------------------------
def _without_transformers(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys; sys.modules['transformers'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_without_the_extra_ls_lists_it_and_selecting_it_is_one_line(tmp_path):
    listed = _without_transformers("from dplbench.cli import main; sys.exit(main(['ls', 'methods']))")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("drople_llamp"))
    assert 'pip install "dplbench[llm]"' in line
    run = _without_transformers("from dplbench.cli import main; sys.exit(main(['run', 'methods=[drople_llamp]', "
                                f"'run.output_dir={tmp_path}', 'ray.enabled=false', 'tracking.enabled=false']))")
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and 'pip install "dplbench[llm]"' in run.stderr, run.stderr
    assert not (tmp_path / "runs").exists()
    details = _without_transformers("from dplbench.cli import main; sys.exit(main(['ls', 'methods', 'drople_llamp', "
                                    "'--details']))")
    assert details.returncode == 0 and "lora_rank" in details.stdout   # options and recipes need no extra


def test_missing_llm_path_is_one_line(capsys):
    from dplbench.cli import main

    assert main(["build-knowledge", "dataset=toy_shapes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llm.path" in err


def test_llamp_lr_multipliers_match_the_spec_tables():
    from dplbench.engine.schedule import llamp_lr_multiplier

    table_20 = [1.0, 0.994, 0.976, 0.946, 0.905, 0.854, 0.794, 0.727, 0.655, 0.578, 0.5, 0.422, 0.345, 0.273,
                0.206, 0.146, 0.095, 0.054, 0.05, 0.05]
    steps = 50
    got = [round(llamp_lr_multiplier(0.05, e, steps - 1, steps, 20), 3) for e in range(20)]
    assert got == table_20
    assert [round(llamp_lr_multiplier(0.05, e, 0, 1, 5), 3) for e in range(5)] == [1.0, 0.994, 0.976, 0.946, 0.905]
    assert llamp_lr_multiplier(0.05, 0, 4, 50, 20) == 0.05 and llamp_lr_multiplier(0.05, 0, 5, 50, 20) == 1.0
    assert llamp_lr_multiplier(0.25, 19, 0, 50, 20) == 0.25   # the LoRA group's floor


def llamp_parameter_count(*, d_t: int, d_v: int, embed: int, hidden: int, q_out: int, n_ctx: int = 4,
                          n_vis: int = 4, n_llm: int = 24, text_depth: int = 9, vision_depth: int = 6,
                          lora_layers: int = 6, rank: int = 8, mag_tokens: int = 64) -> int:
    """The trainable-parameter formula of docs/methods.md §5.2 ("Trainable parameters")."""
    return (vision_depth * n_vis * d_v + text_depth * n_ctx * d_t + n_llm * hidden
            + 2 * hidden * q_out + 3 * hidden + text_depth * hidden * d_t + text_depth * n_llm * d_t + 1
            + mag_tokens * embed + (d_v + 1) * embed + (d_t + 1) * embed + lora_layers * 2 * 2 * rank * d_v)


def test_the_formula_gives_the_spec_total_at_full_size():
    assert llamp_parameter_count(d_t=512, d_v=768, embed=512, hidden=4096, q_out=4096) == 53_523_457


# ---------------------------------------------------------------------------------------------------------------
# with the extra
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm_context(tmp_path_factory):
    pytest.importorskip("transformers")
    from llm_fixtures import tiny_llm_knowledge

    return tiny_llm_knowledge(tmp_path_factory.mktemp("llm"), DATASET, CLASSES)


def _method(backbone, context, **options):
    import torch

    from dplbench.catalog import METHODS
    from dplbench.engine.method import MethodContext
    from dplbench.engine.recipes import build_options

    cls = METHODS.get("drople_llamp")
    torch.manual_seed(0)
    return cls(backbone, list(CLASSES), DATASET, build_options(cls.Options, options, "drople_llamp"),
               MethodContext(**context))


@pytest.mark.llm
def test_parameter_count_follows_the_formula(tiny_backbone, llm_context):
    b = tiny_backbone
    method = _method(b, llm_context, vision_depth=1)
    import json

    cfg = json.loads((Path(llm_context["llm_path"]) / "config.json").read_text())
    expected = llamp_parameter_count(d_t=b.text_width, d_v=b.vision_width, embed=b.embed_dim,
                                     hidden=cfg["hidden_size"], q_out=cfg["hidden_size"],
                                     text_depth=min(9, b.text_layers), vision_depth=1,
                                     lora_layers=b.vision_layers - 1)
    assert method.num_trainable() == expected
    assert set(method.learned_state()) == {k for k, p in method.named_parameters() if p.requires_grad}


@pytest.mark.llm
def test_optimizer_groups_and_floors(tiny_backbone, llm_context):
    from dplbench.engine.trainer import TrainSettings

    method = _method(tiny_backbone, llm_context, vision_depth=1)
    opt = method.build_optimizer(TrainSettings(epochs=20, lr=2e-4, batch_size=4))
    assert type(opt).__name__ == "AdamW" and [g["lr"] for g in opt.param_groups] == [2e-4, 2e-5]
    assert [round(g["floor"], 6) for g in opt.param_groups] == [0.05, 0.25]
    lora = {id(p) for p in method.lora.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == lora and opt.param_groups[0]["weight_decay"] == 5e-5


@pytest.mark.llm
def test_lora_starts_as_the_frozen_tower(tiny_backbone, llm_context):
    import torch

    method = _method(tiny_backbone, llm_context, vision_depth=1)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    method.train()  # LoRA dropout active: B = 0 still gives a zero delta
    frozen = tiny_backbone.encode_image(images).features
    adapted = tiny_backbone.encode_image(images, qkv_delta=method.lora.deltas()).features
    assert torch.equal(frozen, adapted)
    with torch.no_grad():
        method.lora.adapters[0].b_q.fill_(0.1)
    moved = tiny_backbone.encode_image(images, qkv_delta=method.lora.deltas()).features
    assert not torch.allclose(frozen, moved)


@pytest.mark.llm
def test_iwtd_never_touches_exempt_text_tokens(tiny_backbone, llm_context):
    import torch

    from dplbench.dropout.hook import BranchDropoutHook, IWTDSettings

    method = _method(tiny_backbone, llm_context)
    layout = method.text_token_layout()
    c, length = layout.content.shape
    start, end = method._llm_slots
    expected = torch.zeros(length, dtype=torch.bool)
    expected[:5] = True
    expected[start:end] = True
    assert torch.equal(layout.eligible.cpu(), expected.expand(c, -1))   # SOS, 4 ctx, 24 LLM tokens only
    settings = IWTDSettings(p_max=1.0, p_min=1.0, sigma=0.5)
    hook = BranchDropoutHook("text", layout, settings, iwtd_layers=[0], mag=method.mag)
    hidden = torch.randn(c, length, tiny_backbone.text_width)
    attn = torch.softmax(torch.randn(c, 4, length, length), dim=-1)
    out = hook(0, hidden, attn)
    changed = (out != hidden).any(dim=-1)
    assert not changed[~layout.eligible].any() and changed[layout.eligible].all()


@pytest.mark.llm
def test_knowledge_cache_round_trips_and_resumes(tmp_path, llm_context):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dplbench.llm import llm_identity
    from dplbench.llm.knowledge import build_knowledge, class_file, last_layer_kv, load_knowledge, read_manifest
    from dplbench.llm.questions import question_set
    from dplbench.workspace import knowledge_cache

    llm = llm_context["llm_path"]
    own = question_set(DATASET)
    folder = knowledge_cache(llm_context["knowledge_dir"], DATASET, llm_identity(llm)["id"], own.key)
    manifest = read_manifest(folder)
    assert manifest["questions"] == list(own.questions) and manifest["noun_phrases"] == "rules"
    assert manifest["questions_source"] == {"source": "dplbench", "file": None, "sha256": None, "key": own.key}
    assert manifest["llm"]["model_type"] == "llama" and "transformers" in manifest["versions"]
    again = build_knowledge(DATASET, CLASSES, llm, llm_context["knowledge_dir"], extractor="rules",
                            max_new_tokens=2, log=lambda _: None)
    assert (again.folder, again.built, again.skipped) == (folder, 0, len(CLASSES))
    knowledge = load_knowledge(folder, CLASSES[::-1])
    stored = torch.load(class_file(folder, CLASSES[0]), weights_only=True)
    assert knowledge.num_templates == 11
    for t in (0, 10):
        length = stored["keys"][t].shape[1]
        assert int(knowledge.mask[t][-1].sum()) == length
        assert torch.equal(knowledge.keys[t][-1, :, :length], stored["keys"][t])
    # the stored keys/values are what transformers' own KV cache holds for the last layer
    model = AutoModelForCausalLM.from_pretrained(llm, local_files_only=True).eval()
    ids = AutoTokenizer.from_pretrained(llm, local_files_only=True)("a photo of a red circle")["input_ids"]
    keys, values = last_layer_kv(model, ids)
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values
    layer = cache.layers[-1]
    torch.testing.assert_close(keys, layer.keys[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, layer.values[0], rtol=1e-5, atol=1e-5)


@pytest.mark.llm
def test_two_step_run_on_the_toy_suite(tmp_path):
    pytest.importorskip("transformers")
    import hashlib
    import json

    from llm_fixtures import save_tiny_llama

    from dplbench.cli import main

    llm = save_tiny_llama(tmp_path / "llm")
    out = tmp_path / "out"
    questions = _question_file(tmp_path, "q.yaml", {"default": _eleven("shape")})   # llm.questions travels too
    assert main(["build-knowledge", "dataset=toy_shapes", f"llm.path={llm}", f"run.output_dir={out}",
                 "noun_phrases=rules", "max_new_tokens=2", f"llm.questions={questions}"]) == 0
    assert main(["run", "methods=[drople_llamp]", "datasets=[toy_shapes]", "seeds=[1]", "shots=[1]",
                 "train.epochs=1", "train.batch_size=2", "method.vision_depth=2", f"llm.path={llm}",
                 f"llm.questions={questions}", f"run.output_dir={out}", "ray.enabled=false",
                 "tracking.enabled=false", "run.device=cpu"]) == 0
    result = json.loads(next((out / "runs").rglob("*.json")).read_text())
    assert result["status"] == "done", result.get("error")
    history = result["history"]
    assert history[0]["steps"] == 2 and math.isfinite(history[0]["loss"])   # 4 base classes x 1 shot, batch 2
    assert 0.0 <= result["metrics"]["hm"] <= 100.0
    faith = result["faithfulness"]
    method = faith["method"]
    assert method["llm"]["model_type"] == "llama" and method["quirks"]["teacher_image"] == "lora_train"
    assert method["knowledge"]["questions"] == _eleven("shape")
    assert method["knowledge"]["questions_source"]["sha256"] == hashlib.sha256(questions.read_bytes()).hexdigest()
    assert faith["schedule"]["optimizer"] == "adamw" and faith["schedule"]["floors"] == pytest.approx([0.05, 0.25])
    assert any("PatchRandAugment" in step for step in faith["transforms"]["train"])


def test_published_drople_rows_attach_to_drople_llamp_only():
    from dplbench.report.reference import load_reference

    ref = load_reference()
    assert ref.lookup("base2novel", "drople_llamp", "Average", "hm").value == pytest.approx(82.10)
    assert ref.lookup("base2novel", "drople_llamp", "imagenet", "base").value == pytest.approx(78.24)
    assert ref.lookup("base2novel", "drople", "Average", "hm") is None


@pytest.mark.llm
def test_run_without_llm_path_stops_before_any_unit(tmp_path, capsys):
    pytest.importorskip("transformers")
    from dplbench.cli import main

    assert main(["run", "methods=[drople_llamp]", "datasets=[toy_shapes]", "seeds=[1]", f"run.output_dir={tmp_path}",
                 "ray.enabled=false", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llm.path" in err
    assert not (tmp_path / "runs").exists()


def test_rule_noun_phrases_split_at_function_words_and_punctuation():
    from dplbench.llm.noun_phrases import noun_phrase_extractor, rule_noun_phrases

    assert rule_noun_phrases("a sleek body with long wings, and a pointed nose.") == \
        ["a sleek body", "long wings", "a pointed nose"]
    assert rule_noun_phrases("It appears as the red circle") == ["It", "the red circle"]
    assert noun_phrase_extractor("rules")[0] == "rules"


def test_two_views_are_the_patch_augmented_and_the_clean_image():
    import random

    import numpy as np
    import torch
    from PIL import Image

    from dplbench.data.patch_augment import PatchRandAugment, two_view_transform
    from dplbench.data.transforms import build_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    transform, described = two_view_transform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    random.seed(1)
    views = transform(image)
    assert views.shape == (2, 3, 32, 32)
    assert torch.equal(views[1], build_transform(False, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(image))
    assert not torch.equal(views[0], views[1]) and any("PatchRandAugment" in d for d in described)
    # each 16x16 tile is augmented on its own: a uniform tile stays uniform next to a textured one
    square = np.asarray(image.crop((0, 0, 32, 32))).copy()
    square[:16, :16] = 90
    out = np.asarray(PatchRandAugment(patch=16, n=2, magnitude=7, rng=random.Random(3))(Image.fromarray(square)))
    assert len(np.unique(out[:16, :16].reshape(-1, 3), axis=0)) == 1
    assert PatchRandAugment().factor == pytest.approx(1.36)


@pytest.mark.llm
def test_released_text_mask_hides_the_first_llm_slot_of_the_longest_names(tiny_backbone, llm_context):
    released = _method(tiny_backbone, llm_context)
    clean = _method(tiny_backbone, llm_context, text_mask="clean")
    slot = released._llm_slots[0]
    lengths = [len(c.split()) for c in CLASSES]
    longest = lengths.index(max(lengths))
    assert not released._key_mask[longest, slot] and all(released._key_mask[i, slot] for i in range(len(CLASSES))
                                                          if i != longest)
    assert clean._key_mask[:, slot].all()
    eot = tiny_backbone.tokenize([f"a photo of a {c}" for c in CLASSES]).argmax(-1).tolist()
    for i, end in enumerate(eot):   # SOS, ctx and the name are visible; the old EOS and the pads after it are not
        assert released._key_mask[i, :end].all() and not released._key_mask[i, end:slot].any()
    assert released._key_mask[:, slot + 1:].all()   # the other LLM slots and the final EOS


# ---------------------------------------------------------------------------------------------------------------
# knowledge questions: dplbench's own, or a user's file (llm.questions=PATH)
# ---------------------------------------------------------------------------------------------------------------
def _question_file(folder: Path, name: str, table: dict) -> Path:
    import json

    import yaml

    path = folder / name
    path.write_text(json.dumps(table) if name.endswith(".json") else yaml.safe_dump(table), encoding="utf-8")
    return path


def _eleven(word: str) -> list[str]:
    return [f"{word} number {i} about a {{}}." for i in range(11)]


def test_own_questions_are_eleven_per_dataset_built_from_its_zero_shot_template():
    from dplbench.catalog import DATASETS
    from dplbench.llm.templates import default_questions, subject_phrase, teacher_template

    for name in DATASETS.list("*"):
        template = DATASETS.get(name).template
        questions = default_questions(name)
        assert len(questions) == 11 and len(set(questions)) == 11, name
        assert all(q.count("{}") == 1 and subject_phrase(template) in q for q in questions), name
        assert teacher_template(name) == template
    assert subject_phrase("a photo of a {}, a type of aircraft.") == "a {}, a type of aircraft"
    assert default_questions("fgvc_aircraft")[0].format("Boeing 737") == \
        "describe the visual appearance of a Boeing 737, a type of aircraft."
    assert default_questions("dtd")[0].endswith("of {} texture.")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_question_file_round_trips_with_its_sha256_and_its_own_cache_key(tmp_path, suffix):
    import hashlib

    from dplbench.llm.questions import question_set

    path = _question_file(tmp_path, "q" + suffix, {"oxford_pets": _eleven("pets"), "default": _eleven("any")})
    pets = question_set("oxford_pets", path)
    assert pets.questions == tuple(_eleven("pets"))
    assert pets.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and pets.file == str(path)
    assert question_set("dtd", path).questions == tuple(_eleven("any"))     # the default entry
    other = _question_file(tmp_path, "other" + suffix, {"oxford_pets": _eleven("other")})
    keys = {pets.key, question_set("oxford_pets", other).key, question_set("oxford_pets").key}
    assert len(keys) == 3 and pets.key.startswith("file-")
    assert pets.record() == {"source": "file", "file": str(path), "sha256": pets.sha256, "key": pets.key}


@pytest.mark.parametrize("content, problem", [
    ({"oxford_pets": _eleven("x")[:10]}, "needs a list of 11 questions, got 10"),
    ({"oxford_pets": "describe a {}."}, "needs a list of 11 questions, got str"),
    ({"oxford_pets": [*_eleven("x")[:10], "no slot here."]}, "question 11 must hold exactly one"),
    ({"oxford_pets": [*_eleven("x")[:10], "two {} and {}."]}, "question 11 must hold exactly one"),
    ({"oxford_pets": [*_eleven("x")[:10], "a {name}."]}, "question 11 must hold exactly one"),
    ({"oxford_pets": [*_eleven("x")[:10], "  "]}, "question 11 is not a non-empty string"),
    ({"oxford_pet": _eleven("x")}, "'oxford_pet' is not a dataset name"),
    (["describe a {}."], "expected a mapping"),
    ("{not json", "not valid JSON"),
    (None, "cannot read the questions file"),
])
def test_bad_question_files_are_one_line_errors_naming_the_file(tmp_path, content, problem):
    import json

    from dplbench.errors import ConfigError
    from dplbench.llm.questions import question_set

    path = tmp_path / "questions.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        question_set("oxford_pets", path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and problem in message, message


def test_a_question_file_without_the_dataset_is_one_line(tmp_path):
    from dplbench.errors import ConfigError
    from dplbench.llm.questions import question_set

    path = _question_file(tmp_path, "q.yaml", {"dtd": _eleven("dtd")})
    with pytest.raises(ConfigError, match="no questions for dataset 'oxford_pets'"):
        question_set("oxford_pets", path)


@pytest.mark.llm
def test_a_question_file_builds_its_own_cache_recorded_in_the_manifest(tmp_path, llm_context):
    pytest.importorskip("transformers")
    import hashlib

    from dplbench.llm.knowledge import build_knowledge, read_manifest
    from dplbench.llm.questions import question_set

    path = _question_file(tmp_path, "q.json", {DATASET: [f"describe the {i} shape of a {{}}." for i in range(11)]})
    questions = question_set(DATASET, path)
    report = build_knowledge(DATASET, CLASSES[:1], llm_context["llm_path"], llm_context["knowledge_dir"],
                             questions=questions, extractor="rules", max_new_tokens=2, log=lambda _: None)
    own = build_knowledge(DATASET, CLASSES[:1], llm_context["llm_path"], llm_context["knowledge_dir"],
                          extractor="rules", max_new_tokens=2, log=lambda _: None)
    assert report.built == 1 and own.built == 0 and report.folder != own.folder
    assert report.folder.name == questions.key
    manifest = read_manifest(report.folder)
    assert manifest["questions"] == list(questions.questions)
    assert manifest["questions_source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_manifest(own.folder)["questions"] != manifest["questions"]


@pytest.mark.llm
def test_run_with_a_bad_question_file_stops_before_any_unit(tmp_path, capsys, llm_context):
    pytest.importorskip("transformers")
    from dplbench.cli import main

    path = _question_file(tmp_path, "q.yaml", {"toy_shapes": ["describe a {}."]})
    assert main(["run", "methods=[drople_llamp]", "datasets=[toy_shapes]", "seeds=[1]", f"run.output_dir={tmp_path}",
                 f"llm.path={llm_context['llm_path']}", f"llm.questions={path}", "ray.enabled=false",
                 "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "got 1" in err
    assert not (tmp_path / "runs").exists()


def test_another_llm_or_question_file_makes_new_units_not_reused_ones(tmp_path):
    """llm.path and llm.questions are runtime paths, outside the unit hash; their contents are inside it. Only the
    LLM method's units change, and moving the same files elsewhere changes nothing."""
    import json
    import shutil

    from dplbench.api import resolve_config
    from dplbench.units import expand_units

    def llm_folder(name: str, layers: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers}))
        return folder

    first, second = llm_folder("llm_a", 2), llm_folder("llm_b", 3)
    copy = tmp_path / "moved" / "llm_a"
    shutil.copytree(first, copy)
    questions = _question_file(tmp_path, "q.yaml", {"default": _eleven("shape")})
    other_questions = _question_file(tmp_path, "q2.yaml", {"default": _eleven("form")})

    def hashes(**llm: str) -> dict[str, str]:
        cfg = resolve_config(methods=["drople_llamp", "coop"], datasets=["toy_shapes"], seeds=[1], llm=llm)
        return {u.method: u.config_hash for u in expand_units(cfg)}

    base = hashes(path=str(first))
    assert hashes(path=str(copy)) == base                                  # same content, other place
    assert hashes(path=str(second))["drople_llamp"] != base["drople_llamp"]
    assert hashes(path=str(first), questions=str(questions))["drople_llamp"] != base["drople_llamp"]
    with_file = hashes(path=str(first), questions=str(questions))["drople_llamp"]
    assert hashes(path=str(first), questions=str(other_questions))["drople_llamp"] != with_file
    assert {hashes(path=str(p))["coop"] for p in (first, second)} == {base["coop"]}
