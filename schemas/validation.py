"""Decode and validate raw Kafka values into the records of schemas/events.py, without ever raising.

Ingest must never crash on bad input and never drop it silently (DESIGN.md §2-3), so every failure
becomes a :class:`Rejection` with a reason from a small closed set (:class:`Reason`) that the caller
dead-letters. Decisions:

- msgspec decodes JSON straight into the typed Structs (``msgspec.json.Decoder(type)``). Measured
  here, that is several times faster than ``orjson.loads`` followed by ``msgspec.convert`` and it
  validates types in the same pass, so orjson is not on the decode path.
- msgspec's JSON decoding is strict: ``true`` is not an int, ``1.0`` is not an int, ``"1"`` is not an
  int. ``NaN``/``Infinity`` are not JSON and are rejected as ``invalid_json``; a number literal that
  overflows a double (``1e400``) is ``invalid_value``. Floats are still checked to be finite.
- Unknown extra fields are ALLOWED and ignored: producers may add fields before consumers know them
  (forward compatibility), and an old worker must not dead-letter a newer frontend's events.
- The topic decides the type. A ``type`` field may be omitted; if present it must name the topic's
  kind (``type_mismatch`` otherwise). Replay lines use :func:`decode_tagged`, where ``type`` is
  required and chooses the kind.
- Semantic checks beyond types: ids non-empty, at most ``max_id_len`` characters and printable (no
  control or invisible separator characters); ``ts`` within [min_ts_ms, now_ms + max_future_skew_ms];
  prices finite and >= 0; quantities > 0; positions and dwell times >= 0; an order has 1 to
  ``max_order_items`` items; integers fit in 2**53 (safe in every JSON consumer).
- A rejection's ``detail`` is short and never carries the whole payload.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from schemas.events import AnyEvent, Browse, CatalogItem, Click, OrderItem, Purchase
from schemas.topics import TOPIC_BY_TYPE

if TYPE_CHECKING:
    from app.runtime.settings import Settings

Event = AnyEvent
"""What a valid input value decodes to."""

_MAX_INT: Final = 2**53
_MAX_DETAIL: Final = 160


class Reason(enum.StrEnum):
    """Why an input value was rejected; a closed set so dead-letter dashboards can group by it."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_TYPE = "unknown_type"
    TYPE_MISMATCH = "type_mismatch"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected value's reason and a short, human-readable detail (never the payload itself)."""

    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that input must respect; defaults equal app/runtime/settings.py's defaults."""

    max_message_bytes: int = 1_000_000
    max_order_items: int = 1000
    max_id_len: int = 256
    max_text_len: int = 1024
    min_ts_ms: int = 946_684_800_000
    max_future_skew_ms: int = 24 * 3600 * 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_message_bytes=settings.max_message_bytes,
            max_order_items=settings.max_order_items,
            min_ts_ms=settings.min_event_ts_ms,
            max_future_skew_ms=settings.max_future_skew_ms,
        )


class _Invalid(Exception):
    """Internal: a semantic check failed (never escapes this module)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_TYPES: Final = {"click": Click, "browse": Browse, "purchase": Purchase, "catalog": CatalogItem}
_DECODERS: Final = {TOPIC_BY_TYPE[kind]: msgspec.json.Decoder(cls) for kind, cls in _TYPES.items()}
_TAGGED_DECODER: Final = msgspec.json.Decoder(AnyEvent)
_ENCODER: Final = msgspec.json.Encoder()


def event_type(event: Event) -> str:
    """The event's kind (click|browse|purchase|catalog): its ``type`` tag and key into TOPIC_BY_TYPE."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def encode_event(event: Event) -> bytes:
    """JSON bytes of an event, ``type`` tag included, as producers put them on the topic."""
    return _ENCODER.encode(event)


def decode_event(raw: bytes | None, topic: str, limits: Limits, now_ms: int) -> Event | Rejection:
    """Decode a value from ``topic`` into its event type and validate it; never raises."""
    decoder = _DECODERS.get(topic)
    if decoder is None:
        return Rejection(Reason.UNKNOWN_TYPE, _short(f"no event type for topic `{topic}`"))
    return _decode(raw, decoder, limits, now_ms, tag_reason=Reason.TYPE_MISMATCH)


