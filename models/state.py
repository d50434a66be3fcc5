"""What the profile agent folds, kept in memory: every user's profile, the scene model, trending.

The worker keeps profiles in a Faust table and folds each event with ``fold_event``'s two steps;
a ranker run in one process (``streamrec evaluate``, ``streamrec tune``) keeps them here, so what it
ranks from is what the worker would hold after the same events. Pure logic: no Kafka, no Faust.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.popularity import Trending
from models.profile import Applied, ProfileParams, UserProfile, apply_event, new_profile
from models.scene import SceneModel
from schemas.events import UserEvent


def fold_event(profile: UserProfile, event: UserEvent, params: ProfileParams, scene_model: SceneModel | None,
               trending: Trending) -> Applied:
    """One event into its user's profile (decay, session, scene) and, unless it is a redelivered
    duplicate, into trending and its co-occurrence table: the profile agent's per-event step."""
    applied = apply_event(profile, event, params, scene_model)
    if not applied.duplicate:
        trending.observe_event(event)
    return applied


@dataclass
class UserStates:
    """Every user's profile, folded in memory. ``scene_model`` None: the rules alone decide scenes."""

    params: ProfileParams = field(default_factory=ProfileParams)
    scene_model: SceneModel | None = field(default_factory=SceneModel)
    profiles: dict[str, UserProfile] = field(default_factory=dict)

    def fold(self, event: UserEvent, trending: Trending) -> Applied:
        profile = self.profiles.get(event.user_id)
        if profile is None:
            profile = self.profiles[event.user_id] = new_profile(event.user_id)
        return fold_event(profile, event, self.params, self.scene_model, trending)

    def get(self, user_id: str) -> UserProfile | None:
        return self.profiles.get(user_id)
