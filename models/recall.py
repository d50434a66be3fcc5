"""What the recommender needs from a vector index: batched top-k search with filters.

The index itself is storage (app/store/vectors.py serves it from Milvus); keeping only this interface
here leaves models/ free of I/O and lets tests and the evaluator stand any index in for Milvus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec
import numpy as np


class RecallTimeout(TimeoutError):
    """The index did not answer within its deadline; the caller falls back to popularity."""


class Hit(msgspec.Struct, frozen=True):
    item_id: str
    score: float
    category: str


class VectorIndex(Protocol):
    """Top-k available items per query vector, optionally within `categories` and without `exclude`."""

    def search(self, queries: np.ndarray, k: int, categories: Sequence[str] | None = None,
               exclude: Sequence[str] | None = None) -> list[list[Hit]]: ...
