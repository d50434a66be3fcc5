"""Check CQL without a cluster: parse it with cqlsh's own CQL 3 grammar and check it against the schema
that app/store/migrations/*.cql create.

The grammar is ``cqlshlib.cql3handling.syntax_rules`` from the ``cqlsh`` package (Apache Cassandra's
cqlsh, which completes and checks what a user types). cqlsh never sends prepared statements, so its
grammar lacks bind markers; ``_grammar`` adds them (``?`` as a term, a TTL, a TIMESTAMP or a LIMIT, as in
Cassandra's Parser.g) and names a few symbols it leaves anonymous (a relation's operator and right-hand
side, a column's type, a clustering direction). Each patch must apply exactly where expected, so a
cqlsh release that changes those rules fails here loudly instead of checking less.

On top of the syntax, ``check_statement`` applies the rules a Cassandra node applies when it prepares a
statement, for the subset the store uses (INSERT, SELECT, DELETE on one table, no ALLOW FILTERING, no
secondary index): the table and every column exist; an INSERT names every primary key column and as many
values as columns; a WHERE restricts every partition key column with ``=`` and a prefix of the
clustering columns, a range only on the last one, and nothing else. It returns the bind markers in order
with the names and types Cassandra gives them (the column, ``[ttl]``, ``[timestamp]``, ``[limit]``). A
statement outside that subset is an error rather than passed unchecked.

Importing cqlshlib sets ``cassandra.metadata.cql_keywords_reserved`` to cqlsh's list of reserved words
(the same CQL 3 list); prepared statements do not use it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

with warnings.catch_warnings():  # cqlshlib's scanner imports the deprecated sre_constants
    warnings.simplefilter("ignore", DeprecationWarning)
    from cqlshlib import cql3handling
    from cqlshlib.pylexotron import LexingError

from app.store.migrations import Migration, load_migrations

# (rule text in cqlsh's grammar, replacement, how many times the text must occur)
_PATCHES = (
    ("<op> ::=", '<bindMarker> ::= "?" ;\n<op> ::=', 1),
    ("<term> ::= <stringLiteral>", "<term> ::= <bindMarker>\n         | <stringLiteral>", 1),
    ('"TIMESTAMP" <wholenumber>', '"TIMESTAMP" ( <wholenumber> | <bindMarker> )', 2),  # INSERT/UPDATE, DELETE
    ('"TTL" <wholenumber>', '"TTL" ( <wholenumber> | <bindMarker> )', 1),
    ("limit=<wholenumber>", "limit=( <wholenumber> | <bindMarker> )", 1),
    ('( "=" | "<" | ">" | "<=" | ">=" | "CONTAINS" ( "KEY" )? ) <term>',
     '[rel_op]=( "=" | "<" | ">" | "<=" | ">=" | "CONTAINS" ( "KEY" )? ) [rel_rhs]=<term>', 1),
    ("[newcolname]=<cident> <storageType>", "[newcolname]=<cident> [newcoltype]=<storageType>", 8),
    ("<cfamOrdering> ::= [ordercol]=<cident> ( \"ASC\" | \"DESC\" )",
     "<cfamOrdering> ::= [ordercol]=<cident> [orderdir]=( \"ASC\" | \"DESC\" )", 1),
)

# Words that take a statement outside the subset checked here (quoted identifiers are never these).
_UNSUPPORTED = {"ALLOW", "DISTINCT", "JSON", "GROUP", "ORDER", "PER", "IF", "IN", "TOKEN", "CONTAINS",
                "WRITETIME", "MAXWRITETIME", "CAST", "COUNT", "AS"}
_SLICES = {"<", ">", "<=", ">="}
_MAX_TTL_S = 20 * 365 * 86_400  # Cassandra rejects a TTL over 20 years


class CqlError(ValueError):
    """A statement Cassandra would reject when preparing it (or one this checker cannot vouch for)."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, str]  # name -> CQL type, in declaration order
    partition_key: tuple[str, ...]
    clustering: tuple[str, ...]
    descending: frozenset[str]  # clustering columns in DESC order
    default_ttl_s: int

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering


