"""Which questions build a ``drople_llamp`` knowledge cache (docs/methods.md §5.2 "In dplbench").

By default dplbench's own questions (:func:`dplbench.llm.templates.default_questions`). ``llm.questions=FILE``
replaces them: a JSON (``.json``) or YAML file mapping dataset names to lists of 11 question templates, each a
non-empty string with exactly one ``{}`` for the class name; an optional ``default`` entry serves the datasets the
file does not name. A question set has a cache key (its source and a digest), so two question sets never share a
knowledge cache, and the file's sha256 is recorded in the knowledge manifest. No torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dplbench.errors import ConfigError
from dplbench.llm.templates import NUM_QUESTIONS, default_questions

DEFAULT_ENTRY = "default"


@dataclass(frozen=True)
class QuestionSet:
    """The question templates of one dataset and where they come from (``file`` None = dplbench's own)."""

    questions: tuple[str, ...]
    file: str | None = None
    sha256: str | None = None     # of the file

    @property
    def key(self) -> str:
        """The knowledge cache's folder name for this question set."""
        if self.sha256 is not None:
            return f"file-{self.sha256[:16]}"
        digest = hashlib.sha256(json.dumps(list(self.questions)).encode()).hexdigest()
        return f"own-{digest[:16]}"

    def record(self) -> dict[str, Any]:
        """The manifest / result-file record of the source (the questions themselves are recorded beside it)."""
        return {"source": "file" if self.file else "dplbench", "file": self.file, "sha256": self.sha256,
                "key": self.key}


def read_question_file(path: str | Path) -> tuple[dict[str, tuple[str, ...]], str]:
    """``(dataset -> questions, sha256 of the file)``, validated; every problem is one line naming the file."""
    import yaml

    from dplbench.catalog import DATASETS

    where = f"llm.questions={path}"
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the questions file ({exc.strerror or exc.__class__.__name__})") \
            from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'} "
                          f"({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a mapping of dataset name -> list of {NUM_QUESTIONS} questions")
    table: dict[str, tuple[str, ...]] = {}
    for name, questions in data.items():
        if name != DEFAULT_ENTRY and (not isinstance(name, str) or name not in DATASETS):
            raise ConfigError(f"{where}: {name!r} is not a dataset name (or {DEFAULT_ENTRY!r})")
        key = name if name == DEFAULT_ENTRY else DATASETS.canonical(name)
        table[key] = _checked(where, name, questions)
    return table, hashlib.sha256(raw).hexdigest()


def _checked(where: str, name: str, questions: Any) -> tuple[str, ...]:
    if not isinstance(questions, list) or len(questions) != NUM_QUESTIONS:
        count = len(questions) if isinstance(questions, list) else type(questions).__name__
        raise ConfigError(f"{where}: {name!r} needs a list of {NUM_QUESTIONS} questions, got {count}")
    for i, question in enumerate(questions, 1):
        if not isinstance(question, str) or not question.strip():
            raise ConfigError(f"{where}: {name!r} question {i} is not a non-empty string")
        if question.count("{}") != 1 or "{" in question.replace("{}", "") or "}" in question.replace("{}", ""):
            raise ConfigError(f"{where}: {name!r} question {i} must hold exactly one '{{}}' (the class name) "
                              f"and no other braces: {question!r}")
    return tuple(questions)


def question_set(dataset: str, path: str | Path | None = None) -> QuestionSet:
    """The questions of ``dataset``: from the file at ``path`` (its entry, else its ``default`` entry), or
    dplbench's own when ``path`` is None."""
    if not path:
        return QuestionSet(tuple(default_questions(dataset)))
    table, sha256 = read_question_file(path)
    questions = table.get(dataset, table.get(DEFAULT_ENTRY))
    if questions is None:
        raise ConfigError(f"llm.questions={path}: no questions for dataset {dataset!r} (and no "
                          f"{DEFAULT_ENTRY!r} entry)")
    return QuestionSet(questions, str(Path(path).expanduser().absolute()), sha256)
