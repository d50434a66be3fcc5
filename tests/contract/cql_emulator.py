"""An in-memory stand-in for a Cassandra session that runs the CQL text it is given.

``prepare(cql)`` parses the statement with cqlsh's grammar and checks it against the tables the shipped
migrations create (tests/contract/cql_check.py), so a typo in a statement, a column the schema lacks or a
WHERE Cassandra would refuse fails at prepare time, as on a cluster. ``execute_async`` binds the values
through the driver's own serialisers for each marker's type (a value of the wrong type, or one value too
many or too few, fails as the driver's bind does) and then executes what the statement says, not what a
name suggests: the columns it names receive the values in marker order.

Write semantics are Cassandra's: every cell carries a write timestamp (``USING TIMESTAMP``, else the
client's monotonic microsecond clock, as the driver's timestamp generator); the higher timestamp wins,
on a tie a tombstone wins, then the cell that expires later, then the greater serialised value; TTLs
count in whole seconds from the coordinator's second (so a cell written at 10.9 s with TTL 1 dies at
11 s) and fall back to the table's ``default_time_to_live``; partition and row deletions shadow every
cell stamped at or below theirs; a row is visible while its INSERT marker or any cell lives. Time comes
from the injected ``clock``, so expiry tests move time instead of sleeping.

Simplification: a non-frozen collection is one cell here, where Cassandra keeps a cell per element; the
two differ only when two writes of the same collection carry the same timestamp.
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from cassandra import InvalidRequest, cqltypes

from tests.contract.cql_check import Statement, Table, check_statement, load_schema

PROTOCOL_VERSION = 4
_NEVER = 2**63  # the expiry of a cell without TTL
_TYPES = {
    "text": cqltypes.UTF8Type, "varchar": cqltypes.VarcharType, "ascii": cqltypes.AsciiType,
    "bigint": cqltypes.LongType, "int": cqltypes.Int32Type, "double": cqltypes.DoubleType,
    "float": cqltypes.FloatType, "boolean": cqltypes.BooleanType, "blob": cqltypes.BytesType,
    "timestamp": cqltypes.DateType, "map": cqltypes.MapType, "list": cqltypes.ListType, "set": cqltypes.SetType,
}


@cache
def driver_type(cql_type: str) -> type:
    """The driver's serialiser class for a CQL type such as ``map<text,double>``."""

    def build(parsed: list) -> list[type]:
        # The driver's own parse is flat: a name, then a list of its parameters when it has some.
        types: list[type] = []
        for part in parsed:
            if isinstance(part, list):
                types[-1] = types[-1].apply_parameters(build(part))
            else:
                types.append(_TYPES[part])
        return types

    (built,) = build(cqltypes.cqltype_to_python(cql_type))
    return built


@dataclass
class Cell:
    stamp: int
    value: bytes | None  # None: a tombstone (a null written)
    expires_s: int = _NEVER

    def live(self, now_s: int) -> bool:
        return self.value is not None and now_s < self.expires_s

    def beats(self, other: Cell) -> bool:
        """Cassandra's reconciliation of two versions of one cell."""
        if self.stamp != other.stamp:
            return self.stamp > other.stamp
        if (self.value is None) != (other.value is None):
            return self.value is None
        if self.expires_s != other.expires_s:
            return self.expires_s > other.expires_s
        return (self.value or b"") > (other.value or b"")


@dataclass
class Row:
    marker: Cell | None = None
    cells: dict[str, Cell] = field(default_factory=dict)
    deleted_at: int = -(2**63)


@dataclass
class Partition:
    rows: dict[tuple, Row] = field(default_factory=dict)
    deleted_at: int = -(2**63)


