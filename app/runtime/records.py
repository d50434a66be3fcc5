"""The typed values of the runtime's tables and internal topic, and their one codec each.

Each hop of the hot path has one msgspec record, decoded once where it is read and encoded once where
it is written; the JSON forms are the ones these tables and topics have always held, so rows and
messages written before stay readable:

- `profiles`: a `ProfileRow`, the user's profile with the dedupe ledger (app/runtime/ledger.py) as one
  more key, `_ledger`, so one write covers both. The refresh agent hands these very bytes to the store
  as the profile snapshot's payload instead of encoding the profile again;
- `recstate`: a `RecState`, the last list's version and the items shown lately;
- `streamrec.refresh`: a JSON array of the user ids one profile batch changed.
"""

from __future__ import annotations

import msgspec

from app.runtime.ledger import LEDGER_KEY
from models.profile import UserProfile

Ledger = dict[str, tuple[str | None, int]]
"""event id -> (source of its first copy, streamrec.events offset where it was accepted)."""


class ProfileRow(UserProfile, kw_only=True):
    """A `profiles` table value: the profile, then the ledger of its dedupe ring, in one JSON object."""

    ledger: Ledger = msgspec.field(default_factory=dict, name=LEDGER_KEY)


class RecState(msgspec.Struct, frozen=True, kw_only=True):
    """A `recstate` table value: what the next list of the user builds on."""

    version: int = 0
    rec_id: str | None = None
    shown: tuple[str, ...] = ()  # newest first, at most refresh.MAX_SHOWN
    generated_at: int = 0
    source_ts: int = 0


_encode = msgspec.json.Encoder().encode
_decode_row = msgspec.json.Decoder(ProfileRow).decode
_decode_recstate = msgspec.json.Decoder(RecState).decode
_decode_users = msgspec.json.Decoder(list[str]).decode


def encode_row(row: ProfileRow) -> bytes:
    return _encode(row)


def decode_row(raw: bytes | None, user_id: str) -> ProfileRow:
    """The stored row, or a new user's empty one."""
    return _decode_row(raw) if raw else ProfileRow(user_id=user_id)


def encode_recstate(state: RecState) -> bytes:
    return _encode(state)


def decode_recstate(raw: bytes | None) -> RecState:
    return _decode_recstate(raw) if raw else RecState()


def encode_users(users: list[str]) -> bytes:
    return _encode(users)


def decode_users(raw: bytes) -> list[str]:
    return _decode_users(raw)