@dataclass(frozen=True)
class Relation:
    column: str
    op: str
    rhs: str  # "?" for a bind marker, else the literal's text


@dataclass(frozen=True)
class Bind:
    name: str  # the column, or [ttl], [timestamp], [limit] as Cassandra names them
    cql_type: str


@dataclass(frozen=True)
class Statement:
    cql: str
    kind: Literal["insert", "select", "delete"]
    table: Table
    columns: tuple[str, ...]  # INSERT: the columns written; SELECT: those read; DELETE: none
    values: tuple[str, ...]  # INSERT: each column's value text ("?" for a marker)
    relations: tuple[Relation, ...]
    ttl: str | None  # "?" or a literal, from USING TTL
    timestamp: str | None  # "?" or a literal, from USING TIMESTAMP
    limit: str | None
    binds: tuple[Bind, ...]


@functools.cache
def _grammar() -> cql3handling.Cql3ParsingRuleSet:
    rules = cql3handling.syntax_rules
    for old, new, count in _PATCHES:
        found = rules.count(old)
        if found != count:
            raise RuntimeError(f"cqlsh's grammar changed: {old!r} occurs {found} times, expected {count}")
        rules = rules.replace(old, new)
    ruleset = cql3handling.Cql3ParsingRuleSet()
    ruleset.append_rules(rules)
    return ruleset


def _ident(text: str) -> str:
    """A column or table name as Cassandra keys it: unquoted names are case-insensitive."""
    return text[1:-1].replace('""', '"') if text.startswith('"') else text.lower()


def _type(text: str) -> str:
    return "".join(text.split()).lower()


def parse(cql: str) -> tuple[dict[str, object], list[tuple]]:
    """The grammar's named bindings for one statement and its tokens; CqlError if it is not valid CQL."""
    text = cql.strip().removesuffix(";") + " ;"
    grammar = _grammar()
    try:
        tokens = grammar.cql_massage_tokens(grammar.lex(text))
    except LexingError as error:
        raise CqlError(f"cannot lex {cql!r}: {error}") from None
    if sum(1 for t in tokens if t[0] == "endtoken") != 1:
        raise CqlError(f"expected exactly one statement: {cql!r}")
    match = grammar.cql_whole_parse_tokens(tokens, srcstr=text)
    if match is None:
        raise CqlError(f"not valid CQL (cqlsh's grammar): {cql!r}")
    bindings = {k: v for k, v in match.bindings.items() if isinstance(k, str) and not k.startswith("*")}
    return bindings, tokens[:-1]


def _names(bindings: Mapping[str, object], key: str) -> tuple[str, ...]:
    return tuple(_ident(str(v)) for v in bindings.get(key, ()))  # type: ignore[union-attr]


