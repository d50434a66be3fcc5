"""Online experiments by model version: who is in which arm, and which experiment runs.

Pure logic. Decisions (the contract only says lists may carry `experiment` and `arm`):
- A user's arm is a salted hash of the user id, the salt being the experiment's name: every worker
  and every restart computes the same arm, and a user never flips arms while the experiment runs
  (its share cannot change: a new share is a new experiment). A new name reshuffles users, so one
  experiment's arms say nothing about the next one's.
- One experiment runs at a time: `streamrec experiment start` refuses a second one, and should two
  active definitions meet anyway (written by hand, or raced), every worker runs the same one, the
  earliest started (then by name), so all workers still agree.
- A user who asked to be forgotten leaves every experiment: the profile agent keeps a one-way
  marker (`optout_key`, a digest of the id, never the id) beside the erased rows, and the refresh
  serves such a user the default model version with no experiment fields.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from schemas.experiments import CONTROL, TREATMENT, Experiment, decode_experiment

logger = logging.getLogger(__name__)

OPTOUT_PREFIX = b"\x00experiments-optout:"


def bucket(name: str, user_id: str) -> float:
    """The user's position in [0, 1) for experiment `name`: blake2b, not Python's per-process hash()."""
    digest = hashlib.blake2b(f"{name}\x00{user_id}".encode(), digest_size=8, person=b"streamrec-ab").digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_arm(experiment: Experiment, user_id: str) -> str:
    """`treatment` for the first `share` of the hash space, `control` for the rest."""
    return TREATMENT if bucket(experiment.name, user_id) < experiment.share else CONTROL


def optout_key(user_id: str) -> bytes:
    """The table key marking a forgotten user as out of experiments: a digest, so the id is not kept."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=16, person=b"streamrec-optout").hexdigest()
    return OPTOUT_PREFIX + digest.encode()


def version_path(model_dir: Path, version: str) -> Path | None:
    """The folder of model version `version` (a folder named after it, with its meta.json), or None."""
    path = model_dir / version
    if not version or version.startswith(".") or "/" in version or not (path / "meta.json").is_file():
        return None
    return path


def known_versions(model_dir: Path) -> list[str]:
    return sorted(m.parent.name for m in model_dir.glob("*/meta.json") if not m.parent.name.startswith("."))


def running_experiment(definitions: Iterable[Experiment]) -> Experiment | None:
    """The experiment every worker runs: the earliest started active one (then by name), or None."""
    active = [d for d in definitions if d.active]
    return min(active, key=lambda d: (d.started_at, d.name)) if active else None


@dataclass
class Registry:
    """The latest definition per name, as read from the compacted experiments topic."""

    definitions: dict[str, Experiment] = field(default_factory=dict)

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Fold one topic record in; True when it changed a definition. A null value deletes the name."""
        if key is None:
            return False
        name = key.decode(errors="replace")
        if value is None:
            return self.definitions.pop(name, None) is not None
        try:
            record = decode_experiment(value)
        except msgspec.DecodeError as exc:
            logger.warning("ignoring a malformed experiment record under %r: %s", name, exc)
            return False
        if record.name != name:
            logger.warning("ignoring experiment record %r filed under key %r", record.name, name)
            return False
        if self.definitions.get(name) == record:
            return False
        self.definitions[name] = record
        return True

    def running(self) -> Experiment | None:
        return running_experiment(self.definitions.values())
