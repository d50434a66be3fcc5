"""app/cli_errors.py: which failures are the user's to fix (one line) and which are bugs (traceback)."""

from __future__ import annotations

import gzip

import pytest
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError
from cassandra.cluster import NoHostAvailable
from pymilvus import MilvusException

from app.cli_errors import UserError, explain
from app.runtime.settings import Settings


def test_expected_failures_get_one_line_with_what_to_do() -> None:
    assert explain(UserError("do this")) == "do this"
    assert "no such file: data.csv" == explain(FileNotFoundError(2, "No such file", "data.csv"))
    assert "permission denied" in explain(PermissionError(13, "denied", "/root/x"))
    assert "not a gzip file" in explain(gzip.BadGzipFile("bad magic"))
    assert "--bootstrap" in explain(KafkaConnectionError("Unable to bootstrap"))
    assert "Kafka refused" in explain(UnknownTopicOrPartitionError())
    message = explain(NoHostAvailable("Unable to connect", {"10.0.0.1:9042": ConnectionRefusedError(111, "refused")}))
    assert "10.0.0.1:9042: refused" in message and "STREAMREC_CASSANDRA_HOSTS" in message
    assert "STREAMREC_MILVUS_URI" in explain(MilvusException(code=2, message="Fail connecting to server"))


def test_a_bad_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_PARTITIONS", "many")
    with pytest.raises(Exception) as caught:
        Settings()
    assert explain(caught.value).startswith("invalid setting: STREAMREC_PARTITIONS")


def test_the_cause_of_a_wrapped_failure_is_explained() -> None:
    try:
        try:
            raise KafkaConnectionError("Unable to bootstrap")
        except KafkaConnectionError as exc:
            raise RuntimeError("replay failed") from exc
    except RuntimeError as wrapped:
        assert "cannot reach Kafka" in explain(wrapped)


def test_bugs_keep_their_traceback() -> None:
    assert explain(KeyError("x")) is None
    assert explain(ZeroDivisionError()) is None
