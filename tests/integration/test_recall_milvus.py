"""MilvusRecall against real Milvus: the milvus-lite file and a Milvus standalone server (PyPI `milvus`)."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.store.vectors import Hit, MilvusRecall, RecallTimeout, build_filter, quote

DIM = 16
N = 300
CATS = ["c0", "c1", 'c"2', "c\\3'"]  # categories with quotes/backslashes must not break filters
ODD_IDS = ['it"em', "it'em", 'x" or available == false or item_id == "y', "back\\slash", "ünï", "tab-free id"]


def _data() -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((N, DIM)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    ids = [f"item{i}" for i in range(N - len(ODD_IDS))] + ODD_IDS
    cats = [CATS[i % len(CATS)] for i in range(N)]
    return ids, m, cats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_logs(base: Path, tail_bytes: int = 4000) -> str:
    """The end of every log the server wrote under its base folder, for a start failure's message."""
    parts = [f"--- {path.relative_to(base)}\n{path.read_bytes()[-tail_bytes:].decode('utf-8', 'replace')}"
             for path in sorted((base / "logs").rglob("*")) if path.is_file()]
    return "\n".join(parts) or f"(no log files under {base / 'logs'})"


def _wait_healthy(server: object, timeout_s: float) -> str | None:
    """None once /healthz answers OK; else why not (the process exited, or the time ran out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = server.server_proc.poll()
        if code is not None:
            return f"the server process exited with code {code}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.webservice_port}/healthz", timeout=5) as r:
                if b"OK" in r.read():
                    time.sleep(1)  # as the wheel's own wait_started: healthy a moment before it serves
                    return None
        except OSError:
            pass
        time.sleep(0.2)
    return f"/healthz did not answer OK within {timeout_s} s"


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """A real Milvus 2.3 standalone from the `milvus` wheel (in the test extras).

    Skipped only where that wheel is not installed; a server that is there but does not start fails
    the server tests with its logs, so the server path cannot vanish silently."""
    try:
        from milvus import MilvusServer
    except ModuleNotFoundError as exc:
        if exc.name != "milvus":
            raise
        pytest.skip("the PyPI `milvus` wheel (a Milvus standalone binary, in the test extras) is not installed")
    base = tmp_path_factory.mktemp("milvus-server")
    server = MilvusServer(wait_for_started=False)  # waited for below, watching the process too
    problem = None
    try:
        server.set_base_dir(str(base))
        server.listen_port = _free_port()
        server.start()
        problem = _wait_healthy(server, timeout_s=180)
    except Exception as exc:  # noqa: BLE001 - whatever the cause, fail with the server's own account
        problem = repr(exc)
    if problem is not None:
        server.stop()
        pytest.fail(f"the Milvus server did not start: {problem}\n{_server_logs(base)}", pytrace=False)
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()


def _loaded(uri: str, index: str | None = None) -> MilvusRecall:
    r = MilvusRecall(uri, "items", DIM, index_type=index, consistency="Strong", timeout_s=10)
    ids, m, cats = _data()
    available = [i % 10 != 7 for i in range(N)]  # every 10th+7 item is unavailable
    r.load_items(ids, m, cats, available=available, popularity=[float(i) for i in range(N)])
    return r


# the server takes ~10-20 s to start: marked, so the quick run (-m "not integration") keeps to lite
@pytest.fixture(
    scope="module", params=["lite", "lite-IVF_FLAT", pytest.param("server", marks=pytest.mark.integration)]
)
def recall(request, tmp_path_factory) -> Iterator[MilvusRecall]:
    """The default index of each mode (FLAT on milvus-lite, HNSW on the server), plus lite IVF_FLAT."""
    index = None
    if request.param.startswith("lite"):
        uri = str(tmp_path_factory.mktemp("milvus-lite") / "items.db")
        index = request.param.partition("-")[2] or None
    else:
        uri = request.getfixturevalue("milvus_server")
    r = _loaded(uri, index)
    yield r
    r.close()


def test_count(recall: MilvusRecall) -> None:
    assert recall.count() == N


def test_nearest_neighbours_are_the_planted_items(recall: MilvusRecall) -> None:
    ids, m, cats = _data()
    rows = [i for i in range(N) if i % 10 != 7][:40]
    rng = np.random.default_rng(1)
    q = m[rows] + 0.05 * rng.standard_normal((len(rows), DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    res = recall.search(q, k=5)
    assert len(res) == len(rows)
    for r, hits in zip(rows, res, strict=True):
        assert hits[0].item_id == ids[r] and hits[0].category == cats[r]
        assert isinstance(hits[0], Hit)
        assert hits[0].score == pytest.approx(float(q[rows.index(r)] @ m[r]), abs=1e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_exact_top_k_with_flat(tmp_path) -> None:
    ids, m, _ = _data()
    with _loaded(str(tmp_path / "flat.db"), "FLAT") as recall:
        assert recall.index_type == "FLAT"
        _check_exact(recall, ids, m)


def _check_exact(recall: MilvusRecall, ids: list[str], m: np.ndarray) -> None:
    avail = np.array([i % 10 != 7 for i in range(N)])
    q = np.random.default_rng(2).standard_normal((8, DIM)).astype(np.float32)
    expected = np.where(avail, q @ m.T, -np.inf).argsort(axis=1)[:, ::-1][:, :10]
    got = recall.search(q, k=10)
    assert [[h.item_id for h in hits] for hits in got] == [[ids[j] for j in row] for row in expected]


def test_unavailable_items_never_returned(recall: MilvusRecall) -> None:
    ids, m, _ = _data()
    unavailable = {ids[i] for i in range(N) if i % 10 == 7}
    res = recall.search(m[[i for i in range(N) if i % 10 == 7]], k=50)
    returned = {h.item_id for hits in res for h in hits}
    assert returned and not returned & unavailable


def test_category_filter_and_odd_strings(recall: MilvusRecall) -> None:
    _, m, _ = _data()
    for wanted in (['c"2'], ["c\\3'"], ["c0", 'c"2']):
        res = recall.search(m[:10], k=20, categories=wanted)
        cats = {h.category for hits in res for h in hits}
        assert cats and cats <= set(wanted)
    assert all(not hits for hits in recall.search(m[:3], k=5, categories=['nope" or category != "x']))


def test_odd_ids_round_trip_and_exclude(recall: MilvusRecall) -> None:
    ids, m, _ = _data()
    for i in range(N - len(ODD_IDS), N):
        if i % 10 == 7:
            continue
        hits = recall.search(m[i : i + 1], k=3)[0]
        assert hits[0].item_id == ids[i]
        excluded = recall.search(m[i : i + 1], k=3, exclude=[ids[i]])[0]
        assert ids[i] not in [h.item_id for h in excluded] and len(excluded) == 3


def test_upsert_and_set_available(recall: MilvusRecall) -> None:
    v = np.zeros(DIM, np.float32)
    v[0] = 1.0
    recall.upsert_item('new"item', v, 'c"2', available=True)
    assert recall.count() == N + 1
    assert recall.search(v[None], k=1)[0][0] == Hit('new"item', pytest.approx(1.0, abs=1e-5), 'c"2')
    assert recall.set_available('new"item', False)
    assert 'new"item' not in [h.item_id for h in recall.search(v[None], k=5)[0]]
    assert recall.count() == N + 1
    assert recall.set_available('new"item', True)
    assert recall.search(v[None], k=1)[0][0].item_id == 'new"item'
    assert not recall.set_available("absent", False)
    with pytest.raises(ValueError):
        recall.upsert_item("bad\nid", v, "c0")


def test_timeout_raises_recall_timeout(recall: MilvusRecall) -> None:
    _, m, _ = _data()
    recall.timeout_s = 1e-6
    try:
        with pytest.raises(RecallTimeout):
            recall.search(m[:50], k=10)
    finally:
        recall.timeout_s = 10
    assert len(recall.search(m[:1], k=1)[0]) == 1


def test_filter_escaping() -> None:
    assert quote('a"b') == '"a\\"b"'
    assert quote("a\\b") == '"a\\\\b"'
    assert build_filter(['x"y'], ["i"]) == 'available == true and category in ["x\\"y"] and item_id not in ["i"]'
    with pytest.raises(TypeError):
        quote(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        quote("\ud800")
    with pytest.raises(ValueError):
        quote("new\nline")  # Milvus cannot match control characters in a filter: rejected up front


def test_reopened_collection_is_searchable(tmp_path) -> None:
    uri = str(tmp_path / "reopen.db")
    ids, m, _ = _data()
    _loaded(uri).close()
    with MilvusRecall(uri, "items", DIM, consistency="Strong") as again:
        assert again.count() == N
        assert again.search(m[:1], k=1)[0][0].item_id == ids[0]


def test_bad_inputs_rejected(tmp_path) -> None:
    with pytest.raises(ValueError):
        MilvusRecall("milvus.sqlite", "c", DIM)
