"""What a user might pick instead of a learned prompt: logistic regressions (scikit-learn, C chosen on validation)
on TF-IDF features of the text, or on the frozen model's mean-pooled hidden states (a probe)."""

from __future__ import annotations

from typing import Any

import torch

from app.engine.core.mixed import Row, state_rows
from app.engine.core.model import FrozenModel
from app.engine.core.prompts import single
from app.engine.core.segments import Segments
from bench.quality_data import Pair, QualityTask

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def _logistic(train_x: Any, train_y: list[str], val_x: Any, val_y: list[str], test_x: Any) -> tuple[list[str], float]:
    """Predictions on test of the logistic regression whose C scored best on validation; and that C."""
    from sklearn.linear_model import LogisticRegression

    best: tuple[float, float, Any] | None = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
        score = float((model.predict(val_x) == val_y).mean())
        if best is None or score > best[0]:
            best = (score, c, model)
    assert best is not None
    return list(best[2].predict(test_x)), best[1]


def _accuracy(predicted: list[str], test: list[Pair]) -> float:
    return sum(p == y for p, (_, y) in zip(predicted, test, strict=True)) / len(test)


def tfidf(train: list[Pair], val: list[Pair], test: list[Pair]) -> dict[str, Any]:
    """TF-IDF of word uni- and bigrams (sublinear tf) into a logistic regression: test accuracy and the C chosen."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([t for t, _ in train])
    predicted, c = _logistic(
        vectorizer.transform([t for t, _ in train]),
        [y for _, y in train],
        vectorizer.transform([t for t, _ in val]),
        [y for _, y in val],
        vectorizer.transform([t for t, _ in test]),
    )
    return {"accuracy": _accuracy(predicted, test), "c": c}


def probe(
    frozen: FrozenModel, task: QualityTask, train: list[Pair], val: list[Pair], test: list[Pair]
) -> dict[str, Any]:
    """A logistic regression on the frozen model's mean-pooled final hidden states of the rendered inputs."""
    bare = single(frozen, Segments())

    def features(pairs: list[Pair]) -> Any:
        rows = [Row(0, task.spec, text, pooling="mean") for text, _ in pairs]
        with torch.no_grad():
            return torch.stack(state_rows(frozen, bare, rows)).float().numpy()

    predicted, c = _logistic(features(train), [y for _, y in train], features(val), [y for _, y in val], features(test))
    return {"accuracy": _accuracy(predicted, test), "c": c}
