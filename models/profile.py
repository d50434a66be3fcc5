"""Per-user state folded from click/browse/purchase events (DESIGN.md §2.2-2.3).

One ``UserProfile`` is one value of a Faust table: interests (short/long-term categories, recent
items), purchases, the current session, the scene, the pending delayed labels of the scene model and
the recent event ids used for dedupe. Keeping the dedupe memory inside the same value means one table
write covers both, so a crash can never persist one without the other.

Folding is deterministic: the same events (and the same scene-model state) give the same profile,
bit for bit, also after an ``encode_profile``/``decode_profile`` round trip. Every dict and list is
bounded by ``ProfileParams``.

The profile is a mutable msgspec Struct, so the table value is decoded straight into it and encoded
straight from it (no intermediate dict), in the same JSON object form the table has always held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from models.decay import DecayingScores
from models.scene import (
    BROWSING,
    POST_PURCHASE,
    SceneModel,
    SceneName,
    SceneParams,
    SceneSignals,
    SceneSwitch,
    decide_scene,
    rule_intent,
)
from schemas.events import Browse, Click, Purchase, UserEvent, event_items

EventKind = Literal["click", "browse", "purchase", "cart", "wishlist"]
KINDS: tuple[EventKind, ...] = ("click", "browse", "purchase", "cart", "wishlist")
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ProfileParams:
    """How events fold into a profile. Times in seconds of event time; weights are intensities I_t."""

    short_half_life_s: float = 30 * 60.0
    long_half_life_s: float = 7 * 24 * 3600.0
    session_gap_s: float = 30 * 60.0
    purchase_horizon_s: float = 60 * 60.0
    dedupe_window: int = 256
    max_recent_items: int = 50
    max_categories: int = 32
    # Bought items remembered (item -> time of its latest order), the newest kept. No age limit: the
    # cool-down that decides which of them are excluded is read when a list is made (``exclusions``),
    # not here (see ``_fold_purchase``).
    max_purchased: int = 200
    max_session_categories: int = 64
    min_dt_s: float = 1.0  # decay floor for same-timestamp bursts (models/decay.py, edge case a)
    # Event-type weights: purchase > cart/click > browse.
    w_purchase: float = 4.0
    w_cart: float = 3.0
    w_wishlist: float = 2.5
    w_click: float = 2.0
    w_browse: float = 1.0
    # A browse weighs w_browse * clamp(dwell_ms / dwell_ref_ms, dwell_min_scale, dwell_max_scale);
    # without a dwell it weighs w_browse.
    dwell_ref_ms: float = 30_000.0
    dwell_min_scale: float = 0.5
    dwell_max_scale: float = 2.0
    scene: SceneParams = field(default_factory=SceneParams)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ProfileParams:
        """Take the profile knobs of ``app.runtime.settings.Settings``; keyword overrides win."""
        names = (
            "short_half_life_s",
            "long_half_life_s",
            "session_gap_s",
            "purchase_horizon_s",
            "dedupe_window",
            "max_recent_items",
            "max_categories",
            "max_purchased",
        )
        values = {name: getattr(settings, name) for name in names}
        values.update(overrides)
        return cls(**values)

    def short_rule(self) -> DecayingScores:
        return DecayingScores(self.short_half_life_s, self.max_categories, self.min_dt_s)

    def long_rule(self) -> DecayingScores:
        return DecayingScores(self.long_half_life_s, self.max_categories, self.min_dt_s)

    def item_rule(self) -> DecayingScores:
        return DecayingScores(self.short_half_life_s, self.max_recent_items, self.min_dt_s)


class SessionStats(msgspec.Struct, kw_only=True):
    """Features of the current session (a gap of ``session_gap_s`` starts a new one)."""

    start_ts: int = 0
    last_ts: int = 0
    n_events: int = 0
    n_product_views: int = 0
    n_carts: int = 0
    n_wishlist: int = 0
    n_purchases: int = 0
    n_review_views: int = 0
    n_order_views: int = 0
    n_cart_page_views: int = 0
    dwell_ms_total: int = 0
    n_dwell: int = 0
    cat_views: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def distinct_categories(self) -> int:
        return len(self.cat_views)


@dataclass(frozen=True, slots=True)
class Applied:
    """Outcome of one ``apply_event``: a duplicate changed nothing but the duplicates counter."""

    duplicate: bool
    scene_switch: SceneSwitch | None = None
    late: bool = False  # older than the profile clock (folded without decaying the profile)


class UserProfile(msgspec.Struct, kw_only=True):
    """The mutable per-user state being folded; serialise with ``encode_profile``/``decode_profile``.

    Field order is the JSON key order of the table value (``format`` first, as it always was).
    """

    format: int = _FORMAT
    user_id: str
    clock_ms: int = 0  # newest event ts applied; 0 = no event yet
    counts: dict[str, int] = msgspec.field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    short_cat: dict[str, float] = msgspec.field(default_factory=dict)
    long_cat: dict[str, float] = msgspec.field(default_factory=dict)
    items: dict[str, list[Any]] = msgspec.field(default_factory=dict)  # item -> [weight, last_ts, category|None]
    purchased: dict[str, int] = msgspec.field(default_factory=dict)  # item -> ts of its latest order
    last_order: list[list[Any]] = msgspec.field(default_factory=list)  # [[item, category|None], ...]
    last_purchase_ts: int | None = None
    recent_event_ids: list[str] = msgspec.field(default_factory=list)  # dedupe ring, oldest first
    session: SessionStats = msgspec.field(default_factory=SessionStats)
    scene: SceneName = BROWSING
    scene_since_ms: int = 0
    scene_low_streak: int = 0  # consecutive low-intent events (hysteresis)
    scene_cat_views: dict[str, int] = msgspec.field(default_factory=dict)  # category views since scene entry
    intent: float = 0.0
    pending: list[list[Any]] = msgspec.field(default_factory=list)  # scene-model predictions awaiting a label
    accepted: int = 0
    duplicates: int = 0

    # --- reads for the encoder, recall and re-rank ---------------------------------------------------

    def history(self, n: int) -> list[tuple[str, str | None, float]]:
        """The ``n`` most recent items, oldest first: ``(item_id, category, weight)`` for the encoder."""
        recent = sorted(self.items.items(), key=lambda kv: (kv[1][1], kv[0]))[-n:] if n > 0 else []
        return [(item, entry[2], entry[0]) for item, entry in recent]

    def category_weights(self, long_share: float = 0.5, session_share: float = 2.0) -> dict[str, float]:
        """Category interest for recall/re-rank: short-term + ``long_share`` x long-term +
        ``session_share`` x the current session's view shares, each scaled to its own maximum.

        The session term is there because the decay rule gives an in-session event a gain in
        proportion to the gap before it: the first event after a long absence outweighs many quick
        views that follow, while the session counts say what the user is looking at right now. With
        the default 2.0, a category viewed most in the session leads once it has about four times
        the session views of the session's opening category.
        """
        blended: dict[str, float] = {}
        for share, source in (
            (1.0, self.short_cat),
            (long_share, self.long_cat),
            (session_share, self.session.cat_views),
        ):
            top = max(source.values(), default=0)
            if top <= 0 or share == 0:
                continue
            for cat, weight in source.items():
                blended[cat] = blended.get(cat, 0.0) + share * weight / top
        return blended

    def top_categories(
        self,
        n: int,
        horizon: Literal["short", "long", "blend"] = "blend",
    ) -> list[tuple[str, float]]:
        """Strongest categories, ``(category, weight)`` largest first, ties by name."""
        source = {"short": self.short_cat, "long": self.long_cat}.get(horizon) or (
            self.category_weights() if horizon == "blend" else {}
        )
        return sorted(source.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def item_weights(self) -> dict[str, float]:
        return {item: entry[0] for item, entry in self.items.items()}

    def exclusions(self, now_ms: int, cooldown_s: float) -> frozenset[str]:
        """Bought items not to list at ``now_ms`` (event time) (DESIGN.md §2.5).

        Two rules: an item bought less than ``cooldown_s`` before ``now_ms`` (``math.inf``: ever
        bought, as far as ``purchased`` remembers); and while the user is in the post-purchase scene,
        the items of the order behind it: the latest order, and any item bought since the scene began
        (several orders in one scene). After the cool-down a bought item is an ordinary history item
        that the ranker may list again (repeat-purchase goods). The scene rule matters when the
        cool-down is shorter than the scene; with the 24 h default the cool-down covers it.
        """
        horizon_ms = now_ms - cooldown_s * 1000.0
        out = {item for item, ts in self.purchased.items() if ts > horizon_ms}
        if self.scene == POST_PURCHASE and self.last_purchase_ts is not None:
            out.update(item for item, _ in self.last_order)
            out.update(item for item, ts in self.purchased.items() if ts >= self.scene_since_ms)
        return frozenset(out)

    def last_order_categories(self) -> frozenset[str]:
        """Categories of the latest order: their other items are substitutes in post_purchase."""
        return frozenset(cat for _, cat in self.last_order if cat)

    def session_features(self, now_ms: int) -> dict[str, float]:
        """Session features for the intent model (names: ``models.scene.FEATURE_NAMES``)."""
        s = self.session
        views = sum(s.cat_views.values())
        top = max(s.cat_views.values(), default=0)
        since_purchase = (
            min((now_ms - self.last_purchase_ts) / 60_000.0, 1440.0)
            if self.last_purchase_ts is not None
            else 1440.0
        )
        return {
            "log_events": math.log1p(s.n_events),
            "product_views": float(s.n_product_views),
            "carts": float(s.n_carts),
            "wishlist": float(s.n_wishlist),
            "session_purchases": float(s.n_purchases),
            "max_cat_views": float(top),
            "cat_concentration": top / views if views else 0.0,
            "n_categories": float(s.distinct_categories),
            "mean_dwell_s": min(s.dwell_ms_total / s.n_dwell / 1000.0, 600.0) if s.n_dwell else 0.0,
            "session_minutes": min(max(now_ms - s.start_ts, 0) / 60_000.0, 240.0),
            "review_views": float(s.n_review_views),
            "cart_page_views": float(s.n_cart_page_views),
            "minutes_since_purchase": max(since_purchase, 0.0),
            "log_lifetime_purchases": math.log1p(self.counts.get("purchase", 0)),
        }

    # --- serialisation ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (str/int/float/None/list/dict only), sharing nothing with the profile."""
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserProfile:
        """Inverse of ``to_dict`` (copies, so the given dict is never aliased)."""
        return msgspec.convert(data, cls)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(UserProfile)


