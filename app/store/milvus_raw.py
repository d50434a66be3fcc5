"""Milvus search without pymilvus's per-hit Python objects (issue 6: recall bounded the pipeline).

`MilvusClient.search` turns every hit into a `Hit` (a UserDict) and every query into a `HybridHits`:
profiling a 512-query, k=200 search on milvus-lite 2.5.1 put 3.3 of 4.3 s in that parsing
(`SearchResult._parse_search_result_data`, 102,400 `Hit.__init__`), not in Milvus. Here the same
request is built by pymilvus (`Prepare.search_requests_with_expr`, as `GrpcHandler.search` does) and
sent on the same gRPC stub, and the response's repeated fields (ids, scores, topks, one output
field) are read in bulk. Behaviour is the same as `MilvusClient.search`: status errors raise
`MilvusException`, transport errors raise `grpc.RpcError`. Relies on pymilvus 2.5's handler layout;
`raw_search_available` says whether it is there (callers fall back to `MilvusClient.search`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymilvus import MilvusClient

try:  # pymilvus 2.5 layout
    from pymilvus.client.prepare import Prepare
    from pymilvus.client.utils import check_status
except ImportError:  # pragma: no cover - another pymilvus: MilvusRecall falls back
    Prepare = None  # type: ignore[assignment,misc]
    check_status = None  # type: ignore[assignment]

RawHits = tuple[list[str], list[float], list[str]]  # ids, scores, output field values of one query


def raw_search_available(client: MilvusClient) -> bool:
    if Prepare is None:
        return False
    try:
        return hasattr(client._get_connection(), "_stub")
    except Exception:  # noqa: BLE001 - any surprise means: use the public path
        return False


def search_raw(client: MilvusClient, collection: str, data: Sequence[Any], limit: int, expr: str,
               search_params: dict[str, Any], output_field: str, timeout: float | None) -> list[RawHits]:
    """One Milvus search request; per query (ids, scores, values of `output_field`), best first."""
    handler = client._get_connection()
    request = Prepare.search_requests_with_expr(collection, data, "", search_params, limit, expr, None,
                                                [output_field], -1, expr_params={})
    response = handler._stub.Search(request, timeout=timeout)
    check_status(response.status)
    results = response.results
    ids = list(results.ids.str_id.data) or [str(i) for i in results.ids.int_id.data]
    scores = list(results.scores)
    values: list[str] = next((list(f.scalars.string_data.data) for f in results.fields_data
                              if f.field_name == output_field), [""] * len(ids))
    out: list[RawHits] = []
    start = 0
    for n in results.topks:
        end = start + int(n)
        out.append((ids[start:end], scores[start:end], values[start:end]))
        start = end
    return out
