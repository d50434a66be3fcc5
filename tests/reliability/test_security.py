"""Security items of issue 5: secrets, bind address, hashed user ids, escaped Milvus filters, prepared CQL."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import psutil
import pytest

from app.runtime.logs import user_ref
from app.runtime.services import recall_for
from app.runtime.settings import Settings
from app.store import open_store
from app.store.vectors import MilvusRecall
from models.encoder import latest_model_version, load_model_version
from models.popularity import Trending
from models.profile import ProfileParams, apply_event, new_profile
from models.recommender import FALLBACK_NOTE, Recommender, RecommenderOptions, UserRequest
from tests.reliability.conftest import Cluster, now_ms, shop_events

pytestmark = pytest.mark.reliability

SECRETS = {"STREAMREC_KAFKA_SASL_PASSWORD": "kafka-Secr3t-pw", "STREAMREC_CASSANDRA_PASSWORD": "cass-Secr3t-pw",
           "STREAMREC_MILVUS_TOKEN": "root:milvus-Secr3t-tok"}


def test_secrets_are_hidden_in_reprs_and_dumps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())):
        for secret in SECRETS.values():
            assert secret not in text
    assert settings.kafka_sasl_password.get_secret_value() == SECRETS["STREAMREC_KAFKA_SASL_PASSWORD"]


def test_secrets_may_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        path = tmp_path / name
        path.write_text(value + "\n")
        monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(name + "_FILE", str(path))
    settings = Settings()
    assert settings.cassandra_password.get_secret_value() == SECRETS["STREAMREC_CASSANDRA_PASSWORD"]
    assert settings.milvus_token.get_secret_value() == SECRETS["STREAMREC_MILVUS_TOKEN"]
    assert all(secret not in repr(settings) for secret in SECRETS.values())


@pytest.mark.integration
def test_worker_logs_no_secrets_and_binds_loopback(cluster: Cluster) -> None:
    """A real worker at DEBUG with every secret set: none appears in its log; HTTP listens on 127.0.0.1."""
    cluster.env.update({"STREAMREC_KAFKA_SASL_PASSWORD": SECRETS["STREAMREC_KAFKA_SASL_PASSWORD"],
                        "STREAMREC_CASSANDRA_PASSWORD": SECRETS["STREAMREC_CASSANDRA_PASSWORD"],
                        "STREAMREC_LOG_LEVEL": "DEBUG"})
    cluster.env.pop("STREAMREC_WEB_HOST", None)
    worker = cluster.worker()
    worker.wait_ready(timeout_s=180)
    assert Settings().web_host == "127.0.0.1"
    assert worker.proc is not None
    listening = [c.laddr for c in psutil.Process(worker.proc.pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == worker.port]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "DEBUG" in log  # the most talkative level was really on
    for secret in SECRETS.values():
        assert secret not in log


def test_user_ids_are_hashed_in_logs_unless_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    user = "alice@example.com"
    logger = logging.getLogger("app.store.sqlite")
    assert user_ref(user, logger) != user and user_ref(user, logger) == user_ref(user, logger)
    settings = Settings(sqlite_path=tmp_path / "s.db", data_dir=tmp_path)

    async def forget() -> None:
        store = await open_store(settings)
        try:
            await store.forget_user(user)
        finally:
            await store.close()

    with caplog.at_level(logging.INFO, logger="app.store.sqlite"):
        asyncio.run(forget())
    assert "forgot user" in caplog.text and user not in caplog.text and user_ref(user, logger) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="app.store.sqlite"):
        asyncio.run(forget())
        assert user_ref(user, logger) == user
    assert user in caplog.text


def test_milvus_filters_cannot_be_injected(tmp_path: Path) -> None:
    """Ids and categories that try to close the string literal match only themselves (real milvus-lite)."""
    evil_id = 'x" or item_id != "'
    evil_cat = 'c" or category != "'
    ids = ["a", "b", evil_id, "it's", "back\\slash"]
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(len(ids), 8)).astype(np.float32)
    with MilvusRecall(str(tmp_path / "m.db"), "inj", 8) as recall:
        recall.load_items(ids, matrix, ["c0", "c0", evil_cat, "c1", "c1"])
        q = matrix[:1]
        everything = {h.item_id for h in recall.search(q, k=10)[0]}
        assert everything == set(ids)
        # an exclusion list holding the evil id excludes that id only
        assert {h.item_id for h in recall.search(q, k=10, exclude=[evil_id])[0]} == set(ids) - {evil_id}
        # a category filter on a would-be injection finds only that category's items, never everything
        assert {h.item_id for h in recall.search(q, k=10, categories=[evil_cat])[0]} == {evil_id}
        assert recall.search(q, k=10, categories=['nope" or category != "'])[0] == []
        assert recall.set_available(evil_id, False)
        assert evil_id not in {h.item_id for h in recall.search(q, k=10)[0]}
        assert {"a", "b"} <= {h.item_id for h in recall.search(q, k=10)[0]}


def test_cql_is_only_run_as_prepared_statements_or_fixed_ddl() -> None:
    """No execute call in the Cassandra store builds CQL from values (f-strings, +, % or format)."""
    source = Path(__file__).resolve().parents[2] / "app" / "store" / "cassandra.py"
    tree = ast.parse(source.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr in {"execute", "execute_async"}]
    assert calls
    for call in calls:
        first = call.args[0]
        assert not isinstance(first, ast.JoinedStr | ast.BinOp), ast.unparse(call)
        assert not (isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute)
                    and first.func.attr == "format"), ast.unparse(call)
    execute_async = [c for c in calls if c.func.attr == "execute_async"]
    assert execute_async and all("_ps" in ast.unparse(c.args[0]) for c in execute_async)


def test_recall_timeout_falls_back_to_popularity_and_says_so(tmp_path: Path, model_dir: Path) -> None:
    """A Milvus search that times out (real milvus-lite, 1 us deadline): the batch is served from
    popularity, flagged `fallback`, and every item's reason says so."""
    settings = Settings(data_dir=tmp_path, model_dir=model_dir, vector_dim=32)
    model = load_model_version(latest_model_version(model_dir), "cpu")
    recall = recall_for(settings, model)
    trending = Trending()
    params = ProfileParams.from_settings(settings)
    events = shop_events(3_000, n_users=20, seed=4)
    profiles: dict[str, object] = {}
    for event in events:
        trending.observe_event(event)
        apply_event(profiles.setdefault(event.user_id, new_profile(event.user_id)), event, params, None)
    requests = [UserRequest(p) for p in profiles.values()]
    recommender = Recommender(model, recall, trending, RecommenderOptions())
    normal = recommender.recommend(requests, now_ms())
    assert not any(r.fallback for r in normal)
    recall.timeout_s = 1e-6
    fallen = recommender.recommend(requests, now_ms())
    assert all(r.fallback for r in fallen)
    assert all(r.items for r in fallen)
    assert all(FALLBACK_NOTE in item.reason for r in fallen for item in r.items)
    recall.timeout_s = 10.0
    assert not any(r.fallback for r in recommender.recommend(requests, now_ms()))