def encode_profile(profile: UserProfile) -> bytes:
    """The profile as the JSON object the profile table holds (the same keys ``to_dict`` gives)."""
    return _ENCODER.encode(profile)


def decode_profile(raw: bytes) -> UserProfile:
    """A profile from its JSON object; keys it does not know (the table's ``_ledger``) are skipped."""
    return _DECODER.decode(raw)


def new_profile(user_id: str) -> UserProfile:
    return UserProfile(user_id=user_id)


def event_kind(event: UserEvent) -> EventKind:
    if isinstance(event, Purchase):
        return "purchase"
    if isinstance(event, Browse):
        return "browse"
    return {"add_to_cart": "cart", "wishlist": "wishlist"}.get(event.action, "click")  # type: ignore[return-value]


def event_weight(event: UserEvent, params: ProfileParams) -> float:
    """Intensity I_t of an event: purchase > cart > wishlist > click > browse (dwell-scaled)."""
    kind = event_kind(event)
    if kind == "browse":
        dwell = event.dwell_ms  # type: ignore[union-attr]
        if dwell is None:
            return params.w_browse
        scale = min(max(dwell / params.dwell_ref_ms, params.dwell_min_scale), params.dwell_max_scale)
        return params.w_browse * scale
    return {
        "purchase": params.w_purchase,
        "cart": params.w_cart,
        "wishlist": params.w_wishlist,
        "click": params.w_click,
    }[kind]