def decode_tagged(raw: bytes | None, limits: Limits, now_ms: int) -> Event | Rejection:
    """Decode a replay line whose ``type`` field names the kind; missing/unknown type -> unknown_type."""
    return _decode(raw, _TAGGED_DECODER, limits, now_ms, tag_reason=Reason.UNKNOWN_TYPE)


def _decode(
    raw: bytes | None, decoder: msgspec.json.Decoder, limits: Limits, now_ms: int, tag_reason: Reason
) -> Event | Rejection:
    if not raw:
        return Rejection(Reason.EMPTY, "empty value")
    if len(raw) > limits.max_message_bytes:
        return Rejection(Reason.TOO_LARGE, f"{len(raw)} bytes > limit {limits.max_message_bytes}")
    try:
        event = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return _from_validation_error(str(exc), tag_reason)
    except msgspec.DecodeError as exc:
        return _from_decode_error(raw, str(exc))
    except UnicodeDecodeError:
        return Rejection(Reason.NOT_UTF8, "value is not valid UTF-8")
    except Exception as exc:  # noqa: BLE001 - defensive: bad input must never crash ingest
        return Rejection(Reason.INVALID_JSON, _short(f"{type(exc).__name__}: {exc}"))
    if not raw.isascii() and not _is_utf8(raw):  # msgspec skips unknown keys without checking their bytes
        return Rejection(Reason.NOT_UTF8, "value is not valid UTF-8")
    try:
        _check(event, limits, now_ms)
    except _Invalid as exc:
        return Rejection(exc.reason, _short(exc.detail))
    return event


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _from_decode_error(raw: bytes, message: str) -> Rejection:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(Reason.NOT_UTF8, "value is not valid UTF-8")
    return Rejection(Reason.INVALID_JSON, _short(message))


def _from_validation_error(message: str, tag_reason: Reason) -> Rejection:
    """Map msgspec's validation message (its wording is stable and documented) to a Reason."""
    if message.endswith("at `$.type`") or message == "Object missing required field `type`":
        # A type that names no event kind at all is unknown, whatever the topic; a known kind on the
        # wrong topic is a mismatch.
        named = message.removeprefix("Invalid value '").split("'", 1)[0]
        reason = tag_reason if named in _KNOWN_TYPES or not message.startswith("Invalid value") else \
            Reason.UNKNOWN_TYPE
        return Rejection(reason, _short(message))
    if message.startswith("Object missing required field"):
        return Rejection(Reason.MISSING_FIELD, _short(message))
    if message.startswith("Expected `object`, got") and " - at " not in message:
        return Rejection(Reason.NOT_AN_OBJECT, _short(message))
    if message.startswith("Expected `"):
        return Rejection(Reason.WRONG_TYPE, _short(message))
    return Rejection(Reason.INVALID_VALUE, _short(message))


_KNOWN_TYPES = frozenset({"click", "browse", "purchase", "catalog"})


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


# --- semantic checks ------------------------------------------------------------------------------


def _check(event: Event, limits: Limits, now_ms: int) -> None:
    """Semantic checks; the common all-valid case runs with few calls, failures are then diagnosed."""
    if isinstance(event, CatalogItem):
        _check_catalog(event, limits, now_ms)
        return
    if not limits.min_ts_ms <= event.ts <= now_ms + limits.max_future_skew_ms:
        _ts(event.ts, limits, now_ms)
    if isinstance(event, Click):
        ids = (event.event_id, event.user_id, event.item_id, event.session_id, event.category, event.rec_id)
        if not _ids_ok(ids, limits.max_id_len):
            _diagnose_ids(_CLICK_IDS, ids, limits)
        _opt_count("position", event.position)
    elif isinstance(event, Browse):
        ids = (event.event_id, event.user_id, event.session_id, event.item_id, event.category)
        if not _ids_ok(ids, limits.max_id_len):
            _diagnose_ids(_BROWSE_IDS, ids, limits)
        _opt_count("dwell_ms", event.dwell_ms)
        if event.query is not None and len(event.query) > limits.max_text_len:
            raise _Invalid(Reason.INVALID_VALUE, f"`query` longer than {limits.max_text_len} characters")
    else:
        ids = (event.event_id, event.user_id, event.session_id, event.order_id, event.rec_id)
        if not _ids_ok(ids, limits.max_id_len):
            _diagnose_ids(_PURCHASE_IDS, ids, limits)
        _check_purchase(event, limits)


