"""The one settings object. Every knob is read from an environment variable named STREAMREC_<FIELD>.

Secrets (Kafka SASL password, Cassandra password, Milvus token) are SecretStr: they never appear in
repr() or logs, and each may also be read from a file (``STREAMREC_<FIELD>_FILE``), as Kubernetes and
Docker secrets are mounted.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SECRET_FIELDS = ("kafka_sasl_password", "cassandra_password", "milvus_token")


def default_dataset() -> Path:
    """The shared Taobao replay file beside the checkout (DESIGN.md §6); may not exist on a fresh clone."""
    return Path(__file__).resolve().parents[3] / "shared" / "datasets" / "taobao_userbehavior" / "events.csv.gz"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_", frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------------------------------
    kafka_bootstrap: str = Field("", description="host:port,...; empty = start the embedded Tansu broker")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    partitions: int = Field(2, ge=1, le=1024, description="partitions of every topic (co-partitioned)")
    replication_factor: int = Field(1, ge=1)
    app_id: str = Field("streamrec", description="Faust app id = consumer group")

    # --- Worker ------------------------------------------------------------------------------------
    data_dir: Path = Path("var")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    ingest_batch: int = Field(2000, ge=1, description="max events per ingest/profile batch")
    batch_within_s: float = Field(0.05, gt=0, description="max wait to fill a batch")
    refresh_batch: int = Field(256, ge=1, description="max users re-embedded per micro-batch")
    refresh_within_s: float = Field(0.1, gt=0)
    rebalance_timeout_s: float = Field(3.0, gt=0, description="Faust broker_rebalance_timeout")
    # Faust's own value; shorter waits help freshness on Tansu but are not yet proven under crashes
    # (docs/RELIABILITY.md, "What is left").
    fetch_max_wait_ms: int = Field(1500, ge=1, le=60_000, description="longest a worker's fetch waits for "
                                   "data; Tansu holds a fetch this long even when data arrives (app/runtime/faust_fixes/highwater.py)")
    # Off until it has the default loop's crash-test record (docs/RELIABILITY.md, faults 16-17, "What is left").
    faust_fastpath: bool = Field(False, description="direct per-message delivery (app/runtime/faust_fixes/fastpath.py); "
                                 "off until proven under repeated crashes, see docs/RELIABILITY.md")
    # Each table partition is its own RocksDB; Faust's defaults (64 MiB x 3 memtables, a 2 GiB block cache
    # each) let a worker's memory grow with every user written until gigabytes (docs/BENCHMARKS.md).
    rocksdb_write_buffer_mb: int = Field(8, ge=1, le=1024, description="memtable size of each table partition")
    rocksdb_block_cache_mb: int = Field(16, ge=1, le=65536, description="read cache of each table partition")
    max_message_bytes: int = Field(1_000_000, ge=1024, description="larger input is dead-lettered")
    max_order_items: int = Field(1000, ge=1)
    max_future_skew_ms: int = Field(24 * 3600 * 1000, description="ts further ahead of wall time is rejected")
    min_event_ts_ms: int = Field(946_684_800_000, description="ts before 2000-01-01 is rejected")

    # --- Profile and scene -------------------------------------------------------------------------
    short_half_life_s: float = 30 * 60.0
    long_half_life_s: float = 7 * 24 * 3600.0
    session_gap_s: float = 30 * 60.0
    purchase_horizon_s: float = 60 * 60.0
    dedupe_window: int = Field(256, ge=1, description="recent event ids remembered per user")
    max_recent_items: int = Field(50, ge=1)
    max_categories: int = Field(32, ge=1)
    max_purchased: int = Field(200, ge=1)

    # --- Models and recall -------------------------------------------------------------------------
    model_dir: Path = Path("var/models")
    vector_dim: int = Field(64, ge=8, le=1024)
    encoder_device: Literal["auto", "cuda", "cpu"] = "auto"
    encoder_gpu_min_batch: int = Field(64, ge=1, description="on CUDA, smaller re-embedding batches run on the "
                                       "CPU (faster there: docs/BENCHMARKS.md); 1 = every batch on the GPU")
    milvus_uri: str = Field("", description="empty = milvus-lite file in data_dir; else http://host:19530")
    milvus_token: SecretStr = SecretStr("")
    milvus_collection: str = "streamrec_items"
    recall_k: int = Field(200, ge=1, le=16384)
    # DESIGN.md §2.5 (models.recommender.RecommenderOptions.bought_cooldown_s; docs/EVALUATION.md measures it).
    bought_cooldown_s: float = Field(24 * 3600.0, ge=0, description="a bought item is not listed for this long "
                                     "after its purchase (event time), nor in the post-purchase scene its order "
                                     "started; after it, it may come back from the user's history; inf = never")
    recall_timeout_s: float = Field(2.0, gt=0, description="deadline of one Milvus recall search (and availability "
                                    "lookup); past it the batch is served from popularity, flagged in reason")
    list_size: int = Field(20, ge=1, le=500)
    # The browsing scene's diversity (models.rerank.with_browsing_diversity; the trade-off measured in
    # docs/EVALUATION.md "Scene strategies and diversity").
    browsing_category_decay: float = Field(0.6, ge=0, le=1, description="browsing lists: each further item of "
                                           "a category already listed has its relevance multiplied by this "
                                           "(1 = diversity off, pure relevance order)")
    browsing_diversity_head: int = Field(5, ge=0, le=500, description="browsing lists: the first items kept in "
                                         "relevance order; category coverage re-orders the rest")

    # --- Scheduled retrain (`streamrec trainer`, app/tools/retrain.py) --------------------------------
    retrain_every_s: float = Field(3600.0, gt=0, description="how often the trainer writes a new model version")
    retrain_history_s: float = Field(7 * 24 * 3600.0, gt=0, description="the trainer learns from the input "
                                     "events of this long before the newest one (event time)")
    retrain_max_events: int = Field(5_000_000, ge=1, description="at most this many of the newest events")
    retrain_min_events: int = Field(1000, ge=1, description="fewer valid events: no new version this round")
    retrain_keep: int = Field(5, ge=0, description="model versions kept under model_dir (the newest, plus any "
                                                   "an experiment names); 0 = never remove one")

    # --- Storage -----------------------------------------------------------------------------------
    store: Literal["sqlite", "cassandra"] = "sqlite"
    sqlite_path: Path = Path("var/streamrec.db")
    cassandra_hosts: str = ""
    cassandra_port: int = 9042
    cassandra_keyspace: str = "streamrec"
    cassandra_username: str = ""
    cassandra_password: SecretStr = SecretStr("")
    cassandra_consistency: str = "LOCAL_QUORUM"
    cassandra_local_dc: str = ""
    cassandra_ssl_cafile: str = ""
    history_ttl_s: int = Field(30 * 24 * 3600, ge=0)

    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: dict) -> dict:
        for name in _SECRET_FIELDS:
            path = os.environ.get(f"STREAMREC_{name.upper()}_FILE")
            if path and not data.get(name):
                data[name] = Path(path).read_text().strip()
        return data

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def milvus_lite_path(self) -> Path:
        return self.data_dir / "milvus.db"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process from the environment."""
    return Settings()