def table_of(cql: str) -> Table:
    """The table a CREATE TABLE statement makes."""
    bindings, tokens = parse(cql)
    words = [t[1].upper() for t in tokens[:2]]
    if words != ["CREATE", "TABLE"]:
        raise CqlError(f"only CREATE TABLE is understood in migrations: {cql!r}")
    if "ksname" in bindings or "ks" in bindings:
        raise CqlError(f"a migration must not name a keyspace (they run in the store's): {cql!r}")
    columns = dict(zip(_names(bindings, "newcolname"), map(_type, bindings["newcoltype"]), strict=True))
    if len(columns) != len(bindings["newcolname"]):
        raise CqlError(f"a column is declared twice: {cql!r}")
    if "ptkey" in bindings:  # PRIMARY KEY ((a, b), c, ...)
        partition, clustering = _names(bindings, "ptkey"), _names(bindings, "pkey")
    elif "pkey" in bindings:  # PRIMARY KEY (a, c, ...)
        partition, clustering = _names(bindings, "pkey")[:1], _names(bindings, "pkey")[1:]
    else:  # a text PRIMARY KEY, which cqlsh's grammar only allows on the first column
        partition, clustering = tuple(columns)[:1], ()
    for column in partition + clustering:
        if column not in columns:
            raise CqlError(f"primary key column {column} is not declared: {cql!r}")
    order = dict(zip(_names(bindings, "ordercol"), (str(d).upper() for d in bindings.get("orderdir", ())),
                     strict=True))
    if list(order) != list(clustering[:len(order)]):
        raise CqlError(f"CLUSTERING ORDER BY must list clustering columns in order: {cql!r}")
    props = dict(zip(_names(bindings, "propname"), bindings.get("propval", ()), strict=True))
    return Table(
        name=_ident(str(bindings["cf"])), columns=columns, partition_key=partition, clustering=clustering,
        descending=frozenset(c for c, d in order.items() if d == "DESC"),
        default_ttl_s=int(str(props.get("default_time_to_live", 0))),
    )


def load_schema(migrations: Iterable[Migration] | None = None) -> dict[str, Table]:
    """Every table the migrations create, by name: what `streamrec store migrate` leaves in a keyspace."""
    tables: dict[str, Table] = {}
    for migration in migrations if migrations is not None else load_migrations():
        for cql in migration.statements:
            table = table_of(cql)
            if table.name in tables:
                raise CqlError(f"table {table.name} is created twice (migration {migration.name})")
            tables[table.name] = table
    return tables


