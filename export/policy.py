"""Early-exit criteria (survey section III-B, eq. 1–2), in numpy so devices can run them.

A sample leaves at exit k when its score passes that exit's threshold:
- `confidence`: the largest softmax probability, max_c p_c; exits when score >= threshold;
- `entropy` (eq. 1): H(p) = -sum_c p_c log p_c; exits when score <= threshold;
- `normalized_entropy` (eq. 2): H(p) / log C, in [0, 1]; exits when score <= threshold.
"""

from __future__ import annotations

import numpy as np

CRITERIA = ("confidence", "entropy", "normalized_entropy")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits.

    >>> softmax(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(logits: np.ndarray, criterion: str) -> np.ndarray:
    """The exit score of every row of `logits` under `criterion`.

    >>> score(np.array([[0.0, 0.0], [10.0, 0.0]]), "normalized_entropy").round(3).tolist()
    [1.0, 0.001]
    """
    p = softmax(np.asarray(logits, dtype=np.float64))
    if criterion == "confidence":
        return p.max(axis=1)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
    if criterion == "entropy":
        return entropy
    if criterion == "normalized_entropy":
        return entropy / np.log(p.shape[1])
    raise ValueError(f"unknown exit criterion {criterion!r}; use one of {', '.join(CRITERIA)}")


def exits(logits: np.ndarray, criterion: str, threshold: float) -> np.ndarray:
    """Boolean mask of the rows that leave at this exit.

    >>> exits(np.array([[0.0, 0.0], [10.0, 0.0]]), "confidence", 0.9).tolist()
    [False, True]
    """
    s = score(logits, criterion)
    return s >= threshold if criterion == "confidence" else s <= threshold
