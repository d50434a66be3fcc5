"""Numbered CQL migrations (``NNN_name.cql`` beside this file), read in order by `streamrec store migrate`.

Each file is applied once per keyspace and recorded, with its checksum, in ``schema_migrations``; a
recorded file whose text has since changed is an error, because the cluster no longer matches it.
Add a change as a new file; never edit one that has shipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.cql$")
_LINE_COMMENT = re.compile(r"--[^\n]*")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str


def split_statements(text: str) -> tuple[str, ...]:
    """The CQL statements of one file: ``--`` comments dropped, split on ``;``, blanks skipped.

    Our files keep semicolons out of string literals, which this simple split relies on.
    """
    body = _LINE_COMMENT.sub("", text)
    return tuple(" ".join(part.split()) for part in body.split(";") if part.strip())


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, by version; versions must be unique."""
    found: list[Migration] = []
    for entry in resources.files(__package__).iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        text = entry.read_text(encoding="utf-8")
        found.append(Migration(
            version=int(match.group(1)),
            name=match.group(2),
            statements=split_statements(text),
            checksum=hashlib.sha256(text.encode()).hexdigest(),
        ))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions: {versions}")
    return found
