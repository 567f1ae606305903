"""The wording of the ``drople_llamp`` knowledge cache prompts (docs/methods.md §5.2).

The prompt format is the paper's (system prompt, the ``"In one sentence, "`` prefix, the answer lead, greedy
decoding of 128 tokens). The questions are dplbench's own: eleven generic appearance questions, made
dataset-aware by the dataset's hand-written zero-shot template (``"a photo of a {}, a type of aircraft."`` asks
about ``"a {}, a type of aircraft"``). They are not the released question lists, so the knowledge cache they make
differs from the paper's; ``llm.questions=FILE`` (:mod:`dplbench.llm.questions`) supplies other questions.
The frozen text teacher's base sentence is the same zero-shot template.
"""

from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."
QUESTION_PREFIX = "In one sentence, "
ANSWER_LEAD = " The {} appears as"   # appended after the chat-formatted question (no generation prompt)
MAX_NEW_TOKENS = 128
NUM_QUESTIONS = 11

# "{}" stands for the dataset's subject phrase (which itself holds the class slot), always at the sentence end.
APPEARANCE_QUESTIONS: tuple[str, ...] = (
    "describe the visual appearance of {}.",
    "name the colors, shapes and textures typical of {}.",
    "list the visible parts that make up {}.",
    "explain how one recognizes, just by looking, {}.",
    "say what a close look reveals about {}.",
    "summarize the overall silhouette and proportions of {}.",
    "describe the surface details and patterns seen on {}.",
    "tell which visual cues keep a viewer from mistaking something else for {}.",
    "describe how a photograph would typically show {}.",
    "point out the most eye-catching visual detail of {}.",
    "explain what someone who has never seen one should look for to spot {}.",
)
PHOTO_FRAME = "a photo of "


def subject_phrase(template: str) -> str:
    """What a zero-shot template says about its class, without the photo framing and the full stop:
    ``"a photo of a {}, a type of pet."`` -> ``"a {}, a type of pet"``; ``"{} texture."`` -> ``"{} texture"``."""
    return template.strip().rstrip(".").strip().removeprefix(PHOTO_FRAME)


def teacher_template(dataset: str) -> str:
    """The frozen text teacher's base sentence: the dataset's own zero-shot template."""
    from dplbench.data.templates import dataset_template

    return dataset_template(dataset)


def default_questions(dataset: str) -> list[str]:
    """dplbench's 11 question templates for ``dataset`` (each with one ``{}`` for the class name)."""
    subject = subject_phrase(teacher_template(dataset))
    return [question.format(subject) for question in APPEARANCE_QUESTIONS]


def display_name(classname: str) -> str:
    """Class names are asked about with "_" replaced by " " (as the released code does)."""
    return classname.replace("_", " ")