class TableData:
    """One table's partitions; keys are deserialised values so clustering order is the type's order."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.partitions: dict[tuple, Partition] = {}

    def write(self, pk: tuple, ck: tuple, cells: Mapping[str, bytes | None], stamp: int, expires_s: int) -> None:
        partition = self.partitions.setdefault(pk, Partition())
        row = partition.rows.setdefault(ck, Row())
        if stamp <= max(partition.deleted_at, row.deleted_at):
            return  # shadowed by a deletion with a newer (or equal) timestamp
        marker = Cell(stamp, b"", expires_s)
        if row.marker is None or marker.beats(row.marker):
            row.marker = marker
        for column, value in cells.items():
            cell = Cell(stamp, value, expires_s if value is not None else _NEVER)
            old = row.cells.get(column)
            if old is None or cell.beats(old):
                row.cells[column] = cell

    def delete(self, pk: tuple, ck: tuple | None, stamp: int) -> None:
        partition = self.partitions.setdefault(pk, Partition())
        if ck is None:
            partition.deleted_at = max(partition.deleted_at, stamp)
        else:
            row = partition.rows.setdefault(ck, Row())
            row.deleted_at = max(row.deleted_at, stamp)

    def visible_rows(self, pk: tuple, now_s: int) -> list[tuple[tuple, dict[str, bytes]]]:
        """Live rows of a partition in clustering order, each as (clustering key, live cell values)."""
        partition = self.partitions.get(pk)
        if partition is None:
            return []
        found = []
        for ck, row in partition.rows.items():
            floor = max(partition.deleted_at, row.deleted_at)
            live = {c: cell.value for c, cell in row.cells.items() if cell.stamp > floor and cell.live(now_s)}
            marker = row.marker is not None and row.marker.stamp > floor and row.marker.live(now_s)
            if marker or live:
                found.append((ck, live))  # type: ignore[arg-type]
        for position in reversed(range(len(self.table.clustering))):  # stable sorts, last column first
            descending = self.table.clustering[position] in self.table.descending
            found.sort(key=lambda kv, p=position: kv[0][p], reverse=descending)
        return found


class _Done:
    """What ``execute_async`` returns: a response that is already complete."""

    def __init__(self, rows: list[Any] | None, error: BaseException | None) -> None:
        self._rows, self._error = rows, error

    def add_callbacks(self, callback: Callable[[Any], None], errback: Callable[[BaseException], None]) -> None:
        # Like the driver, complete from another thread than the caller's event loop.
        target = (lambda: errback(self._error)) if self._error else (lambda: callback(self._rows))
        threading.Thread(target=target).start()


@dataclass
class EmulatedPrepared:
    session: EmulatedSession
    statement: Statement
    is_idempotent: bool = False

    @property
    def query_string(self) -> str:
        return self.statement.cql


class EmulatedSession:
    """Shared by every store handle of a test, as one cluster is."""

    def __init__(self, clock: Callable[[], float] = time.time, schema: Mapping[str, Table] | None = None) -> None:
        self.schema = dict(schema) if schema is not None else load_schema()
        self.tables = {name: TableData(table) for name, table in self.schema.items()}
        self.prepared: list[str] = []  # every statement text prepared, in order
        self._clock = clock
        self._last_us = 0
        self._lock = threading.Lock()

    def prepare(self, cql: str) -> EmulatedPrepared:
        statement = check_statement(cql, self.schema)
        self.prepared.append(cql)
        return EmulatedPrepared(self, statement)

    def execute_async(self, prepared: EmulatedPrepared, params: Sequence[Any]) -> _Done:
        if not isinstance(prepared, EmulatedPrepared) or prepared.session is not self:
            raise TypeError(f"not a statement prepared by this session: {prepared!r}")
        values = self._bind(prepared.statement, params)  # raises synchronously, as the driver's bind
        try:
            with self._lock:
                return _Done(self._execute(prepared.statement, values), None)
        except InvalidRequest as error:  # what the coordinator would answer
            return _Done(None, error)

    # --- binding -----------------------------------------------------------------------------------

    @staticmethod
    def _bind(statement: Statement, params: Sequence[Any]) -> list[bytes | None]:
        binds = statement.binds
        if len(params) != len(binds):
            raise ValueError(f"{len(params)} values bound to {len(binds)} markers "
                             f"{[b.name for b in binds]} of {statement.cql!r}")
        out: list[bytes | None] = []
        for bind, value in zip(binds, params, strict=True):
            if value is None:
                out.append(None)
                continue
            try:
                out.append(driver_type(bind.cql_type).to_binary(value, PROTOCOL_VERSION))
            except Exception as error:
                raise TypeError(f"Received an argument of invalid type for column \"{bind.name}\". "
                                f"Expected: {bind.cql_type}, Got: {type(value)}; ({error})") from error
        return out

    @staticmethod
    def _decode(cql_type: str, raw: bytes | None) -> Any:
        return None if raw is None else driver_type(cql_type).from_binary(raw, PROTOCOL_VERSION)

    def _now_s(self) -> int:
        return int(self._clock())  # Cassandra's nowInSec: whole seconds, rounded down

    def _client_stamp(self) -> int:
        now_us = int(self._clock() * 1_000_000)
        self._last_us = now_us if now_us > self._last_us else self._last_us + 1
        return self._last_us

    # --- execution ---------------------------------------------------------------------------------

    def _execute(self, st: Statement, values: list[bytes | None]) -> list[Any]:
        table, data = st.table, self.tables[st.table.name]
        bound = iter(values)
        slot: dict[str, Any] = {}  # marker name -> bound bytes (for a column: the last one wins)
        literal = {"[ttl]": st.ttl, "[timestamp]": st.timestamp, "[limit]": st.limit}
        if st.kind == "insert":
            cells = {}
            for column, text in zip(st.columns, st.values, strict=True):
                cells[column] = next(bound) if text == "?" else self._literal(table.columns[column], text)
            options = [f"[{w}]" for w in ("ttl", "timestamp") if literal[f"[{w}]"] == "?"]
            ordered = sorted(options, key=[b.name for b in st.binds].index)
            slot.update({name: next(bound) for name in ordered})
            for column in table.primary_key:
                if cells[column] is None:
                    raise InvalidRequest(f"Invalid null value for primary key column {column}")
            ttl = self._int_option("[ttl]", slot, literal, table.default_ttl_s)
            if ttl < 0:
                raise InvalidRequest(f"A TTL must be greater or equal to 0, but was {ttl}")
            stamp = self._int_option("[timestamp]", slot, literal, None)
            stamp = self._client_stamp() if stamp is None else stamp
            key = {c: self._decode(table.columns[c], cells[c]) for c in table.primary_key}
            regular = {c: v for c, v in cells.items() if c not in table.primary_key}
            data.write(tuple(key[c] for c in table.partition_key), tuple(key[c] for c in table.clustering),
                       regular, stamp, self._now_s() + ttl if ttl else _NEVER)
            return []
        if st.kind == "delete" and st.timestamp == "?":
            slot["[timestamp]"] = next(bound)
        restrictions = []
        for rel in st.relations:
            raw = next(bound) if rel.rhs == "?" else self._literal(table.columns[rel.column], rel.rhs)
            if raw is None:
                raise InvalidRequest(f"Invalid null value in condition for column {rel.column}")
            restrictions.append((rel.column, rel.op, self._decode(table.columns[rel.column], raw)))
        if st.limit == "?":
            slot["[limit]"] = next(bound)
        pk = tuple(next(v for c, op, v in restrictions if c == column) for column in table.partition_key)
        if st.kind == "delete":
            stamp = self._int_option("[timestamp]", slot, literal, None)
            stamp = self._client_stamp() if stamp is None else stamp
            on_clustering = [(c, op, v) for c, op, v in restrictions if c in table.clustering]
            if not on_clustering:
                data.delete(pk, None, stamp)
            elif len(on_clustering) == len(table.clustering) and all(op == "=" for _, op, _ in on_clustering):
                data.delete(pk, tuple(v for _, _, v in on_clustering), stamp)
            else:
                raise NotImplementedError(f"range deletes are not emulated: {st.cql!r}")
            return []
        limit = self._int_option("[limit]", slot, literal, None)
        if limit is not None and limit <= 0:
            raise InvalidRequest(f"LIMIT must be strictly positive, got {limit}")
        rows = []
        Row_ = _row_type(st.columns)
        for ck, live in data.visible_rows(pk, self._now_s()):
            key = dict(zip(table.partition_key, pk, strict=True)) | dict(zip(table.clustering, ck, strict=True))
            if not all(_compare(key[c], op, v) for c, op, v in restrictions):
                continue
            rows.append(Row_(*(key[c] if c in key else self._decode(table.columns[c], live.get(c)) for c in st.columns)))
            if limit is not None and len(rows) >= limit:
                break
        return rows

    def _int_option(self, name: str, slot: Mapping[str, Any], literal: Mapping[str, str | None],
                    default: int | None) -> int | None:
        if name in slot:
            raw = slot[name]
            if raw is None:
                raise InvalidRequest(f"Invalid null value of {name}")
            return self._decode("int" if name != "[timestamp]" else "bigint", raw)
        text = literal[name]
        return default if text is None else int(text)

    @staticmethod
    def _literal(cql_type: str, text: str) -> bytes | None:
        if text.upper() == "NULL":
            return None
        if text.startswith("'"):
            value: Any = text[1:-1].replace("''", "'")
        elif text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            value = float(text) if "." in text else int(text)
        return driver_type(cql_type).to_binary(value, PROTOCOL_VERSION)


@cache
def _row_type(columns: tuple[str, ...]) -> type:
    return namedtuple("Row", columns)  # what the driver's default row factory returns


def _compare(left: Any, op: str, right: Any) -> bool:
    return {"=": left == right, "<": left < right, ">": left > right, "<=": left <= right,
            ">=": left >= right}[op]


class EmulatedCluster:
    def shutdown(self) -> None:
        pass
