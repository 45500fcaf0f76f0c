"""The evaluation gate: every new version of a task is scored on the task's evaluation dataset, and a job's
promote policy decides from those scores whether the new version becomes the active one.

Classification: accuracy, macro-F1 (over the labels that occur in the gold answers or the predictions) and the
expected calibration error (10 equal-width confidence bins). Generation: exact match and token-level F1 (words,
lowercased), both after stripping whitespace. The first of each list is what `if_better` compares.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Prompt, PromptEvaluation, Task
from app.db.repositories import DatasetRepository, EvaluationRepository, PromptRepository
from app.engine.core.model import FrozenModel
from app.engine.core.one_prompt import classify, generate
from app.engine.formats.artifact import Artifact
from app.engine.methods import load_segments
from app.services.tasks import task_spec

PRIMARY = {"classification": "accuracy", "generation": "exact_match"}
ECE_BINS = 10


def classification_metrics(gold: Sequence[str], scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """Accuracy, macro-F1 and expected calibration error of label distributions against gold labels."""
    predicted = [max(row, key=row.__getitem__) for row in scores]
    correct = [p == g for p, g in zip(predicted, gold, strict=True)]
    f1s = []
    for label in sorted(set(gold) | set(predicted)):
        true_pos = sum(p == label and g == label for p, g in zip(predicted, gold, strict=True))
        pred_pos, gold_pos = predicted.count(label), list(gold).count(label)
        f1s.append(0.0 if true_pos == 0 else 2 * true_pos / (pred_pos + gold_pos))
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(ECE_BINS)]
    for row, right in zip(scores, correct, strict=True):
        confidence = max(row.values())
        bins[min(ECE_BINS - 1, int(confidence * ECE_BINS))].append((confidence, right))
    ece = sum(
        abs(sum(c for c, _ in members) / len(members) - sum(r for _, r in members) / len(members)) * len(members)
        for members in bins
        if members
    ) / len(gold)
    return {"accuracy": sum(correct) / len(gold), "macro_f1": sum(f1s) / len(f1s), "calibration_error": ece}


def _token_f1(predicted: str, gold: str) -> float:
    p, g = predicted.lower().split(), gold.lower().split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g:
        return float(p == g)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(gold: Sequence[str], outputs: Sequence[str]) -> dict[str, float]:
    """Exact match and mean token F1 of generated outputs against gold outputs."""
    exact = sum(o.strip() == g.strip() for o, g in zip(outputs, gold, strict=True)) / len(gold)
    f1 = sum(_token_f1(o, g) for o, g in zip(outputs, gold, strict=True)) / len(gold)
    return {"exact_match": exact, "token_f1": f1}


def score(model: FrozenModel, task: Task, artifact: Artifact, examples: list[dict[str, str]]) -> dict[str, Any]:
    """A version's metrics on labeled examples, served through the engine's one path."""
    spec, prompt = task_spec(task), load_segments(model, artifact)
    inputs, gold = [e["input"] for e in examples], [e["output"] for e in examples]
    if task.kind == "classification":
        return {**classification_metrics(gold, classify(model, prompt, spec, inputs)), "examples": len(gold)}
    longest = max(len(model.encode(g)) for g in gold)
    outputs = generate(model, prompt, spec, inputs, max_new_tokens=min(512, longest + 8))
    return {**generation_metrics(gold, outputs), "examples": len(gold)}


def better(task: Task, new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether `new` beats `old` on the task's primary metric (anything beats no score)."""
    key = PRIMARY[task.kind]
    return old is None or float(new[key]) > float(old[key])


def record(session: Session, prompt_id: int, dataset_id: int, metrics: dict[str, Any]) -> None:
    """Store a version's scores on a dataset (once: the same version scores the same on the same set)."""
    repo = EvaluationRepository(session)
    if repo.get(prompt_id, dataset_id) is None:
        repo.add(prompt_id, dataset_id, metrics)


# Reference rows computed once per (training set, evaluation set, rows held out, labels): datasets never change and
# ids are never reused, so a dashboard that refreshes does not refit TF-IDF + logistic regression every time.
_MEMO: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()
_MEMO_SIZE = 64
_MEMO_LOCK = threading.Lock()


def references(session: Session, task: Task) -> list[dict[str, Any]]:
    """What a user might pick instead, scored on the same evaluation set (classification): the majority class and
    TF-IDF + logistic regression, both trained on the dataset the active version was trained on (each pair of sets
    fitted once per process)."""
    if task.kind != "classification" or task.evaluation_dataset_id is None or task.active_prompt_id is None:
        return []
    active = PromptRepository(session).get(task.active_prompt_id)
    datasets = DatasetRepository(session)
    train = datasets.get(active.dataset_id, with_examples=True) if active and active.dataset_id else None
    held = datasets.get(task.evaluation_dataset_id, with_examples=True)
    if train is None or held is None:
        return []
    # the references learn what the versions learned from: not the rows held out of that dataset as this very set
    skip = set(held.source_rows or []) if held.source_dataset_id == train.id else set()
    pairs = [
        (e["input"], e["output"])
        for row, e in enumerate(train.examples)
        if e.get("output") is not None and row not in skip
    ]
    gold = [e["output"] for e in held.examples if e.get("output") is not None]
    inputs = [e["input"] for e in held.examples if e.get("output") is not None]
    if not pairs or not gold:
        return []
    key = (train.id, held.id, tuple(sorted(skip)), tuple(task.labels))
    with _MEMO_LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return copy.deepcopy(_MEMO[key])
    rows = _reference_rows(task, train.id, pairs, inputs, gold)
    with _MEMO_LOCK:
        _MEMO[key] = rows
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return copy.deepcopy(rows)


def _reference_rows(
    task: Task, train_id: int, pairs: list[tuple[str, str]], inputs: list[str], gold: list[str]
) -> list[dict[str, Any]]:
    majority = Counter(label for _, label in pairs).most_common(1)[0][0]
    scored = [("majority", [{label: float(label == majority) for label in task.labels} for _ in gold])]
    if len({label for _, label in pairs}) > 1:
        scored.append(("tfidf_logistic_regression", _tfidf_scores(pairs, inputs, task.labels)))
    return [
        {
            "name": name,
            "training_dataset_id": train_id,
            "metrics": {**classification_metrics(gold, scores), "examples": len(gold)},
        }
        for name, scores in scored
    ]


def _tfidf_scores(pairs: list[tuple[str, str]], inputs: list[str], labels: list[str]) -> list[dict[str, float]]:
    """Label probabilities of a TF-IDF (words and word pairs) + logistic regression classifier (C = 1)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform([text for text, _ in pairs])
    classifier = LogisticRegression(max_iter=1000).fit(features, [label for _, label in pairs])
    probabilities = classifier.predict_proba(vectorizer.transform(inputs))
    known = list(classifier.classes_)
    return [
        {label: float(row[known.index(label)]) if label in known else 0.0 for label in labels} for row in probabilities
    ]


def evaluations(session: Session, task: Task) -> Sequence[tuple[Prompt, PromptEvaluation]]:
    """Every version of the task scored on its current evaluation dataset, oldest version first."""
    if task.evaluation_dataset_id is None:
        return []
    return EvaluationRepository(session).of_task(task.id, task.evaluation_dataset_id)