def apply_event(
    profile: UserProfile,
    event: UserEvent,
    params: ProfileParams,
    scene_model: SceneModel | None,
) -> Applied:
    """Fold one event into ``profile`` in place; without a scene model the rules give the intent."""
    if event.event_id in profile.recent_event_ids:
        profile.duplicates += 1
        return Applied(duplicate=True)
    profile.recent_event_ids.append(event.event_id)
    if len(profile.recent_event_ids) > params.dedupe_window:
        del profile.recent_event_ids[: len(profile.recent_event_ids) - params.dedupe_window]
    profile.accepted += 1

    ts = event.ts
    first = profile.clock_ms == 0
    late = not first and ts < profile.clock_ms
    kind = event_kind(event)
    profile.counts[kind] = profile.counts.get(kind, 0) + 1
    weight = event_weight(event, params)
    pairs = event_items(event)
    cats = _event_categories(event, pairs)

    _fold_interests(profile, pairs, cats, weight, ts, params)
    if isinstance(event, Purchase):
        _fold_purchase(profile, pairs, ts, params)
    new_session = first or (not late and ts - profile.session.last_ts > params.session_gap_s * 1000)
    _fold_session(profile, event, kind, cats, ts, new_session, params)
    profile.clock_ms = max(profile.clock_ms, ts)
    if first:
        profile.scene_since_ms = ts

    switch = _update_scene(profile, event, kind, cats, new_session, late, params, scene_model)
    return Applied(duplicate=False, scene_switch=switch, late=late)


