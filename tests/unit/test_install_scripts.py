"""The install scripts, run for real in a sandbox whose PATH holds recording stand-ins for apt-get,
the service tools and .venv's python: the demo installs the Python package only and no system
package; the test install adds the test extras, Debian's chromium and prometheus (stopping the
service the package may start) and installs nothing already there; .ci/run runs the README's test
command and fails on "no tests collected"."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REAL_TOOLS = ("bash", "dirname", "grep", "id", "env", "cat", "chmod", "basename")
SYSTEM_TOOLS = ("apt-get", "apt", "dpkg", "sudo", "systemctl", "invoke-rc.d", "update-rc.d", "deb-systemd-helper")
RECORD = '#!/bin/bash\necho "$(basename "$0") $*" >> "$CALLS"\n'
# apt-get's stand-in also "installs": the packages' commands appear on PATH, as they would.
FAKE_APT = RECORD + """for arg in "$@"; do
  case "$arg" in
    chromium) printf '#!/bin/bash\\n' > "$SANDBOX_BIN/chromium"; chmod +x "$SANDBOX_BIN/chromium" ;;
    prometheus) for b in prometheus promtool; do printf '#!/bin/bash\\n' > "$SANDBOX_BIN/$b"; chmod +x "$SANDBOX_BIN/$b"; done ;;
  esac
done
"""
FAKE_PYTHON = RECORD + 'if [ "$1 $2" = "-m pytest" ]; then exit "${PYTEST_CODE:-0}"; fi\n'


def write_tool(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def sandbox(tmp_path: Path, present: tuple[str, ...] = ()) -> tuple[Path, dict[str, str]]:
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    shutil.copytree(ROOT / ".ci", repo / ".ci")
    (repo / ".venv" / "bin").mkdir(parents=True)
    write_tool(repo / ".venv" / "bin" / "python", FAKE_PYTHON)
    write_tool(repo / ".venv" / "bin" / "streamrec", RECORD)
    bin_dir.mkdir()
    for tool in REAL_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    for tool in SYSTEM_TOOLS:
        write_tool(bin_dir / tool, FAKE_APT if tool == "apt-get" else RECORD)
    for tool in present:
        write_tool(bin_dir / tool, "#!/bin/bash\n")
    env = {"PATH": str(bin_dir), "CALLS": str(tmp_path / "calls.log"), "SANDBOX_BIN": str(bin_dir),
           "HOME": str(tmp_path)}
    return repo, env


def run(repo: Path, env: dict[str, str], script: str, *args: str,
        extra_env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    result = subprocess.run([shutil.which("bash") or "bash", str(repo / script), *args],
                            env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=60,
                            check=False)
    log = Path(env["CALLS"])
    calls = log.read_text().splitlines() if log.exists() else []
    return result.returncode, calls


def system_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.split()[0] in SYSTEM_TOOLS]


def test_the_demo_installs_the_python_package_only_and_no_system_package(tmp_path: Path) -> None:
    repo, env = sandbox(tmp_path)
    code, calls = run(repo, env, "scripts/demo.sh", "--events", "10")
    assert code == 0
    assert system_calls(calls) == []
    installs = [c for c in calls if c.startswith("python -m pip install") and "--upgrade pip" not in c]
    assert installs == ["python -m pip install -q -e ."]  # no [test] extras
    assert calls[-1] == "streamrec demo --events 10"


def test_the_test_install_adds_the_extras_chromium_and_prometheus_and_stops_its_service(tmp_path: Path) -> None:
    repo, env = sandbox(tmp_path)
    code, calls = run(repo, env, "scripts/install_test.sh")
    assert code == 0
    assert 'python -m pip install -q -e .[test]' in calls
    apt = [c for c in calls if c.startswith("apt-get")]
    assert apt == ["apt-get update", "apt-get install -y chromium",
                   "apt-get install -y --no-install-recommends prometheus"]
    stops = [c for c in system_calls(calls) if not c.startswith("apt-get")]
    if os.path.isdir("/run/systemd/system"):
        assert stops == ["systemctl disable --now prometheus.service"]
    else:
        assert stops == ["invoke-rc.d prometheus stop", "update-rc.d prometheus disable",
                         "deb-systemd-helper disable prometheus.service"]


def test_the_test_install_installs_no_system_package_already_there(tmp_path: Path) -> None:
    repo, env = sandbox(tmp_path, present=("chromium", "promtool", "prometheus"))
    code, calls = run(repo, env, "scripts/install_test.sh")
    assert code == 0
    assert system_calls(calls) == []


@pytest.mark.parametrize(("pytest_code", "ci_code"), [(0, 0), (1, 1), (5, 1)])
def test_ci_runs_the_test_install_then_the_tests(tmp_path: Path, pytest_code: int, ci_code: int) -> None:
    repo, env = sandbox(tmp_path, present=("chromium", "promtool", "prometheus"))
    code, calls = run(repo, env, ".ci/run", extra_env={"PYTEST_CODE": str(pytest_code)})
    assert code == ci_code
    assert 'python -m pip install -q -e .[test]' in calls
    assert calls[-1] == "python -m pytest -q"


def test_the_readme_quick_start_names_these_scripts() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.DOTALL)
    assert block, "README has no quick-start command block"
    assert block.group(1).splitlines() == ["bash scripts/demo.sh", "bash scripts/install_test.sh && bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/install_test.sh" in ci and "bash scripts/test.sh" in ci
