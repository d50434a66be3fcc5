"""Expected failures of `streamrec` commands as one line a person can act on, not a traceback.

A command raises `UserError` for what it checks itself (no valid events, unknown topic, no store yet);
failures of the outside world (a missing file, an unreachable Kafka, Milvus or Cassandra, a bad
setting) are recognised by type here. Anything else is a bug and keeps its traceback. `--verbose`
shows the traceback of an expected failure too.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import typer
import typer.core


class UserError(Exception):
    """A failure the user can fix; its message says what to do."""


def _kafka(exc: BaseException) -> str | None:
    from aiokafka.errors import KafkaConnectionError, KafkaError

    if isinstance(exc, KafkaConnectionError):
        from app.runtime.settings import get_settings

        # aiokafka logs a TLS failure (an untrusted certificate) and raises this same error without it
        tls = ("; over TLS also that STREAMREC_KAFKA_SSL_CAFILE signed the broker's certificate (-v shows the "
               "TLS error)") if "SSL" in get_settings().kafka_security_protocol else ""
        return (f"cannot reach Kafka ({exc}): check --bootstrap / STREAMREC_KAFKA_BOOTSTRAP and that the broker "
                f"is running (`streamrec demo` prints the embedded broker's address){tls}")
    if isinstance(exc, KafkaError):
        return f"Kafka refused the request: {exc}"
    return None


def _cassandra(exc: BaseException) -> str | None:
    try:
        from cassandra import AuthenticationFailed
        from cassandra.cluster import NoHostAvailable
    except ImportError:  # pragma: no cover - the driver is a core dependency
        return None
    if isinstance(exc, NoHostAvailable):
        hosts = "; ".join(f"{host}: {getattr(err, 'strerror', None) or err}" for host, err in exc.errors.items())
        return (f"cannot reach Cassandra ({hosts or exc}): check STREAMREC_CASSANDRA_HOSTS / _PORT and that the "
                "cluster is up")
    if isinstance(exc, AuthenticationFailed):
        return "Cassandra rejected the credentials: check STREAMREC_CASSANDRA_USERNAME / _PASSWORD(_FILE)"
    return None


def _milvus(exc: BaseException) -> str | None:
    from pymilvus import MilvusException

    if isinstance(exc, MilvusException):
        return f"Milvus failed: {str(exc)[:300]} (check STREAMREC_MILVUS_URI and that the server is up)"
    return None


def _settings(exc: BaseException) -> str | None:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.title == "Settings":
        fields = ", ".join(f"STREAMREC_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        return f"invalid setting: {fields}"
    return None


def _files(exc: BaseException) -> str | None:
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename or exc}"
    if isinstance(exc, IsADirectoryError):
        return f"expected a file, got a directory: {exc.filename or exc}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a gzip file (a .gz name with other content?): {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return "the file is not UTF-8 text: give a Taobao CSV(.gz) or JSON lines file"
    return None


EXPLAINERS: tuple[Callable[[BaseException], str | None], ...] = (_files, _kafka, _cassandra, _milvus, _settings)


def explain(exc: BaseException) -> str | None:
    """One line for an expected failure, None for anything else (a bug: keep the traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    for explainer in EXPLAINERS:
        message = explainer(exc)
        if message is not None:
            return message
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        return explain(exc.__cause__)
    return None


class FriendlyErrors(typer.core.TyperGroup):
    """The command group: expected failures become `Error: <one line>` on stderr and exit code 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
            raise  # usage errors and exits: typer prints them its own way
        except Exception as exc:
            message = explain(exc)
            if message is None or (ctx.obj or {}).get("verbose"):
                raise
            typer.echo(f"Error: {message}", err=True)
            raise typer.Exit(1) from exc
