"""Every command's expected failures as a person meets them: one line on stderr that says what to do, a
non-zero exit code, no traceback (unless --verbose), and nothing created by a command that only reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.runtime.broker import EmbeddedBroker, free_port

STREAMREC = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    full_env.update({"PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})})
    return subprocess.run([*STREAMREC, *args], check=False, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,taobao\nrow\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    return {"bad": bad, "empty": empty, "dir": tmp_path}


@pytest.fixture()
def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def test_missing_file_is_a_usage_error_before_anything_starts(tmp_path: Path, closed_port: str) -> None:
    for args in (["evaluate", "--data", "missing.csv"], ["train", "--data", "missing.csv"],
                 ["replay", "missing.csv", "--bootstrap", closed_port], ["demo", "--data", "missing.csv"]):
        result = run(args, tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "does not exist" in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert "Kafka" not in result.stderr  # the file is checked first, not the broker
    result = run(["evaluate", "--data", str(tmp_path)], tmp_path)
    assert result.returncode == 2 and "is a directory" in result.stderr


@pytest.mark.parametrize("kind", ["bad", "empty"])
def test_a_file_without_valid_events_fails_instead_of_reporting_zeros(files: dict[str, Path], kind: str,
                                                                      closed_port: str) -> None:
    path = str(files[kind])
    for args in (["evaluate", "--data", path], ["train", "--data", path]):
        assert_one_line_error(run(args, files["dir"]), "no valid events", path)
    # replay checks the broker address first (cheap), then the file
    result = run(["replay", path, "--bootstrap", closed_port], files["dir"])
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_unreachable_kafka_is_one_line_for_every_client_command(tmp_path: Path, closed_port: str) -> None:
    for args in (["replay", "--simulate", "--events", "10"], ["tail", "reco.recommendations", "--limit", "1"],
                 ["topics"], ["lag"], ["forget-user", "u1"]):
        assert_one_line_error(run([*args, "--bootstrap", closed_port], tmp_path), "cannot reach Kafka",
                              "--bootstrap")
    assert not (tmp_path / "var").exists()  # forget-user erased nothing: it reaches Kafka first


def test_no_bootstrap_configured(tmp_path: Path) -> None:
    assert_one_line_error(run(["topics"], tmp_path), "STREAMREC_KAFKA_BOOTSTRAP")


def test_unreachable_cassandra(tmp_path: Path) -> None:
    env = {"STREAMREC_STORE": "cassandra", "STREAMREC_CASSANDRA_HOSTS": "127.0.0.1",
           "STREAMREC_CASSANDRA_PORT": str(free_port())}
    for args in (["recs", "u1"], ["store", "migrate"]):
        assert_one_line_error(run(args, tmp_path, env), "cannot reach Cassandra", "STREAMREC_CASSANDRA_HOSTS")


def test_bad_option_and_setting_values(tmp_path: Path) -> None:
    for args in (["replay", "--simulate", "--rate", "-1", "--bootstrap", "x:1"],
                 ["replay", "--simulate", "--events", "0", "--bootstrap", "x:1"],
                 ["replay", "--simulate", "--rate", "5", "--speedup", "2", "--bootstrap", "x:1"],
                 ["tail", "t", "--limit", "0", "--bootstrap", "x:1"],
                 ["serve", "--port", "70000"]):
        result = run(args, tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert "Invalid value" in result.stderr or "not both" in result.stderr, (args, result.stderr)
    assert_one_line_error(run(["recs", "u1"], tmp_path, {"STREAMREC_PARTITIONS": "many"}),
                          "invalid setting", "STREAMREC_PARTITIONS")


def test_a_read_creates_nothing_and_unknown_user_says_so(tmp_path: Path) -> None:
    assert_one_line_error(run(["recs", "u1"], tmp_path), "no store at")
    assert list(tmp_path.iterdir()) == []  # no var/streamrec.db as a side effect of a read
    # with a store there, an unknown user is an error too, and the store is left as it was
    assert run(["store", "migrate"], tmp_path).returncode == 0
    before = sorted(p.name for p in (tmp_path / "var").iterdir())
    assert_one_line_error(run(["recs", "nobody"], tmp_path), "no recommendations for user 'nobody'")
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == before


def test_verbose_keeps_the_traceback(tmp_path: Path) -> None:
    result = run(["--verbose", "recs", "u1"], tmp_path)
    assert result.returncode == 1 and "UserError" in result.stderr + result.stdout


@pytest.mark.integration
def test_unknown_topic_on_a_real_broker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    result = run(["tail", "no.such.topic", "--bootstrap", broker.bootstrap], tmp_path)
    assert_one_line_error(result, "no topic 'no.such.topic'", "reco.recommendations", "streamrec topics")
