"""The record of an online experiment on the compacted `reco.experiments` topic (key: its name).

The latest record per name is the experiment's state: `streamrec experiment start` writes one with
`active: true`, `stop` writes the same definition with `active: false` and `stopped_at`, so the
report still knows the arms and the share after the experiment has stopped.
"""

from __future__ import annotations

import re

import msgspec

CONTROL = "control"
TREATMENT = "treatment"
ARMS = (CONTROL, TREATMENT)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""An experiment name: it is a Kafka key, a Prometheus label value and the hash salt, so keep it plain."""


class Experiment(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    control: str  # model version serving the control arm
    treatment: str  # model version serving the treatment arm
    share: float  # share of users in the treatment arm, in (0, 1)
    started_at: int  # epoch ms
    active: bool = True
    stopped_at: int | None = None

    def version_of(self, arm: str) -> str:
        return self.treatment if arm == TREATMENT else self.control


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Experiment).decode


def encode_experiment(record: Experiment) -> bytes:
    return _encode(record)


def decode_experiment(raw: bytes) -> Experiment:
    return _decode(raw)
