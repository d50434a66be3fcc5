"""Consumer lag per group/topic/partition, and the worker's Prometheus metrics.

On the embedded broker ListOffsets(latest) (`end_offsets()`) is wrong and the admin group-offsets call
breaks the connection (DESIGN.md §5), so lag is read the way that works there and on any Kafka: an
assign-only consumer (it never joins the group, never commits) asks the group coordinator for the
group's `committed()` offsets (OffsetFetch), then fetches from each committed offset. The fetch answer
carries the partition's highwater, and its first record is the oldest unprocessed one, whose
timestamp gives the backlog's age. The same sampler runs inside the worker (a timer: reco.lag,
Prometheus) and in `streamrec lag` (a terminal table), so both report the same numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from app.runtime import kafka
from app.runtime.faust_fixes import forget_fetch_state, refresh_metadata
from app.runtime.settings import Settings
from schemas import topics

if TYPE_CHECKING:
    from app.runtime.faust_app import StreamRec

logger = logging.getLogger(__name__)

# What the worker's agents consume (the changelogs are read for recovery only, without group offsets).
# Not reco.recommendations: the feedback stage takes the lists from the refresh agent (issue 18), and a
# group position left there by an older worker is not sampled, so it is never reported as lag.
CONSUMED = (topics.CLICK, topics.BROWSE, topics.PURCHASE, topics.CATALOG, topics.EVENTS, topics.REFRESH)

# Prometheus metrics of this process (prometheus_client's registry is per process by design). Names and
# labels follow kafka_exporter, so dashboards written for it work: deploy/grafana uses them.
LAG = Gauge("kafka_consumergroup_lag", "highwater - committed offset", ["group", "topic", "partition"])
COMMITTED = Gauge("kafka_consumergroup_current_offset", "committed offset", ["group", "topic", "partition"])
HIGHWATER = Gauge("kafka_topic_partition_current_offset", "highwater (next offset)", ["topic", "partition"])
OLDEST_AGE = Gauge("streamrec_oldest_unprocessed_age_seconds", "age of the oldest unprocessed message",
                   ["group", "topic", "partition"])
PROCESSING = Histogram("streamrec_processing_seconds", "Kafka append to handled by the feedback stage",
                       ["topic"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
FRESHNESS = Histogram("streamrec_freshness_seconds", "generated_at - source_ts of published lists",
                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600))
RECOMMENDATIONS = Counter("streamrec_recommendations_total", "recommendation lists published", ["scene"])
CTR = Gauge("streamrec_ctr", "CTR of the latest closed feedback window", ["scene", "model_version"])
CONVERSION = Gauge("streamrec_conversion_rate", "conversion of the latest closed window",
                   ["scene", "model_version"])

# Pipeline counters (the stats table) as streamrec_events_total{topic,result}: the stage's source topic.
STAGE_TOPIC = {"ingest": "ecom.input", "profile": topics.EVENTS, "refresh": topics.REFRESH,
               "catalog": topics.CATALOG}


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here (it starts from the beginning)
    highwater: int | None  # None: no fetch answer within the timeout
    lag: int | None
    oldest_ts: int | None  # Kafka timestamp (ms) of the oldest unprocessed message
    age_s: float | None
    sampled_at: int

    def to_dict(self) -> dict:
        return asdict(self)


class LagSampler:
    """Samples one group's lag over some topics; reuse it (start once, sample many times)."""

    def __init__(self, settings: Settings, group: str | None = None, topic_names: Sequence[str] = CONSUMED,
                 fetch_timeout_s: float = 3.0) -> None:
        self.settings = settings
        self.group = group or settings.app_id
        self.topic_names = tuple(topic_names)
        self.fetch_timeout_s = fetch_timeout_s
        self._consumer = kafka.consumer(settings, group_id=self.group, enable_auto_commit=False,
                                        auto_offset_reset="earliest", max_partition_fetch_bytes=64 * 1024,
                                        fetch_max_wait_ms=100)

    async def start(self) -> LagSampler:
        try:
            await self._consumer.start()
        except BaseException:
            await self._consumer.stop()  # a failed start leaves the client open
            raise
        tps = []
        for name in self.topic_names:
            parts = self._consumer.partitions_for_topic(name)
            if parts is None:
                await refresh_metadata(self._consumer)
                parts = self._consumer.partitions_for_topic(name) or set()
            tps.extend(TopicPartition(name, p) for p in sorted(parts))
        self._consumer.assign(tps)
        return self

    async def stop(self) -> None:
        await self._consumer.stop()

    async def sample(self) -> list[PartitionLag]:
        consumer = self._consumer
        tps = sorted(consumer.assignment())
        committed = {tp: await consumer.committed(tp) for tp in tps}
        for tp in tps:
            consumer.seek(tp, committed[tp] or 0)
        first: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + self.fetch_timeout_s
        # A fetch answer from every partition (records or not) sets its highwater; a partition with a
        # backlog also needs its first record (the oldest unprocessed one) for the age.
        def pending() -> bool:
            for tp in tps:
                high = consumer.highwater(tp)
                if high is None or consumer.last_poll_timestamp(tp) is None:
                    return True
                if high > (committed[tp] or 0) and tp not in first:
                    return True
            return False

        while time.monotonic() < deadline and pending():
            batches = await consumer.getmany(timeout_ms=200, max_records=len(tps) * 4)
            for tp, records in batches.items():
                if records and tp not in first:
                    first[tp] = records[0].timestamp
                    consumer.pause(tp)  # one record is all this sample needs from it
        now_ms = int(time.time() * 1000)
        out = []
        for tp in tps:
            high = consumer.highwater(tp)
            done = committed[tp] or 0
            lag = max(0, high - done) if high is not None else None
            oldest = first.get(tp) if lag else None
            out.append(PartitionLag(self.group, tp.topic, tp.partition, committed[tp], high, lag, oldest,
                                    (now_ms - oldest) / 1000.0 if oldest is not None else (0.0 if lag == 0 else None),
                                    now_ms))
        forget_fetch_state(consumer, tps)  # the next sample waits for fresh fetch answers
        consumer.resume(*tps)
        return out


