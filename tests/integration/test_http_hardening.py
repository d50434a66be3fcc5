"""Issue 5, HTTP: the API and the dashboard reject oversize and malformed requests with clear JSON errors,
and bind to 127.0.0.1 by default.

Runs against the session's real worker (API + dashboard + worker routes, real broker and SQLite store)
and a real `streamrec serve` process (API alone) on the same store and broker. test_api.py covers the
happy paths; this file is about what a hostile or careless client sends.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.runtime.broker import EmbeddedBroker, free_port
from app.runtime.kafka import producer
from app.runtime.settings import Settings
from app.serving.api import MAX_EVENTS, LazyProducer, api_routes
from app.serving.web import MAX_BODY_BYTES, MAX_USER_ID, build_web_app
from app.tools.process import WorkerProcess
from schemas.validation import Limits
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def assert_json_error(response: httpx.Response, status: int, error: str) -> str:
    """The response is `status` with a JSON {"error", "detail"} body (no stack trace); returns the detail."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == error, body
    assert body["detail"] and "Traceback" not in response.text
    return body["detail"]


@pytest.fixture(scope="module")
def served(worker: WorkerProcess, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, int]]:
    """`streamrec serve` on the worker's store and broker, with no STREAMREC_WEB_HOST: (url, pid)."""
    port = free_port()
    env = {k: v for k, v in worker.env.items() if k != "STREAMREC_WEB_HOST"}
    env["STREAMREC_WEB_PORT"] = str(port)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--bootstrap", broker.bootstrap],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout_s=60)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(errors="replace")  # every bad request was answered, none crashed


@pytest.fixture(params=["worker", "serve"])
def url(request: pytest.FixtureRequest, worker: WorkerProcess, served: tuple[str, int]) -> str:
    return worker.url if request.param == "worker" else served[0]


