"""MilvusRecall rides out milvus-lite's start-up window instead of failing the worker (app/store/vectors.py)."""

from __future__ import annotations

import pytest
from pymilvus import MilvusException

from app.store.vectors import retry_while_starting

STARTING = MilvusException(code=2000, message='Assert "init_flag_ == true"  => Mmap manager has not been init.')


def test_retries_while_the_lite_server_initialises_then_returns() -> None:
    answers = [STARTING, STARTING, "created"]
    slept: list[float] = []

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry_while_starting(call, "create_collection", sleep=slept.append) == "created"
    assert slept == [0.05, 0.1]  # backs off, doubling


def test_other_errors_are_raised_at_once() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise MilvusException(code=100, message="collection not found")

    with pytest.raises(MilvusException, match="collection not found"):
        retry_while_starting(call, "load", sleep=lambda s: None)
    assert len(calls) == 1


def test_gives_up_after_its_budget() -> None:
    def call() -> None:
        raise STARTING

    with pytest.raises(MilvusException, match="has not been init"):
        retry_while_starting(call, "load", budget_s=0.0, sleep=lambda s: None)
