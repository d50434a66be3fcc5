"""deploy/prometheus/alerts.yml checked by Prometheus's own promtool (Debian's prometheus package,
installed by scripts/install_test.sh): the rules and the scrape config load, and the synthetic series
of alerts.test.yml fire exactly where they should. Each alert's key condition is then broken in a copy
to show the rules test notices; each alert has its runbook section; and the readiness gauge the
worker-not-ready alert reads follows /readyz."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from app.serving.web import build_web_app

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULES_TEST = PROMETHEUS_DIR / "alerts.test.yml"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "no promtool: scripts/install_test.sh installs Debian's prometheus package, which ships it"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_and_the_scrape_config_that_loads_them_pass_promtool_check() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout


def test_synthetic_series_fire_and_stay_quiet_as_the_rules_test_expects() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_case_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert fires == names, names ^ fires
    assert quiet == names, names ^ quiet


# One change per alert to the condition that decides it; the rules test must then fail on that alert.
MUTATIONS = {
    "StreamRecConsumerLagGrowing": [("> 60", "> 6000"),  # would never fire
                                    ("streamrec_oldest_unprocessed_age_seconds) > 60",
                                     "streamrec_oldest_unprocessed_age_seconds) >= 0")],  # fires on a fresh ramp
    "StreamRecBacklogStuck": [("> 600", "> 500")],  # fires on the 590 s backlog
    "StreamRecFreshnessP99High": [("> 10", "> 1")],  # fires on 2.5 s lists
    "StreamRecDeadLetterSpike": [("[5m])) > 0.1", "[5m])) > 0")],  # fires on a trickle
    "StreamRecRecallFallbacks": [("> 0.1", "> 0.01")],  # fires on 5% fallbacks
    "StreamRecWorkerNotReady": [("or absent(up{job=\"streamrec-worker\"})", "")],  # misses a missing target
    "StreamRecNoListsPublished": [("unless on ()", "and on ()")],
}
FOR_MUTATIONS = {"StreamRecWorkerNotReady": "2m"}  # a three-minute rebalance would page


@pytest.mark.parametrize(("alert", "old", "new"),
                         [(a, old, new) for a, changes in MUTATIONS.items() for old, new in changes]
                         + [(a, "for", f) for a, f in FOR_MUTATIONS.items()])
def test_the_rules_test_catches_a_broken_rule(tmp_path: Path, alert: str, old: str, new: str) -> None:
    document = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in document["groups"] for r in g["rules"] if r.get("alert") == alert]
    if old == "for":
        rule["for"] = new
    else:
        assert old in rule["expr"], f"mutation {old!r} does not apply to {alert}"
        rule["expr"] = rule["expr"].replace(old, new)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(document))
    shutil.copy(RULES_TEST, tmp_path / "alerts.test.yml")
    assert promtool("check", "rules", "alerts.yml", cwd=tmp_path).returncode == 0  # still valid PromQL
    result = promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"the rules test passed with {alert} broken ({old!r} -> {new!r})"
    assert f"alertname: {alert}," in result.stdout + result.stderr


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_labels_annotations_and_a_runbook_section() -> None:
    sections: dict[str, str] = {}
    for block in re.split(r"^## ", RUNBOOK.read_text(), flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        sections[github_anchor(heading)] = body
    for rule in rules():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/RUNBOOK.md" and anchor == rule["alert"].lower(), annotations["runbook_url"]
        body = sections.get(anchor)
        assert body is not None, f"docs/RUNBOOK.md has no section for {rule['alert']}"
        for part in ("**Means**", "**First checks**", "**Fix**"):
            assert part in body, f"the runbook's {rule['alert']} section has no {part}"


def test_the_ready_gauge_follows_readiness_at_each_scrape() -> None:
    state = {"ready": False}

    async def scrape() -> list[str]:
        seen = []
        async with TestClient(TestServer(build_web_app(lambda: dict(state)))) as client:
            for ready in (False, True, False):
                state["ready"] = ready
                text = await (await client.get("/metrics")).text()
                seen.extend(line for line in text.splitlines() if line.startswith("streamrec_ready "))
        return seen

    assert asyncio.run(scrape()) == ["streamrec_ready 0.0", "streamrec_ready 1.0", "streamrec_ready 0.0"]