def _event_categories(event: UserEvent, pairs: list[tuple[str, str | None]]) -> list[str]:
    """Distinct categories an event touches, in order; a category page without an item counts too."""
    cats = [cat for _, cat in pairs if cat]
    if not pairs and isinstance(event, Browse) and event.category:
        cats.append(event.category)
    return list(dict.fromkeys(cats))


def _fold_interests(
    profile: UserProfile,
    pairs: list[tuple[str, str | None]],
    cats: list[str],
    weight: float,
    ts: int,
    params: ProfileParams,
) -> None:
    observed = dict.fromkeys(cats, weight)
    clock = profile.clock_ms
    params.short_rule().apply(profile.short_cat, clock, ts, observed)
    params.long_rule().apply(profile.long_cat, clock, ts, observed)

    rule = params.item_rule()
    if ts >= clock:
        a, gain = rule.step(ts - clock)
        for entry in profile.items.values():
            entry[0] *= a
    else:
        gain = rule.late_gain(clock - ts)
    for item, cat in dict.fromkeys(pairs):
        entry = profile.items.get(item)
        if entry is None:
            profile.items[item] = [gain * weight, ts, cat]
        else:
            entry[0] += gain * weight
            entry[1] = max(entry[1], ts)
            entry[2] = cat or entry[2]
    items = profile.items
    while len(items) > params.max_recent_items:  # drop the weakest (then oldest) item: O(n) per drop
        del items[max(items, key=lambda k: (-items[k][0], -items[k][1], k))]


def _fold_purchase(
    profile: UserProfile,
    pairs: list[tuple[str, str | None]],
    ts: int,
    params: ProfileParams,
) -> None:
    """Remember each bought item with the time of its latest order and the order itself.

    ``purchased`` keeps the ``max_purchased`` newest entries. Entries older than the cool-down are
    not dropped here: which are excluded depends on the cool-down and the moment a list is made, read
    by the recommender (a setting that may change between runs; the evaluation's
    ``streamrec_never_relist_bought`` reads the same profile with no end to it). So the bound is the
    count alone; it changes behaviour only for a user with more than ``max_purchased`` distinct items
    bought within one cool-down, whose oldest ones may come back early.
    """
    for item, _ in pairs:
        profile.purchased[item] = max(profile.purchased.get(item, ts), ts)
    if len(profile.purchased) > params.max_purchased:
        newest = sorted(profile.purchased.items(), key=lambda kv: (-kv[1], kv[0]))[: params.max_purchased]
        keep = {item for item, _ in newest}
        for item in [i for i in profile.purchased if i not in keep]:
            del profile.purchased[item]
    if profile.last_purchase_ts is None or ts >= profile.last_purchase_ts:
        profile.last_purchase_ts = ts
        profile.last_order = [[item, cat] for item, cat in pairs]