def export(samples: Iterable[PartitionLag]) -> None:
    """Set the Prometheus gauges from one sample."""
    for s in samples:
        labels = (s.group, s.topic, str(s.partition))
        if s.lag is not None:
            LAG.labels(*labels).set(s.lag)
        if s.committed is not None:
            COMMITTED.labels(*labels).set(s.committed)
        if s.highwater is not None:
            HIGHWATER.labels(s.topic, str(s.partition)).set(s.highwater)
        if s.age_s is not None:
            OLDEST_AGE.labels(*labels).set(s.age_s)


async def sample_once(settings: Settings, group: str | None = None) -> list[PartitionLag]:
    sampler = await LagSampler(settings, group).start()
    try:
        return await sampler.sample()
    finally:
        await sampler.stop()


def format_table(samples: Sequence[PartitionLag]) -> str:
    """The terminal table of `streamrec lag`."""
    header = f"{'group':16s} {'topic':28s} {'part':>4s} {'committed':>10s} {'highwater':>10s} {'lag':>8s} {'age_s':>8s}"
    lines = [header, "-" * len(header)]
    for s in samples:
        def cell(v: object) -> str:
            return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
        lines.append(f"{s.group:16s} {s.topic:28s} {s.partition:>4d} {cell(s.committed):>10s} "
                     f"{cell(s.highwater):>10s} {cell(s.lag):>8s} {cell(s.age_s):>8s}")
    total = sum(s.lag or 0 for s in samples)
    lines.append(f"total lag: {total}")
    return "\n".join(lines)


class StatsCollector(Collector):
    """Exposes the stats table's counters as streamrec_events_total{topic,result} at scrape time."""

    def __init__(self, read_totals) -> None:
        self.read_totals = read_totals

    def collect(self):
        family = CounterMetricFamily("streamrec_events", "pipeline counters by stage source topic and result",
                                     labels=["topic", "result"])
        try:
            totals = self.read_totals()
        except Exception:
            logger.debug("stats not readable for a scrape", exc_info=True)
            totals = {}
        for name, value in sorted(totals.items()):
            stage, _, result = name.partition(".")
            family.add_metric([STAGE_TOPIC.get(stage, stage), result], value)
        yield family


def register_stats_collector(read_totals) -> StatsCollector:
    collector = StatsCollector(read_totals)
    REGISTRY.register(collector)
    return collector


async def watch(settings: Settings, interval_s: float, group: str | None = None):
    """Yield a sample every interval_s (for `streamrec lag --watch`)."""
    sampler = await LagSampler(settings, group).start()
    try:
        while True:
            yield await sampler.sample()
            await asyncio.sleep(interval_s)
    finally:
        await sampler.stop()


LAG_INTERVAL_S = 5.0
LAG_HISTORY = 180


def register(runtime: StreamRec) -> None:
    """Sample the worker's own group every LAG_INTERVAL_S: Prometheus, reco.lag, the dashboard's history."""
    from collections import deque

    import orjson

    history: deque[list[int]] = deque(maxlen=LAG_HISTORY)
    runtime.extras["lag_history"] = history
    lag_topic = runtime.topics[topics.LAG]

    @runtime.app.timer(LAG_INTERVAL_S)
    async def sample_lag() -> None:
        sampler = runtime.extras.get("lag_sampler")
        try:
            if sampler is None:
                sampler = runtime.extras["lag_sampler"] = await LagSampler(runtime.settings).start()
            samples = await sampler.sample()
        except Exception:
            logger.warning("lag sample failed", exc_info=True)
            return
        export(samples)
        runtime.extras["lag_latest"] = samples
        history.append([samples[0].sampled_at if samples else int(time.time() * 1000),
                        sum(s.lag or 0 for s in samples)])
        sent = [await lag_topic.send(key=f"{s.group}/{s.topic}/{s.partition}".encode(),
                                     value=orjson.dumps(s.to_dict())) for s in samples]
        await asyncio.gather(*sent)
