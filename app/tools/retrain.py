"""The scheduled retrain (issue 21, item 4): a process role, `streamrec trainer`, that writes a new model
version from the recent input events every `retrain_every_s`; the workers pick each one up without a
restart (app/runtime/worker.py polls model_dir, app/runtime/services.py swaps between two batches).

It runs beside the workers, never inside one: training takes CPU seconds to minutes that a worker's
event loop cannot spare. It reads the three input topics with a group-less consumer (no offsets
committed, nothing shared with the workers' group), keeps the events of the last `retrain_history_s`
(event time, up to the newest event read) that pass ingest's validation, and trains with the code of
`streamrec train`, so items first seen since the last version get vectors and can be recalled. Old
versions beyond `retrain_keep` are removed, never one an experiment names.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka.structs import TopicPartition

from app.runtime.experiments import caught_up, topic_reader
from app.runtime.kafka import running
from app.runtime.settings import Settings
from app.tools.experiments import definitions
from app.tools.training import train_model
from models.encoder import latest_model_version
from schemas import topics
from schemas.events import UserEvent
from schemas.validation import Limits, Rejection, decode_event

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class History:
    """What one round read: the events kept for training and what was left out."""

    events: list[UserEvent]
    read: int  # messages read from the input topics
    invalid: int  # failed validation (ingest dead-letters them)
    older: int  # before the history window


async def read_history(settings: Settings, timeout_s: float = READ_TIMEOUT_S) -> History:
    """The input topics' events of the last `retrain_history_s` before the newest one, time-ordered,
    at most the newest `retrain_max_events`."""
    limits, now_ms = Limits.from_settings(settings), int(time.time() * 1000)
    kept: list[tuple[int, int, UserEvent]] = []  # a heap on ts: the newest max_events survive
    read = invalid = 0
    async with running(topic_reader(settings)) as reader:
        await reader.topics()
        parts = [TopicPartition(topic, p) for topic in topics.INPUT_TOPICS
                 for p in sorted(reader.partitions_for_topic(topic) or ())]
        if not parts:
            raise RuntimeError("no input topics on the broker (`streamrec topics` creates them)")
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout_s
        while not await caught_up(reader, parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read the input topics to their end in {timeout_s:.0f} s")
            for tp, messages in (await reader.getmany(timeout_ms=500, max_records=5000)).items():
                for message in messages:
                    read += 1
                    event = decode_event(message.value, tp.topic, limits, now_ms)
                    if isinstance(event, Rejection):
                        invalid += 1
                        continue
                    entry = (event.ts, read, event)
                    if len(kept) < settings.retrain_max_events:
                        heapq.heappush(kept, entry)
                    else:
                        heapq.heappushpop(kept, entry)
    events = [event for _, _, event in sorted(kept)]
    if not events:
        return History([], read, invalid, 0)
    since = events[-1].ts - int(settings.retrain_history_s * 1000)
    recent = [event for event in events if event.ts >= since]
    return History(recent, read, invalid, len(events) - len(recent))


def prune_versions(model_dir: Path, keep: int, protected: set[str]) -> list[str]:
    """Remove all but the newest `keep` versions (by creation), sparing `protected`; the removed names."""
    if keep <= 0:
        return []
    created = {meta.parent: json.loads(meta.read_text())["created_at"] for meta in model_dir.glob("*/meta.json")
               if not meta.parent.name.startswith(".")}
    versions = sorted(created, key=lambda path: (created[path], path.name))
    newest = latest_model_version(model_dir)
    removed = []
    for path in versions[:-keep]:
        if path.name in protected or path == newest:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


async def retrain_once(settings: Settings) -> Path | None:
    """One round: read, train and write a version (None when there were too few events), then prune."""
    started = time.perf_counter()
    history = await read_history(settings)
    logger.info("trainer: %d messages read, %d events kept (%d invalid, %d before the window)",
                history.read, len(history.events), history.invalid, history.older)
    if len(history.events) < settings.retrain_min_events:
        logger.warning("trainer: %d events, fewer than STREAMREC_RETRAIN_MIN_EVENTS=%d: no new version",
                       len(history.events), settings.retrain_min_events)
        return None
    path = await asyncio.to_thread(train_model, history.events, settings.model_dir, settings.vector_dim)
    named = {version for d in (await definitions(settings)).definitions.values()
             for version in (d.control, d.treatment)}
    removed = prune_versions(settings.model_dir, settings.retrain_keep, named)
    logger.info("trainer: version %s written in %.1f s%s", path.name, time.perf_counter() - started,
                f"; removed {', '.join(removed)}" if removed else "")
    return path


STATUS_FILE = ".trainer.json"  # under model_dir; a dot name, so never taken for a version


def write_status(settings: Settings, ok: bool, version: str | None) -> None:
    """What the last round did and when: the trainer's health check reads it (`streamrec trainer --health`)."""
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    status = {"finished_at": time.time(), "ok": ok, "version": version}
    tmp = settings.model_dir / f"{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(status))
    tmp.replace(settings.model_dir / STATUS_FILE)


def health_problem(settings: Settings, now: float | None = None) -> str | None:
    """Why the trainer is unhealthy (no round finished for two periods and ten minutes, or the last
    round failed), or None."""
    path = settings.model_dir / STATUS_FILE
    if not path.is_file():
        return f"no round has finished yet ({path} is missing)"
    status = json.loads(path.read_text())
    age = (time.time() if now is None else now) - float(status["finished_at"])
    if age > 2 * settings.retrain_every_s + 600:
        return f"the last round finished {age:.0f} s ago"
    if not status["ok"]:
        return "the last round failed (the trainer's log says why)"
    return None


async def run_trainer(settings: Settings, once: bool = False) -> None:
    """Retrain every `retrain_every_s` (the first round at once); a failed round is logged and retried
    at the next one, so a broker hiccup never stops the schedule."""
    while True:
        started = time.monotonic()
        try:
            path = await retrain_once(settings)
        except Exception:
            write_status(settings, False, None)
            if once:
                raise
            logger.exception("trainer: this round failed; the next one is in %.0f s", settings.retrain_every_s)
        else:
            write_status(settings, True, path.name if path is not None else None)
        if once:
            return
        await asyncio.sleep(max(0.0, settings.retrain_every_s - (time.monotonic() - started)))
