"""The offline per-dataset LLM knowledge cache of ``drople_llamp`` (docs/methods.md §5.2; ``dplbench
build-knowledge``).

For every class and each of the dataset's 11 question templates (dplbench's own, or a ``llm.questions`` file:
:mod:`dplbench.llm.questions`):

1. the question (``"In one sentence, " + template``) goes into the LLM's chat template with the system prompt
   ``"You are a helpful assistant."`` (no generation prompt, as released), followed by ``" The {class} appears as"``;
2. the LLM answers greedily (128 new tokens at most);
3. the answer's noun phrases (:mod:`dplbench.llm.noun_phrases`) are joined with ", " and tokenised on their own;
4. question + noun phrases run through the LLM once, and the keys and values the **last** decoder layer computes for
   them (after RoPE, as a KV cache holds them) are stored.

One file per class (written atomically; a finished class is skipped on a rerun, so an interrupted build resumes),
plus ``manifest.json`` (LLM identity, questions and their source, extractor, versions). The sequences are stored
unpadded; the attention mask of a template's batch is rebuilt from their lengths when loaded. The cache lives in
the output folder, one per dataset, LLM and question set: ``workspace.knowledge_cache(Workspace.knowledge,
dataset, llm_id, key)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dplbench.errors import ConfigError
from dplbench.fileio import atomic_torch_save, atomic_write_text
from dplbench.llm import llm_identity
from dplbench.llm import templates as T
from dplbench.llm.questions import QuestionSet, question_set
from dplbench.workspace import knowledge_cache

FORMAT = "dplbench-llm-knowledge/1"
MANIFEST = "manifest.json"
NOUN_PHRASE_MAX_TOKENS = 128


def class_file(folder: Path, classname: str) -> Path:
    return folder / "classes" / (hashlib.sha256(classname.encode()).hexdigest()[:20] + ".pt")


def question_text(tokenizer: Any, template: str, classname: str) -> str:
    """The full LLM input of one (class, template) before the answer (chat template + the answer's lead)."""
    name = T.display_name(classname)
    chat = [{"role": "system", "content": T.SYSTEM_PROMPT},
            {"role": "user", "content": T.QUESTION_PREFIX + template.format(name)}]
    return tokenizer.apply_chat_template(chat, tokenize=False) + T.ANSWER_LEAD.format(name)


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[list[int]], batch_size: int,
                     max_new_tokens: int = T.MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers (at most ``max_new_tokens``, released: 128) to tokenised prompts, batched with left
    padding."""
    answers: list[str] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers


@torch.no_grad()
def last_layer_kv(model: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [kv_heads, T, head_dim] the last decoder layer computes for the unpadded sequence ``ids``
    (positions 0..T-1, RoPE applied to the keys)."""
    from dplbench.llm.decoder import layer_keys_values

    layer = model.model.layers[-1]
    seen: dict[str, torch.Tensor] = {}

    def grab(module: Any, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        device = next(model.parameters()).device
        model.model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        handle.remove()
    positions = torch.arange(len(ids), device=seen["hidden"].device)[None]
    keys, values = layer_keys_values(layer, model.model.rotary_emb, seen["hidden"], positions)
    return keys[0].cpu(), values[0].cpu()


@dataclass
class BuildReport:
    folder: Path
    built: int
    skipped: int


def build_knowledge(dataset: str, classnames: Sequence[str], llm_path: str | Path, knowledge_root: Path, *,
                    questions: QuestionSet | None = None, extractor: str = "auto", batch_size: int = 16,
                    device: str = "cpu", dtype: torch.dtype | None = None, max_new_tokens: int = T.MAX_NEW_TOKENS,
                    log: Callable[[str], None] = print) -> BuildReport:
    """Build (or resume) the knowledge cache of ``classnames`` under ``knowledge_root`` (a workspace's
    ``knowledge`` folder); ``questions`` None = dplbench's own for ``dataset``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dplbench.environment import package_versions
    from dplbench.llm.noun_phrases import noun_phrase_extractor

    identity = llm_identity(llm_path)
    question_source = questions or question_set(dataset)
    folder = knowledge_cache(knowledge_root, dataset, identity["id"], question_source.key)
    extractor_name, extract = noun_phrase_extractor(extractor)
    questions_used = list(question_source.questions)
    manifest = {"format": FORMAT, "dataset": dataset, "llm": identity, "questions": questions_used,
                "questions_source": question_source.record(),
                "system_prompt": T.SYSTEM_PROMPT, "question_prefix": T.QUESTION_PREFIX,
                "answer_lead": T.ANSWER_LEAD, "max_new_tokens": max_new_tokens, "decoding": "greedy",
                "noun_phrases": extractor_name, "layers_cached": "last decoder layer (keys after RoPE, values)"}
    previous = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    if previous is not None and _recipe(previous) != _recipe(manifest):
        raise ConfigError(f"{folder} holds a knowledge cache built differently (LLM, questions or extractor); "
                          "remove it or use another run.output_dir")
    todo = [c for c in classnames if not _finished(folder, c, len(questions_used))]
    manifest["classes"] = sorted(set(classnames) | set((previous or {}).get("classes", [])))
    manifest["versions"] = package_versions(("torch", "transformers", "spacy"))
    if not todo:
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return BuildReport(folder, 0, len(classnames))
    tokenizer = AutoTokenizer.from_pretrained(str(llm_path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(llm_path), local_files_only=True,
                                                 dtype=dtype or torch.float32).to(device).eval()
    log(f"knowledge cache {folder}: {len(todo)} of {len(classnames)} classes to build "
        f"({len(questions_used)} questions each, noun phrases: {extractor_name})")
    for n, classname in enumerate(todo, 1):
        prompts = [tokenizer(question_text(tokenizer, q, classname))["input_ids"] for q in questions_used]
        answers = generate_answers(model, tokenizer, prompts, batch_size, max_new_tokens)
        phrases = [extract(a) for a in answers]
        keys, values = [], []
        for prompt, found in zip(prompts, phrases):
            tail = tokenizer(", ".join(found), truncation=True, max_length=NOUN_PHRASE_MAX_TOKENS)["input_ids"]
            k, v = last_layer_kv(model, list(prompt) + list(tail))
            keys.append(k)
            values.append(v)
        atomic_torch_save({"format": FORMAT, "classname": classname, "keys": keys, "values": values,
                           "answers": answers, "noun_phrases": phrases}, class_file(folder, classname))
        log(f"  [{n}/{len(todo)}] {classname}")
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return BuildReport(folder, len(todo), len(classnames) - len(todo))


def _recipe(manifest: dict[str, Any]) -> tuple:
    return (manifest["llm"]["id"], manifest["questions"], manifest["noun_phrases"], manifest["answer_lead"],
            manifest["system_prompt"], manifest["max_new_tokens"])


def _finished(folder: Path, classname: str, num_questions: int) -> bool:
    path = class_file(folder, classname)
    if not path.is_file():
        return False
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file is rebuilt
        return False
    return entry.get("classname") == classname and len(entry.get("keys", [])) == num_questions


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / MANIFEST}: unreadable knowledge manifest ({exc.__class__.__name__})") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{folder / MANIFEST}: not a {FORMAT} manifest")
    return manifest


@dataclass
class Knowledge:
    """A loaded knowledge cache for a list of classes: per template t, ``keys[t]`` / ``values[t]``
    [C, kv_heads, T_max, head_dim] (right-padded) and ``mask[t]`` [C, T_max] (1 = a real token)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: list[torch.Tensor]
    noun_phrases: list[list[list[str]]]   # [class][template] -> phrases
    manifest: dict[str, Any]

    @property
    def num_templates(self) -> int:
        return len(self.keys)


def load_knowledge(folder: Path, classnames: Sequence[str]) -> Knowledge:
    """Load the cache of ``classnames`` (one readable line when a class or the cache is missing)."""
    if not (folder / MANIFEST).is_file():
        raise ConfigError(f"no LLM knowledge cache at {folder}; build it first: dplbench build-knowledge "
                          "dataset=<name> llm.path=<folder> (same run.output_dir and llm.questions)")
    manifest = read_manifest(folder)
    entries = []
    for classname in classnames:
        path = class_file(folder, classname)
        if not path.is_file():
            raise ConfigError(f"the LLM knowledge cache {folder} has no entry for class {classname!r}; "
                              "rerun dplbench build-knowledge for this dataset")
        entries.append(torch.load(path, map_location="cpu", weights_only=True))
    count = len(manifest["questions"])
    keys, values, masks = [], [], []
    for t in range(count):
        width = max(e["keys"][t].shape[1] for e in entries)
        k = torch.zeros(len(entries), *entries[0]["keys"][t].shape[:1], width, entries[0]["keys"][t].shape[2],
                        dtype=entries[0]["keys"][t].dtype)
        v = torch.zeros_like(k)
        mask = torch.zeros(len(entries), width, dtype=torch.long)
        for i, e in enumerate(entries):
            length = e["keys"][t].shape[1]
            k[i, :, :length] = e["keys"][t]
            v[i, :, :length] = e["values"][t]
            mask[i, :length] = 1
        keys.append(k)
        values.append(v)
        masks.append(mask)
    return Knowledge(keys, values, masks, [e["noun_phrases"] for e in entries], manifest)
