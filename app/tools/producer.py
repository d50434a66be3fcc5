"""Putting events onto the input topics: a recorded file or the simulator, paced, through aiokafka.

`rebase` stamps each event with its send time: replayed history then looks live to the pipeline, so
freshness (generated_at - source_ts) measures the pipeline and not the age of the recording. Event
spacing is then the replay's pacing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import msgspec

from app.runtime.kafka import producer, running
from app.runtime.settings import Settings
from app.tools.replay import ReplayStats, read_events, replay
from app.tools.simulator import simulate
from schemas.events import AnyEvent, CatalogItem
from schemas.validation import encode_event

_decode_any = msgspec.json.Decoder(AnyEvent).decode


def source_events(path: Path | None, use_simulator: bool, limit: int | None = None,
                  seed: int = 7) -> Iterator[AnyEvent]:
    if use_simulator or path is None:
        n = limit or 100_000
        events: Iterable[AnyEvent] = simulate(n_users=max(100, n // 20), n_items=max(500, n // 10),
                                             n_categories=50, n_events=n, seed=seed,
                                             start_ts_ms=int(time.time() * 1000) - 3_600_000)
    else:
        events = read_events(path)
    return islice(events, limit) if limit else iter(events)


def rebased(value: bytes) -> bytes:
    event = _decode_any(value)
    if isinstance(event, CatalogItem):
        return value
    return encode_event(msgspec.structs.replace(event, ts=int(time.time() * 1000)))


async def replay_to_kafka(settings: Settings, events: Iterable[AnyEvent], *, rate: float | None = None,
                          speedup: float | None = None, rebase: bool = True, progress: bool = True,
                          ) -> ReplayStats:
    pending = []
    async with running(producer(settings)) as kafka:

        async def send(topic: str, key: bytes, value: bytes) -> None:
            pending.append(await kafka.send(topic, rebased(value) if rebase else value, key=key))
            if len(pending) >= 5000:
                for fut in pending:
                    await fut
                pending.clear()

        stats = await replay(events, send, rate=rate, speedup=speedup, progress=progress)
        for fut in pending:
            await fut
        return stats
