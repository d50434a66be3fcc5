"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.evaluation.systems import SharedModel


@pytest.fixture(scope="module")
def shared() -> Iterator[SharedModel]:
    """One trained-model slot per test module (training is the slow part), closed after it."""
    model = SharedModel(dim=16)
    yield model
    model.close()
