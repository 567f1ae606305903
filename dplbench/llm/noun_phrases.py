"""Noun phrases of an LLM answer (docs/methods.md §5.2, knowledge cache step 3).

The released code uses spaCy's ``en_core_web_sm`` noun chunks. That model is not on the package registries (it is
a GitHub release), so two extractors exist, chosen by name and recorded in the knowledge manifest:

- ``spacy``: spaCy's noun chunks, when ``spacy`` and ``en_core_web_sm`` are installed (the faithful choice);
- ``rules``: a dependency-free chunker that needs nothing beyond the standard library. It has no part-of-speech
  tagger: a chunk is a run of words between punctuation, a closed list of function words (prepositions,
  conjunctions, auxiliaries, relative pronouns, common adverbs and description verbs) and determiners, which open a
  new chunk. It agrees with spaCy on simple descriptions ("a sleek body with long wings" -> "a sleek body", "long
  wings") but keeps verbs it does not know inside a chunk and never merges a coordinated phrase, so its phrases
  differ from spaCy's on complex sentences (docs/methods.md §5.2 "Knowledge cache").

``auto`` picks ``spacy`` when it can be loaded, else ``rules``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dplbench.errors import ConfigError

EXTRACTORS = ("auto", "spacy", "rules")
SPACY_MODEL = "en_core_web_sm"

_DETERMINERS = {"a", "an", "the", "its", "their", "his", "her", "this", "that", "these", "those", "some", "each",
                "every", "our", "your", "my"}
_BREAKS = {
    # prepositions and conjunctions
    "of", "with", "in", "on", "at", "by", "for", "from", "to", "into", "onto", "over", "under", "above", "below",
    "between", "among", "through", "across", "along", "around", "behind", "beneath", "beside", "near", "toward",
    "towards", "within", "without", "against", "like", "as", "and", "or", "but", "nor", "while", "whereas",
    "although", "because", "if", "than", "then", "so",
    # auxiliaries, common verbs of descriptions, relative pronouns
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "having", "do", "does", "did", "can",
    "could", "may", "might", "will", "would", "should", "must", "appears", "appear", "appearing", "features",
    "featuring", "characterized", "known", "resembles", "resembling", "looks", "look", "looking", "consists",
    "consisting", "includes", "including", "shows", "showing", "displays", "displaying", "gives", "giving",
    "makes", "making", "set", "sets", "that", "which", "who", "whose", "where", "when",
    # adverbs
    "typically", "usually", "often", "generally", "very", "also", "too", "not", "only", "just", "mostly",
    "slightly", "highly", "relatively", "quite", "rather", "sometimes", "always",
}
_PRONOUNS = {"it", "they", "them", "he", "she", "i", "we", "you"}
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*|[^\sA-Za-z0-9]")


def rule_noun_phrases(text: str) -> list[str]:
    """Noun-phrase-like chunks of ``text`` by the closed word lists above (see the module docstring)."""
    chunks: list[list[str]] = []
    current: list[str] = []

    def close() -> None:
        words = [w for w in current if w.lower() not in _DETERMINERS]
        if words:
            chunks.append(list(current))
        current.clear()

    for token in _WORD.findall(text):
        low = token.lower()
        if not token[0].isalnum():
            if token == "-" and current:
                current.append(token)
                continue
            close()
        elif low in _BREAKS:
            close()
        elif low in _PRONOUNS:
            close()
            chunks.append([token])
        elif low in _DETERMINERS:
            close()
            current.append(token)
        else:
            current.append(token)
    close()
    return [" ".join(c).replace(" - ", "-") for c in chunks]


def _spacy_extractor() -> Callable[[str], list[str]]:
    try:
        import spacy

        nlp = spacy.load(SPACY_MODEL)
    except (ImportError, OSError) as exc:
        raise ConfigError(f"noun_phrases=spacy needs spacy and its {SPACY_MODEL} model ({exc.__class__.__name__}); "
                          "use noun_phrases=rules or install them") from None
    return lambda text: [chunk.text for chunk in nlp(text).noun_chunks]


def noun_phrase_extractor(name: str) -> tuple[str, Callable[[str], list[str]]]:
    """``(resolved name, extractor)`` for ``auto`` | ``spacy`` | ``rules``."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown noun-phrase extractor {name!r}; valid choices: {', '.join(EXTRACTORS)}")
    if name == "rules":
        return "rules", rule_noun_phrases
    try:
        return "spacy", _spacy_extractor()
    except ConfigError:
        if name == "spacy":
            raise
        return "rules", rule_noun_phrases