def test_default_bind_host_is_loopback(monkeypatch: pytest.MonkeyPatch, served: tuple[str, int]) -> None:
    monkeypatch.delenv("STREAMREC_WEB_HOST", raising=False)
    assert Settings().web_host == "127.0.0.1"
    # the real `streamrec serve` started without STREAMREC_WEB_HOST listens on loopback only
    # (tests/reliability/test_security.py checks the same for the worker)
    _, pid = served
    port = int(served[0].rsplit(":", 1)[1])
    listening = [c.laddr for c in psutil.Process(pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_body_over_the_limit_is_413_json(url: str) -> None:
    body = b'{"events": [' + b'{"type": "click"},' * (MAX_BODY_BYTES // 18) + b'{"type": "click"}]}'
    assert len(body) > MAX_BODY_BYTES
    detail = assert_json_error(httpx.post(f"{url}/events", content=body, timeout=30), 413, "body_too_large")
    assert str(MAX_BODY_BYTES) in detail
    # chunked (no Content-Length) is bounded the same way
    chunks = (b"[" + b" " * 100_000 for _ in range(12))
    assert_json_error(httpx.post(f"{url}/events", content=chunks, timeout=30), 413, "body_too_large")
    # the server is still healthy afterwards
    assert httpx.get(f"{url}/healthz").status_code == 200


@pytest.mark.parametrize(("body", "problem"), [
    (b'[{"type": "click",]', "unexpected character"),
    (b"", "empty document"),
    (b'[{"type": "click"}', "unexpected end of data"),
    (b"\xff\xfe[]", "not valid UTF-8"),
    (b"[NaN]", "unexpected character"),
    (b"[" * 2_000 + b"]" * 2_000, "depth limit exceeded"),
])
def test_malformed_json_is_400_naming_the_problem(url: str, body: bytes, problem: str) -> None:
    detail = assert_json_error(httpx.post(f"{url}/events", content=body), 400, "invalid_json")
    assert "not valid JSON" in detail and problem in detail, detail


@pytest.mark.parametrize(("body", "problem"), [
    ({}, 'object without "events"'),
    ({"event": []}, 'object without "events"'),
    ({"events": {"type": "click"}}, '"events" must be an array of event objects, got an object'),
    ({"events": "click"}, "got a string"),
    ("events", "got a string"),
    (42, "got a number"),
    (None, "got null"),
    ([], "the batch is empty"),
    ({"events": []}, "the batch is empty"),
])
def test_json_of_the_wrong_shape_is_400_with_the_reason(url: str, body: object, problem: str) -> None:
    content = orjson.dumps(body)  # httpx's json=None would send no body at all
    detail = assert_json_error(httpx.post(f"{url}/events", content=content), 400, "invalid_body")
    assert problem in detail, detail


def test_invalid_events_are_rejected_one_by_one_with_reasons(url: str) -> None:
    """A well-formed batch is answered per event (as the OpenAPI document says): bad ones rejected
    with the ingest validator's reason, the good one accepted."""
    user = f"hard-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    click = {"type": "click", "event_id": f"{user}-1", "user_id": user, "ts": now, "item_id": "i1"}
    batch = [7, "click", None, [], {}, {"type": "click"}, {"type": "teleport", "user_id": user},
             {**click, "user_id": "a\x00b"}, {**click, "user_id": "x" * 300}, {**click, "ts": "now"},
             {**click, "ts": now + 10 * 86_400_000}, {**click, "item_id": ""}, click]
    response = httpx.post(f"{url}/events", json={"events": batch}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, len(batch) - 1)
    reasons = [(r["index"], r["status"], r.get("reason")) for r in body["results"]]
    assert reasons == [(0, "rejected", "not_an_object"), (1, "rejected", "not_an_object"),
                       (2, "rejected", "not_an_object"), (3, "rejected", "not_an_object"),
                       (4, "rejected", "unknown_type"), (5, "rejected", "missing_field"),
                       (6, "rejected", "unknown_type"), (7, "rejected", "invalid_value"),
                       (8, "rejected", "invalid_value"), (9, "rejected", "wrong_type"),
                       (10, "rejected", "invalid_value"), (11, "rejected", "invalid_value"),
                       (12, "accepted", None)]
    details = {r["index"]: r["detail"] for r in body["results"] if r["status"] == "rejected"}
    assert all(details.values())
    assert "control" in details[7] and "longer than 256" in details[8] and "future" in details[10]


def test_too_many_events_in_one_request_is_413(url: str) -> None:
    detail = assert_json_error(httpx.post(f"{url}/events", json=[{}] * (MAX_EVENTS + 1)), 413, "too_many_events")
    assert f"{MAX_EVENTS + 1} events" in detail and str(MAX_EVENTS) in detail


@pytest.mark.parametrize(("user_id", "problem"), [
    ("x" * (MAX_USER_ID + 1), f"{MAX_USER_ID + 1} characters, at most {MAX_USER_ID}"),
    ("a%00b", "U+0000"),
    ("a%1Bb", "U+001B"),
    ("line%0Abreak", "U+000A"),
    ("del%7F", "U+007F"),
    ("zero%E2%80%8Bwidth", "U+200B"),
    ("%20padded", "leading or trailing whitespace"),
    ("padded%20", "leading or trailing whitespace"),
])
def test_malformed_user_ids_in_the_path_are_400(url: str, user_id: str, problem: str) -> None:
    detail = assert_json_error(httpx.get(f"{url}/users/{user_id}/recommendations"), 400, "invalid_user_id")
    assert problem in detail, detail


def test_a_user_id_at_the_limit_is_not_rejected(url: str) -> None:
    response = httpx.get(f"{url}/users/{'u' * MAX_USER_ID}/recommendations")
    assert_json_error(response, 404, "not_found")  # well-formed, just unknown


def test_a_path_over_the_request_line_limit_is_a_plain_400(url: str, worker: WorkerProcess) -> None:
    """aiohttp's parser refuses a request line over 8,190 bytes before any route or middleware: a
    plain-text 400 that says why, one log line without a traceback, and the server goes on serving."""
    logged = len(worker.log_path.read_bytes())
    response = httpx.get(f"{url}/users/{'u' * 20_000}/recommendations")
    assert response.status_code == 400 and "more than 8190 bytes" in response.text
    assert "Traceback" not in response.text
    assert httpx.get(f"{url}/healthz").status_code == 200
    if url == worker.url:
        new = worker.log_path.read_bytes()[logged:].decode(errors="replace")
        assert "rejected a malformed HTTP request: LineTooLong (400)" in new and "Traceback" not in new


@pytest.mark.parametrize("path", ["/nope", "/users/u1", "/users/u1/recommendations/extra", "/events/1",
                                  "/dashboard/nope", "/.env", "/%00"])
def test_unknown_routes_are_404_json(url: str, path: str) -> None:
    detail = assert_json_error(httpx.get(f"{url}{path}"), 404, "not_found")
    assert "no route for GET" in detail


def test_wrong_method_is_405_json_with_allow(url: str) -> None:
    response = httpx.get(f"{url}/events")
    detail = assert_json_error(response, 405, "method_not_allowed")
    assert "POST" in detail and response.headers["allow"] == "POST"
    assert_json_error(httpx.delete(f"{url}/users/u1/recommendations"), 405, "method_not_allowed")


def test_openapi_documents_the_errors(url: str) -> None:
    spec = httpx.get(f"{url}/openapi.json").json()
    post = spec["paths"]["/events"]["post"]["responses"]
    assert {"200", "400", "413", "503"} <= set(post)
    assert all("application/json" in post[code]["content"] for code in ("400", "413", "503"))
    param = spec["paths"]["/users/{user_id}/recommendations"]["get"]["parameters"][0]
    assert param["schema"]["maxLength"] == MAX_USER_ID


def test_dashboard_and_worker_routes_reject_bad_input(worker: WorkerProcess) -> None:
    """The dashboard's user lookup and the worker's own /users/{id}/state go through the same checks."""
    for path in ("/dashboard/users/", "/users/"):
        suffix = "" if path.startswith("/dashboard") else "/state"
        for bad, problem in (("a%07b", "U+0007"), ("y" * 1_000, "1000 characters"), ("%09tab", "U+0009")):
            detail = assert_json_error(worker.get(f"{path}{bad}{suffix}"), 400, "invalid_user_id")
            assert problem in detail
    missing = worker.get(f"/dashboard/users/nobody-{uuid.uuid4().hex}")
    assert "no data for user" in assert_json_error(missing, 404, "not_found")
    assert_json_error(httpx.post(f"{worker.url}/dashboard/data", content=b"{}"), 405, "method_not_allowed")
    assert_json_error(httpx.post(f"{worker.url}/dashboard/data", content=b"x" * (MAX_BODY_BYTES + 1)), 405,
                      "method_not_allowed")
    assert worker.get("/dashboard/data").status_code == 200
    assert worker.get("/dashboard").headers["content-type"].startswith("text/html")


def test_post_events_with_kafka_unreachable_is_503(tmp_path: Path) -> None:
    """The API app as `streamrec serve` builds it, its producer pointed at a port nobody listens on:
    POST /events answers 503 JSON (and again on retry), never a 500 with a trace."""
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", data_dir=tmp_path)
    kafka = LazyProducer(lambda: producer(settings, request_timeout_ms=3_000))
    app = build_web_app(lambda: {"ready": True}, api_routes(lambda: None, kafka, Limits.from_settings(settings)))
    event = {"type": "click", "event_id": "e1", "user_id": "u1", "ts": int(time.time() * 1000), "item_id": "i1"}

    async def go() -> list[tuple[int, str, dict]]:
        async with TestClient(TestServer(app)) as client:
            answers = []
            for _ in range(2):
                response = await client.post("/events", json=[event])
                answers.append((response.status, response.content_type, await response.json()))
            return answers

    for status, content_type, body in asyncio.run(go()):
        assert (status, content_type, body["error"]) == (503, "application/json", "kafka_unavailable")
        assert "retry" in body["detail"]
