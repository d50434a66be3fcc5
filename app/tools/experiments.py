"""Starting, stopping and reporting online experiments: the Kafka side of `streamrec experiment`.

A definition is one record on the compacted `reco.experiments` topic, keyed by the experiment's
name; the workers follow that topic (app/runtime/experiments.py). The report sums the experiment's
closed feedback windows from `reco.metrics` (every worker's share) and runs app/evaluation/abtest.py.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
from aiokafka.structs import ConsumerRecord

from app.cli_errors import UserError
from app.runtime.experiments import assign_all, caught_up, topic_reader
from app.runtime.kafka import producer, running
from app.runtime.settings import Settings
from models.experiments import Registry, known_versions, version_path
from schemas import topics
from schemas.experiments import NAME_PATTERN, Experiment, encode_experiment

if TYPE_CHECKING:
    from app.evaluation.abtest import Report

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 60.0


async def read_to_end(settings: Settings, topic: str, timeout_s: float = READ_TIMEOUT_S) -> list[ConsumerRecord]:
    """Every record of `topic` now, read by a group-less consumer up to each partition's high watermark."""
    async with running(topic_reader(settings)) as reader:
        parts = await assign_all(reader, topic)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while True:
            for messages in (await reader.getmany(timeout_ms=300)).values():
                out.extend(messages)
            if await caught_up(reader, parts):
                return out
            if time.monotonic() > deadline:
                raise UserError(f"could not read {topic} to its end in {timeout_s:.0f} s: is the broker overloaded?")


async def definitions(settings: Settings) -> Registry:
    registry = Registry()
    for message in await read_to_end(settings, topics.EXPERIMENTS):
        registry.apply(message.key, message.value)
    return registry


async def publish(settings: Settings, record: Experiment) -> None:
    async with running(producer(settings)) as kafka:
        await kafka.send_and_wait(topics.EXPERIMENTS, encode_experiment(record), key=record.name.encode())


def check_definition(settings: Settings, name: str, control: str, treatment: str, share: float) -> None:
    """What can be checked before Kafka: the name, the share and both versions on disk."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"invalid experiment name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    if not 0.0 < share < 1.0:
        raise UserError(f"--share must be strictly between 0 and 1 (the treatment's share of users), got {share}")
    if control == treatment:
        raise UserError(f"control and treatment are the same version ({control}): nothing to compare")
    for role, version in (("control", control), ("treatment", treatment)):
        if version_path(settings.model_dir, version) is None:
            known = known_versions(settings.model_dir)
            raise UserError(f"unknown {role} version {version!r}: no model version folder of that name under "
                            f"{settings.model_dir} (STREAMREC_MODEL_DIR); known: {', '.join(known) or 'none'}")


async def start(settings: Settings, name: str, control: str, treatment: str, share: float) -> Experiment:
    check_definition(settings, name, control, treatment, share)
    registry = await definitions(settings)
    if name in registry.definitions:
        state = "is running" if registry.definitions[name].active else "ran before"
        raise UserError(f"experiment {name!r} {state}: choose a new name (a name's data must stay one experiment's)")
    other = registry.running()
    if other is not None:
        raise UserError(f"experiment {other.name!r} is running: stop it first (`streamrec experiment stop "
                        f"{other.name}`); one experiment runs at a time")
    record = Experiment(name=name, control=control, treatment=treatment, share=share,
                        started_at=int(time.time() * 1000))
    await publish(settings, record)
    return record


async def stop(settings: Settings, name: str) -> Experiment:
    registry = await definitions(settings)
    record = registry.definitions.get(name)
    if record is None:
        raise UserError(f"unknown experiment {name!r}: {_known(registry)}")
    if not record.active:
        raise UserError(f"experiment {name!r} is stopped already")
    stopped = msgspec.structs.replace(record, active=False, stopped_at=int(time.time() * 1000))
    await publish(settings, stopped)
    return stopped


async def report(settings: Settings, name: str, resamples: int | None = None) -> Report:
    """The experiment's report from every closed feedback window of it on reco.metrics."""
    from app.evaluation.abtest import BOOTSTRAP_RESAMPLES, FeedbackRecord, build_report  # scipy: only here

    decode = msgspec.json.Decoder(FeedbackRecord).decode
    registry = await definitions(settings)
    record = registry.definitions.get(name)
    if record is None:
        raise UserError(f"unknown experiment {name!r}: {_known(registry)}")
    windows = []
    for message in await read_to_end(settings, topics.METRICS):
        if message.key != b"feedback" or not message.value:
            continue
        try:
            window = decode(message.value)
        except msgspec.DecodeError:
            continue
        if window.metric == "feedback" and window.experiment == name:
            windows.append(window)
    return build_report(record, windows, resamples or BOOTSTRAP_RESAMPLES)


def _known(registry: Registry) -> str:
    names = sorted(registry.definitions)
    return f"known: {', '.join(names)}" if names else "no experiment was ever started"