_CLICK_IDS: Final = ("event_id", "user_id", "item_id", "session_id", "category", "rec_id")
_BROWSE_IDS: Final = ("event_id", "user_id", "session_id", "item_id", "category")
_PURCHASE_IDS: Final = ("event_id", "user_id", "session_id", "order_id", "rec_id")


def _ids_ok(values: tuple[str | None, ...], max_len: int) -> bool:
    """Fast path: every optional id absent or non-empty, short and printable."""
    for value in values:
        if value is not None and not (value and len(value) <= max_len and value.isprintable()):
            return False
    return True


def _diagnose_ids(names: tuple[str, ...], values: tuple[str | None, ...], limits: Limits) -> None:
    for name, value in zip(names, values, strict=True):
        _opt_id(name, value, limits)


def _check_purchase(event: Purchase, limits: Limits) -> None:
    if not event.items:
        raise _Invalid(Reason.INVALID_VALUE, "order has no items")
    if len(event.items) > limits.max_order_items:
        raise _Invalid(Reason.INVALID_VALUE, f"order has {len(event.items)} items > {limits.max_order_items}")
    for line in event.items:
        _check_line(line, limits)


def _check_line(line: OrderItem, limits: Limits) -> None:
    _id("items[].item_id", line.item_id, limits)
    _opt_id("items[].category", line.category, limits)
    if not 0 < line.quantity <= _MAX_INT:
        raise _Invalid(Reason.INVALID_VALUE, f"`items[].quantity` must be positive, got {line.quantity}")
    if line.price is not None:
        _price("items[].price", line.price)


def _check_catalog(event: CatalogItem, limits: Limits, now_ms: int) -> None:
    _id("item_id", event.item_id, limits)
    _id("category", event.category, limits)
    _price("price", event.price)
    if event.ts is not None:
        _ts(event.ts, limits, now_ms)
    if event.vector is not None:
        if not event.vector:
            raise _Invalid(Reason.INVALID_VALUE, "`vector` is empty")
        if not all(map(math.isfinite, event.vector)):
            raise _Invalid(Reason.INVALID_VALUE, "`vector` has a non-finite value")


def _id(name: str, value: str, limits: Limits) -> None:
    if not value:
        raise _Invalid(Reason.INVALID_VALUE, f"`{name}` is empty")
    if len(value) > limits.max_id_len:
        raise _Invalid(Reason.INVALID_VALUE, f"`{name}` longer than {limits.max_id_len} characters")
    if not value.isprintable():
        raise _Invalid(Reason.INVALID_VALUE, f"`{name}` has control or non-printable characters")


def _opt_id(name: str, value: str | None, limits: Limits) -> None:
    if value is not None:
        _id(name, value, limits)


def _ts(ts: int, limits: Limits, now_ms: int) -> None:
    if ts < limits.min_ts_ms:
        raise _Invalid(Reason.INVALID_VALUE, f"`ts` {ts} is before {limits.min_ts_ms}")
    if ts > now_ms + limits.max_future_skew_ms:
        raise _Invalid(Reason.INVALID_VALUE, f"`ts` {ts} is too far in the future")


def _opt_count(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= _MAX_INT:
        raise _Invalid(Reason.INVALID_VALUE, f"`{name}` must be >= 0, got {value}")


def _price(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise _Invalid(Reason.INVALID_VALUE, f"`{name}` must be finite and >= 0, got {value}")
