"""`streamrec train`: item vectors and the user encoder from an event history, saved as a model version.

Training only ever sees the events it is given; callers split by time first (never train on the
period they evaluate on). The worker picks the new version up without a restart.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from models.encoder import save_model_version, train_user_encoder
from models.vectors import train_item_vectors
from schemas.events import Browse, CatalogItem, UserEvent, event_items

logger = logging.getLogger(__name__)

SESSION_GAP_MS = 30 * 60 * 1000


def sessions_of(events: Iterable[UserEvent | CatalogItem]) -> list[list[tuple[str, str | None]]]:
    """Per-user sessions (30-minute gap unless the event names its session), as (item, category) lists."""
    sessions: dict[tuple[str, str], list[tuple[str, str | None]]] = defaultdict(list)
    last: dict[str, tuple[int, int]] = {}
    for event in events:
        if isinstance(event, CatalogItem):
            continue
        if isinstance(event, Browse) and event.item_id is None:
            continue
        n, last_ts = last.get(event.user_id, (0, event.ts))
        if event.ts - last_ts > SESSION_GAP_MS:
            n += 1
        last[event.user_id] = (n, event.ts)
        key = (event.user_id, event.session_id or str(n))
        sessions[key].extend(event_items(event))
    return [items for items in sessions.values() if items]


def user_sequences(events: Iterable[UserEvent | CatalogItem]) -> list[list[str]]:
    """Each user's whole item sequence in time order (purchases included), for the encoder."""
    seqs: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if isinstance(event, CatalogItem):
            continue
        seqs[event.user_id].extend(item for item, _ in event_items(event))
    return [seq for seq in seqs.values() if len(seq) >= 2]


def train_model(events: Sequence[UserEvent | CatalogItem], model_dir: Path, dim: int = 64,
                max_len: int = 20, seed: int = 0) -> Path:
    started = time.perf_counter()
    sessions = sessions_of(events)
    vectors = train_item_vectors(sessions, dim=dim, seed=seed)
    encoder = train_user_encoder(user_sequences(events), None, vectors, max_len=max_len, seed=seed)
    path = save_model_version(model_dir, vectors, encoder)
    logger.info("trained %s on %d events (%d sessions, %d items) in %.1f s", path.name, len(events),
                len(sessions), len(vectors.ids), time.perf_counter() - started)
    return path