def _count_view(views: dict[str, int], cat: str, limit: int) -> int:
    views[cat] = views.get(cat, 0) + 1
    if len(views) > limit:
        smallest = min((v, k) for k, v in views.items() if k != cat)
        del views[smallest[1]]
    return views[cat]


def _fold_session(
    profile: UserProfile,
    event: UserEvent,
    kind: EventKind,
    cats: list[str],
    ts: int,
    new_session: bool,
    params: ProfileParams,
) -> None:
    if new_session:
        profile.session = SessionStats(start_ts=ts, last_ts=ts)
        profile.scene_cat_views = {}
    s = profile.session
    s.last_ts = max(s.last_ts, ts)
    s.n_events += 1
    if kind == "purchase":
        s.n_purchases += 1
    elif kind == "cart":
        s.n_carts += 1
    elif kind == "wishlist":
        s.n_wishlist += 1
    opened = isinstance(event, Click) and kind == "click"
    if opened or (isinstance(event, Browse) and event.page == "product"):
        s.n_product_views += 1
    if isinstance(event, Browse):
        if event.page == "review":
            s.n_review_views += 1
        elif event.page == "order":
            s.n_order_views += 1
        elif event.page == "cart":
            s.n_cart_page_views += 1
        if event.dwell_ms is not None:
            s.dwell_ms_total += max(event.dwell_ms, 0)
            s.n_dwell += 1
    if kind != "purchase":
        for cat in cats:
            _count_view(s.cat_views, cat, params.max_session_categories)
            _count_view(profile.scene_cat_views, cat, params.max_session_categories)


def _update_scene(
    profile: UserProfile,
    event: UserEvent,
    kind: EventKind,
    cats: list[str],
    new_session: bool,
    late: bool,
    params: ProfileParams,
    scene_model: SceneModel | None,
) -> SceneSwitch | None:
    now = profile.clock_ms
    is_purchase = kind == "purchase"
    if scene_model is not None:  # labels first, so the prediction below uses what they taught
        purchase_ts = event.ts if is_purchase else None
        scene_model.resolve(profile.pending, now, params.purchase_horizon_s, purchase_ts=purchase_ts)
    features = profile.session_features(now)
    if scene_model is None:
        intent = rule_intent(features, params.scene)
    else:
        intent = scene_model.predict_intent(features)
        if not is_purchase and not late:  # a purchase is a label, not a prediction to be labelled
            scene_model.record(profile.pending, event.ts, features, intent, params.scene)

    page = event.page if isinstance(event, Browse) else None
    signals = SceneSignals(
        is_purchase=is_purchase,
        is_order_page=page == "order",
        is_review_page=page == "review",
        is_cart=kind == "cart",
        category_views=max((profile.scene_cat_views.get(cat, 0) for cat in cats), default=0),
        session_started=new_session,
    )
    decision = decide_scene(
        profile.scene,
        profile.scene_since_ms,
        profile.scene_low_streak,
        profile.last_purchase_ts,
        now,
        intent,
        signals,
        params.scene,
    )
    profile.intent = intent
    profile.scene_low_streak = decision.low_streak
    if decision.scene == profile.scene:
        return None
    switch = SceneSwitch(profile.user_id, profile.scene, decision.scene, now, intent, decision.reason)
    profile.scene = decision.scene
    profile.scene_since_ms = now
    profile.scene_cat_views = {}
    return switch
