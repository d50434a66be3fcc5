"""Run a `streamrec worker` as a child process and wait on its HTTP endpoints, not on sleeps.

Used by the demo, the benchmark and the integration/reliability tests, so all of them start, watch
and kill workers the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from app.runtime.broker import free_port


def py_spy_dump(pid: int) -> str:
    """Every thread's Python stack in process `pid` (py-spy, beside this interpreter), or why there is none."""
    spy = Path(sys.executable).with_name("py-spy")
    try:
        dump = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, check=False,
                              text=True, timeout=60)
        return "py-spy dump:\n" + dump.stdout + dump.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy dump failed: {exc!r}"


class WorkerProcess:
    def __init__(self, bootstrap: str, data_dir: Path, *, env: dict[str, str] | None = None,
                 log_path: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log_path = log_path or data_dir / "worker.log"
        self.env = {**os.environ, "STREAMREC_KAFKA_BOOTSTRAP": bootstrap, "STREAMREC_DATA_DIR": str(data_dir),
                    "STREAMREC_WEB_PORT": str(self.port), "STREAMREC_SQLITE_PATH": str(data_dir / "streamrec.db"),
                    "STREAMREC_MODEL_DIR": os.environ.get("STREAMREC_MODEL_DIR", str(data_dir / "models")),
                    **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
        return self

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def wait_ready(self, timeout_s: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                response = self.get("/readyz", timeout=2.0)
                last = response.json()
                if response.status_code == 200:
                    return last
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s (last: {last}); log:\n{self.log_tail()}")

    def stats(self) -> dict[str, int]:
        return self.get("/stats", timeout=30.0).json()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_problems(self, n: int = 40, noise: tuple[str, ...] = ("producer buffer full",)) -> str:
        """The last `n` WARNING/ERROR lines of the log, routine `noise` left out: what a tail can miss."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        found = [line for line in lines if (" WARNING " in line or " ERROR " in line or "[WARNING]" in line
                                            or "[ERROR]" in line) and not any(x in line for x in noise)]
        return "\n".join(found[-n:])

    def diagnose(self) -> str:
        """The worker's /debug/pipeline snapshot and a py-spy dump of its threads, for a failure message.

        Written for the moment a test gives up on a stuck worker: each part reports its own failure."""
        parts = []
        try:
            parts.append("pipeline state: " + self.get("/debug/pipeline", timeout=10.0).text)
        except httpx.HTTPError as exc:
            parts.append(f"pipeline state unavailable: {exc!r}")
        if self.proc is not None and self.proc.poll() is None:
            parts.append(py_spy_dump(self.proc.pid))
        return "\n".join(parts)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within timeout_s; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