def _using(options: Iterable[object], allowed: set[str], cql: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for option in options:
        word, _, value = str(option).partition(" ")
        word = word.upper()
        if word not in allowed or word in found:
            raise CqlError(f"USING {word} is not allowed here: {cql!r}")
        if value != "?" and word == "TTL" and not 0 <= int(value) <= _MAX_TTL_S:
            raise CqlError(f"TTL {value} out of range: {cql!r}")
        found[word] = value.strip()
    return found


def _check_where(table: Table, relations: tuple[Relation, ...], kind: str, cql: str) -> None:
    """Cassandra's rules for a WHERE without ALLOW FILTERING or an index."""
    for rel in relations:
        if rel.column not in table.columns:
            raise CqlError(f"undefined column {rel.column} in WHERE of {table.name}: {cql!r}")
        if rel.column not in table.primary_key:
            raise CqlError(f"{rel.column} is not a primary key column of {table.name}: restricting it "
                           f"needs ALLOW FILTERING or an index: {cql!r}")
    by_column: dict[str, list[str]] = {}
    for rel in relations:
        by_column.setdefault(rel.column, []).append(rel.op)
    for column in table.partition_key:
        if by_column.get(column) != ["="]:
            raise CqlError(f"partition key column {column} of {table.name} must be restricted by one '=': {cql!r}")
    restricted = [c for c in table.clustering if c in by_column]
    if restricted != list(table.clustering[:len(restricted)]):
        raise CqlError(f"clustering columns of {table.name} must be restricted as a prefix "
                       f"{table.clustering}: {cql!r}")
    for column in restricted[:-1]:
        if by_column[column] != ["="]:
            raise CqlError(f"only the last restricted clustering column may be a range: {cql!r}")
    if restricted:
        ops = by_column[restricted[-1]]
        if ops != ["="] and not (set(ops) <= _SLICES and len(ops) <= 2 and len({o[0] for o in ops}) == len(ops)):
            raise CqlError(f"bad restriction {ops} on {restricted[-1]}: {cql!r}")


def check_statement(cql: str, schema: Mapping[str, Table]) -> Statement:
    """Parse ``cql`` and check it against ``schema``; returns what it does and its bind markers in order."""
    bindings, tokens = parse(cql)
    words = {t[1].upper() for t in tokens if t[0] != "quotedName"}
    if words & _UNSUPPORTED:
        raise CqlError(f"{sorted(words & _UNSUPPORTED)} is outside the subset this checker understands: {cql!r}")
    kind = tokens[0][1].lower()
    if kind not in ("insert", "select", "delete"):
        raise CqlError(f"only INSERT, SELECT and DELETE are understood: {cql!r}")
    if "ksname" in bindings:
        raise CqlError(f"statements run in the store's keyspace and must not name one: {cql!r}")
    name = _ident(str(bindings["cf"]))
    if name not in schema:
        raise CqlError(f"table {name} does not exist (tables: {sorted(schema)}): {cql!r}")
    table = schema[name]
    relations = tuple(Relation(c, str(op).upper(), str(rhs)) for c, op, rhs in
                      zip(_names(bindings, "rel_lhs"), bindings.get("rel_op", ()), bindings.get("rel_rhs", ()),
                          strict=True))
    columns: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    binds: list[Bind] = []
    limit = None
    if kind == "insert":
        columns, values = _names(bindings, "colname"), tuple(str(v) for v in bindings.get("newval", ()))
        if len(columns) != len(values):
            raise CqlError(f"{len(columns)} columns but {len(values)} values: {cql!r}")
        if len(set(columns)) != len(columns):
            raise CqlError(f"a column is written twice: {cql!r}")
        missing = [c for c in table.primary_key if c not in columns]
        if missing:
            raise CqlError(f"INSERT into {name} lacks primary key column(s) {missing}: {cql!r}")
        using = _using(bindings.get("insertopt", ()), {"TTL", "TIMESTAMP"}, cql)
        binds += [Bind(c, table.columns.get(c, "?")) for c, v in zip(columns, values, strict=True) if v == "?"]
    elif kind == "select":
        columns = _names(bindings, "colname")
        between = tokens[1:next(i for i, t in enumerate(tokens) if t[1].upper() == "FROM")]
        if [t[1] for t in between if t[1] != ","] != list(bindings.get("colname", ())):
            raise CqlError(f"only plain column names may be selected: {cql!r}")
        using = {}
        binds += [Bind(r.column, table.columns.get(r.column, "?")) for r in relations if r.rhs == "?"]
        limit = str(bindings["limit"]) if "limit" in bindings else None
        if limit == "?":
            binds.append(Bind("[limit]", "int"))
        elif limit is not None and int(limit) <= 0:
            raise CqlError(f"LIMIT must be positive: {cql!r}")
    else:
        if "delcol" in bindings:
            raise CqlError(f"only whole rows or partitions are deleted here: {cql!r}")
        using = _using(bindings.get("delopt", ()), {"TIMESTAMP"}, cql)
        if using.get("TIMESTAMP") == "?":
            binds.append(Bind("[timestamp]", "bigint"))
        binds += [Bind(r.column, table.columns.get(r.column, "?")) for r in relations if r.rhs == "?"]
    for column in columns:
        if column not in table.columns:
            raise CqlError(f"undefined column {column} in {name} (columns: {list(table.columns)}): {cql!r}")
    if kind == "insert":
        binds += [Bind(f"[{word.lower()}]", "int" if word == "TTL" else "bigint")
                  for word, value in using.items() if value == "?"]  # in the order written
        if relations:
            raise CqlError(f"INSERT has no WHERE: {cql!r}")
    else:
        _check_where(table, relations, kind, cql)
    markers = sum(1 for t in tokens if t[0] == "bindMarker")
    if markers != len(binds):
        raise CqlError(f"{markers} bind markers but {len(binds)} understood places for them: {cql!r}")
    return Statement(cql=cql, kind=kind, table=table, columns=columns, values=values,  # type: ignore[arg-type]
                     relations=relations, ttl=using.get("TTL"), timestamp=using.get("TIMESTAMP"), limit=limit,
                     binds=tuple(binds))
