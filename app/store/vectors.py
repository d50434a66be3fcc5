"""The item-vector index in Milvus (models.recall.VectorIndex): batched inner-product search over unit item vectors, with filters.

One class serves both the embedded milvus-lite file (``*.db``; the C++ Milvus 2.5 in a library) and a
Milvus server (``http(s)://host:port``). Every value placed in a filter expression goes through
``quote()``, so item ids and categories with quotes or backslashes cannot change the expression.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from app.store.milvus_raw import raw_search_available, search_raw
from models.recall import Hit, RecallTimeout

log = logging.getLogger(__name__)

MAX_ID_LEN = 512
MAX_CATEGORY_LEN = 256
INSERT_BATCH = 10_000
# Queries per Milvus call. Measured (100k x 64, k=100, 2 cores): throughput within noise from 64 to 1024
# queries per call on lite FLAT/IVF_FLAT and server HNSW, so chunks only bound message size and latency.
SEARCH_BATCH = 256


def _is_deadline(exc: MilvusException) -> bool:
    """A server-side deadline: besides "deadline"/"timeout", a Milvus 2.3 proxy answers a request
    whose gRPC deadline passed with "proxy TaskCondition context Done" (Go's context ended), seen
    intermittently in CI for a 1 us deadline where the client usually raises DEADLINE_EXCEEDED."""
    text = str(exc).lower()
    return any(mark in text for mark in ("deadline", "timeout", "context done"))


# milvus-lite answers this while its embedded server is still initialising (seen at worker start-up,
# two workers starting their lite servers at the same moment: pymilvus issue 2981). It passes.
_STARTING_MARKS = ("has not been init",)
STARTUP_RETRY_S = 30.0


def _is_starting(exc: MilvusException) -> bool:
    return any(mark in str(exc) for mark in _STARTING_MARKS)


def retry_while_starting(call: Callable[[], Any], what: str, budget_s: float = STARTUP_RETRY_S,
                         sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run `call`, retrying (50 ms doubling to 1 s) while Milvus says it is still starting, up to
    `budget_s`; any other error, or the same one past the budget, is raised."""
    deadline, delay = time.monotonic() + budget_s, 0.05
    while True:
        try:
            return call()
        except MilvusException as exc:
            if not _is_starting(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("milvus %s: server still starting (%s); retrying in %.2fs", what, str(exc)[:120], delay)
            sleep(delay)
            delay = min(1.0, delay * 2)


def quote(value: str) -> str:
    """A Milvus expression string literal for ``value`` (backslash, quote and control chars escaped)."""
    if not isinstance(value, str):
        raise TypeError(f"filter values must be str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"filter value is not valid text: {value!r}") from exc
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        # Milvus' expression grammar has no working escape for control characters (measured: "\n" does
        # not match a stored newline), so such values can neither be filtered on nor stored.
        raise ValueError(f"filter value contains control characters: {value!r}")
    return json.dumps(value, ensure_ascii=False)


def _str_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def build_filter(categories: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> str:
    """Boolean expression: available items, optionally in ``categories`` and not in ``exclude``."""
    parts = ["available == true"]
    if categories is not None:
        parts.append(f"category in {_str_list(categories)}")
    if exclude:
        parts.append(f"item_id not in {_str_list(exclude)}")
    return " and ".join(parts)


def _check_text(kind: str, value: str, limit: int) -> str:
    """Ids and categories must be filterable later: non-empty, bounded, no control characters."""
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "replace")) > limit:
        raise ValueError(f"{kind} must be a non-empty str of at most {limit} bytes: {value!r}")
    quote(value)
    return value


class MilvusRecall:
    """Item vectors in one Milvus collection (IP metric) and batched, filtered top-k search.

    ``index_type`` None picks by measurement (100k x 64 random unit vectors, k=100, 2 busy cores):
    milvus-lite FLAT is exact at ~300-800 q/s; its IVF_FLAT ran ~850-1,200 q/s but with recall@100 of
    only 0.23, and nprobe 39..320 did not raise it, so lite uses FLAT. A server uses HNSW (M=16, ef=256:
    ~640-820 q/s, recall@100 0.72, 3.8 ms single query).
    ``consistency`` "Bounded" keeps server searches from waiting on time ticks; use "Strong" where a
    search must see the write just made (tests).
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        dim: int,
        token: str = "",
        *,
        timeout_s: float = 2.0,
        index_type: str | None = None,
        consistency: str = "Bounded",
        search_batch: int = SEARCH_BATCH,
    ):
        self.uri, self.collection, self.dim = uri, collection, dim
        self.timeout_s, self.search_batch, self.consistency = timeout_s, search_batch, consistency
        self.lite = uri.endswith(".db")
        if not self.lite and not uri.startswith(("http://", "https://")):
            raise ValueError(f"milvus uri must be a .db file or http(s)://host:port, got {uri!r}")
        self.index_type = index_type or ("FLAT" if self.lite else "HNSW")
        self._client = MilvusClient(uri=uri, token=token)
        self._nprobe = 16
        self._raw = raw_search_available(self._client)
        if self.exists():  # a restarted worker searches what is already there
            retry_while_starting(lambda: self._client.load_collection(collection), "load")

    # --- lifecycle ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(retry_while_starting(lambda: self._client.has_collection(self.collection), "has_collection"))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ------------------------------------------------------------------------------------
    def _create(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LEN)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("category", DataType.VARCHAR, max_length=MAX_CATEGORY_LEN)
        schema.add_field("available", DataType.BOOL)
        schema.add_field("popularity", DataType.FLOAT)
        retry_while_starting(lambda: self._client.create_collection(
            self.collection, schema=schema, consistency_level=self.consistency), "create_collection")

    def _index_params(self, n: int) -> tuple[Any, dict[str, Any]]:
        params = MilvusClient.prepare_index_params()
        if self.index_type == "IVF_FLAT":
            nlist = int(min(4096, max(16, 4 * np.sqrt(max(n, 1)))))
            self._nprobe = max(8, nlist // 32)
            params.add_index("vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": nlist})
            return params, {"metric_type": "IP", "params": {"nprobe": self._nprobe}}
        if self.index_type == "HNSW":
            params.add_index("vector", index_type="HNSW", metric_type="IP",
                             params={"M": 16, "efConstruction": 200})
            return params, {"metric_type": "IP", "params": {"ef": 256}}
        params.add_index("vector", index_type=self.index_type, metric_type="IP")
        return params, {"metric_type": "IP", "params": {}}

    def load_items(
        self,
        ids: Sequence[str],
        matrix: np.ndarray,
        categories: Sequence[str],
        available: Sequence[bool] | None = None,
        popularity: Sequence[float] | None = None,
    ) -> None:
        """(Re)create the collection with these items, build the index and load it for search."""
        n = len(ids)
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        if matrix.shape != (n, self.dim) or len(categories) != n:
            raise ValueError(f"load_items: {n} ids, matrix {matrix.shape}, {len(categories)} categories")
        avail = [True] * n if available is None else [bool(a) for a in available]
        pop = [0.0] * n if popularity is None else [float(p) for p in popularity]
        started = time.perf_counter()
        if self.exists():
            retry_while_starting(lambda: self._client.drop_collection(self.collection), "drop_collection")
        self._create()
        for s in range(0, n, INSERT_BATCH):
            rows = [
                {"item_id": _check_text("item_id", ids[i], MAX_ID_LEN), "vector": matrix[i],
                 "category": _check_text("category", categories[i], MAX_CATEGORY_LEN),
                 "available": avail[i], "popularity": pop[i]}
                for i in range(s, min(n, s + INSERT_BATCH))
            ]
            self._client.insert(self.collection, rows)
        self._client.flush(self.collection)
        index, self._search_params = self._index_params(n)
        retry_while_starting(lambda: self._client.create_index(self.collection, index), "create_index")
        retry_while_starting(lambda: self._client.load_collection(self.collection), "load")
        log.info("milvus %s: loaded %d items into %s (%s) in %.1fs",
                 "lite" if self.lite else "server", n, self.collection, self.index_type,
                 time.perf_counter() - started)

    def upsert_item(
        self, item_id: str, vector: np.ndarray, category: str, available: bool = True, popularity: float = 0.0
    ) -> None:
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape != (self.dim,):
            raise ValueError(f"vector of {item_id!r} has shape {vec.shape}, expected ({self.dim},)")
        row = {"item_id": _check_text("item_id", item_id, MAX_ID_LEN), "vector": vec,
               "category": _check_text("category", category, MAX_CATEGORY_LEN),
               "available": bool(available), "popularity": float(popularity)}
        self._client.upsert(self.collection, [row])

    def set_available(self, item_id: str, available: bool) -> bool:
        """Flip availability (Milvus 2.5 has no partial update: read the row, upsert it). False if absent."""
        rows = self._client.query(
            self.collection, filter=f"item_id == {quote(item_id)}",
            output_fields=["item_id", "vector", "category", "popularity"], timeout=self.timeout_s,
        )
        if not rows:
            return False
        row = rows[0]
        self.upsert_item(item_id, np.asarray(row["vector"], np.float32), row["category"], available,
                         row["popularity"])
        return True

    def count(self) -> int:
        res = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    # --- search ------------------------------------------------------------------------------------
    @property
    def search_params(self) -> dict[str, Any]:
        params = getattr(self, "_search_params", None)
        if params is not None:
            return params
        if self.index_type == "HNSW":
            return {"metric_type": "IP", "params": {"ef": 256}}
        return {"metric_type": "IP", "params": {"nprobe": self._nprobe}}

    def search(
        self,
        queries: np.ndarray,
        k: int,
        categories: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Top-k available items per query (one Milvus call per ``search_batch`` queries).

        Raises RecallTimeout when Milvus does not answer within ``timeout_s``.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, {self.dim}], got {q.shape}")
        if len(q) == 0:
            return []
        expr = build_filter(categories, exclude)
        params = self.search_params
        if self.index_type == "HNSW":
            params = {"metric_type": "IP", "params": {"ef": max(k, params["params"]["ef"])}}
        out: list[list[Hit]] = []
        for s in range(0, len(q), self.search_batch):
            chunk = q[s : s + self.search_batch]
            try:
                if self._raw:  # same request, hits read in bulk (app/store/milvus_raw.py)
                    out.extend([Hit(i, s, c) for i, s, c in zip(*hits, strict=True)] for hits in search_raw(
                        self._client, self.collection, list(chunk), k, expr, params, "category", self.timeout_s))
                    continue
                res = self._client.search(
                    self.collection, data=list(chunk), filter=expr, limit=k,
                    output_fields=["category"], search_params=params, timeout=self.timeout_s,
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise RecallTimeout(f"milvus search of {len(chunk)} queries > {self.timeout_s}s") from exc
                raise
            except MilvusException as exc:
                if _is_deadline(exc):
                    raise RecallTimeout(f"milvus search of {len(chunk)} queries > {self.timeout_s}s") from exc
                raise
            out.extend(
                [Hit(str(h["id"]), float(h["distance"]), h["entity"]["category"]) for h in hits] for hits in res
            )
        return out
