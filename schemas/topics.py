"""Every topic name, declared once (DESIGN.md §1 names topics beside their records).

Internal topics carry the `streamrec.` prefix.
"""

CLICK = "ecom.click"
BROWSE = "ecom.browse"
PURCHASE = "ecom.purchase"
CATALOG = "ecom.catalog"
RECOMMENDATIONS = "reco.recommendations"
METRICS = "reco.metrics"
LAG = "reco.lag"
DEADLETTER = "reco.deadletter"
# Online experiments (A/B by model version), keyed by name: the latest definition of each is what holds.
EXPERIMENTS = "reco.experiments"

# Internal: the three user-event topics merged and keyed by user_id, and the users to refresh.
EVENTS = "streamrec.events"
REFRESH = "streamrec.refresh"

INPUT_TOPICS = (CLICK, BROWSE, PURCHASE)
TOPIC_BY_TYPE = {"click": CLICK, "browse": BROWSE, "purchase": PURCHASE, "catalog": CATALOG}
TYPE_BY_TOPIC = {topic: kind for kind, topic in TOPIC_BY_TYPE.items()}
COMPACTED = (RECOMMENDATIONS, EXPERIMENTS)

ALL = (CLICK, BROWSE, PURCHASE, CATALOG, RECOMMENDATIONS, METRICS, LAG, DEADLETTER, EXPERIMENTS, EVENTS,
       REFRESH)
