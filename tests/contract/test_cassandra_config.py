"""The Cassandra store's pure parts, checked without a cluster: driver options from settings
(routing, consistency, auth, TLS), TTL and bucket arithmetic, keyspace DDL, and the shipped
migrations. The store's behaviour against a real cluster is the contract suite's Cassandra run."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from app.runtime.settings import Settings
from app.store.cassandra import (
    BUCKET_MS,
    cluster_options,
    consistency_level,
    create_keyspace_cql,
    history_bucket,
    write_ttl_s,
)
from app.store.migrations import load_migrations, split_statements

CA_BUNDLE = ssl.get_default_verify_paths().cafile


def settings(**overrides: object) -> Settings:
    return Settings(cassandra_hosts="10.0.0.1, 10.0.0.2,", **overrides)


def test_defaults_are_token_aware_local_quorum_without_auth_or_tls() -> None:
    options = cluster_options(settings(), request_timeout_s=3.5)
    assert options["contact_points"] == ["10.0.0.1", "10.0.0.2"]
    assert options["port"] == 9042
    profile = options["execution_profiles"][EXEC_PROFILE_DEFAULT]
    assert isinstance(profile.load_balancing_policy, TokenAwarePolicy)
    assert isinstance(profile.load_balancing_policy._child_policy, DCAwareRoundRobinPolicy)
    assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
    assert profile.request_timeout == 3.5
    assert "auth_provider" not in options and "ssl_context" not in options


def test_local_dc_consistency_auth_and_tls_come_from_settings() -> None:
    assert CA_BUNDLE and Path(CA_BUNDLE).exists()
    options = cluster_options(settings(
        cassandra_local_dc="eu-west", cassandra_consistency="local_one", cassandra_username="rec",
        cassandra_password="s3cret", cassandra_ssl_cafile=CA_BUNDLE, cassandra_port=9142,
    ))
    profile = options["execution_profiles"][EXEC_PROFILE_DEFAULT]
    assert profile.load_balancing_policy._child_policy.local_dc == "eu-west"
    assert profile.consistency_level == ConsistencyLevel.LOCAL_ONE
    auth = options["auth_provider"]
    assert isinstance(auth, PlainTextAuthProvider)
    assert (auth.username, auth.password) == ("rec", "s3cret")
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert options["port"] == 9142


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown Cassandra consistency 'QUORUMISH'"):
        consistency_level("QUORUMISH")
    with pytest.raises(ValueError, match="STREAMREC_CASSANDRA_HOSTS is empty"):
        cluster_options(Settings(cassandra_hosts=" , "))
    with pytest.raises(ValueError, match="not a plain identifier"):
        create_keyspace_cql("x; DROP KEYSPACE y", 3, "")


def test_ttl_counts_from_generated_at_in_whole_seconds() -> None:
    now = 1_700_000_000_000
    assert write_ttl_s(now, 60, now) == 60
    assert write_ttl_s(now - 59_001, 60, now) == 1  # 999 ms left rounds up, never to 0 (= no ttl)
    assert write_ttl_s(now - 60_000, 60, now) is None
    assert write_ttl_s(now - 10**9, 0, now) == 0  # ttl 0 = keep forever


def test_history_buckets_are_hours() -> None:
    hour = 1_700_000_000_000 // BUCKET_MS
    assert history_bucket(hour * BUCKET_MS) == hour
    assert history_bucket(hour * BUCKET_MS + BUCKET_MS - 1) == hour
    assert history_bucket((hour + 1) * BUCKET_MS) == hour + 1


def test_keyspace_replication() -> None:
    assert create_keyspace_cql("streamrec", 3, "dc1") == (
        "CREATE KEYSPACE IF NOT EXISTS streamrec WITH replication = "
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
    )
    assert "'class': 'SimpleStrategy', 'replication_factor': 1" in create_keyspace_cql("ks", 1, "")


def test_shipped_migrations_are_ordered_and_create_every_table() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    statements = [s for m in migrations for s in m.statements]
    created = {s.split()[5] for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS")}
    assert created == {"profiles", "rec_history", "rec_buckets", "rec_latest", "items"}
    history = next(s for s in statements if " rec_history " in s)
    assert "PRIMARY KEY ((user_id, bucket), version)" in history
    assert "CLUSTERING ORDER BY (version DESC)" in history
    assert all(len(m.checksum) == 64 for m in migrations)


def test_split_statements_drops_comments_and_blanks() -> None:
    text = "-- header; not a statement\nCREATE TABLE a (x int PRIMARY KEY);\n\n  -- c\nCREATE TABLE b\n (y int PRIMARY KEY) ;\n"
    assert split_statements(text) == ("CREATE TABLE a (x int PRIMARY KEY)", "CREATE TABLE b (y int PRIMARY KEY)")
