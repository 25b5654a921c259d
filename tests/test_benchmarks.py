"""The benchmarks run (smoke sizes, no time thresholds): they must not rot between the
sessions that read their numbers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
async def test_versus_node_smoke(tmp_path: Path) -> None:
    """``benchmarks/versus_node.py --smoke`` drives both servers through every scenario (the
    Redis path on the service alone) and reports numbers and ratios for each."""
    out = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "benchmarks/versus_node.py", "--smoke", "--json", str(out), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 220)
    assert proc.returncode == 0, text.decode()[-3000:]
    report = json.loads(out.read_text())
    scenarios = {"connect_storm", "idle_40", "relays_200B", "relays_3KB", "fixed_100_per_s",
                 "churn"}
    for side in ("python", "node"):
        assert set(report[side]) == scenarios
        assert report[side]["relays_200B"]["relays"] > 0
        assert report[side]["connect_storm"]["connects_per_s"] > 0
        assert report[side]["idle_40"]["idle_kb_per_connection"] is not None
        assert report[side]["fixed_100_per_s"]["delivered"] == 50  # 100/s for 0.5 s
        assert report[side]["churn"]["connections_churned"] > 0
    for workers in ("workers_1", "workers_2"):
        assert report["redis"][workers]["relays"] > 0
    assert report["ratio_python_to_node"]["relays_200B"]["server_cpu_us_per_relay"] > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_call_contract_harness(tmp_path: Path, where: str) -> None:
    """``benchmarks/call_contract.py`` (the separate harness of the call rules) finds every
    rule holding, on one node and on two nodes on Redis (needs the Redis the suite uses)."""
    out = tmp_path / "contract.json"
    redis = ["--redis", "redis://127.0.0.1:6379/0"] if where == "redis" else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "benchmarks/call_contract.py", *redis, "--json", str(out), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, text.decode()[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == where
    assert len(report["results"]) == 8
    assert {r["outcome"] for r in report["results"]} == {"ok"}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("workers", [1, 2])
async def test_operations_harness(workers: int) -> None:
    """``benchmarks/operations.py`` (the separate harness for metrics and TURN) finds every
    check holding: metrics equal the traffic on every scrape (two workers: on Redis), and
    served TURN credentials allocate on a real coturn while tampered ones are refused."""
    args = ["--workers", "2", "--redis", "redis://127.0.0.1:6379/0"] if workers == 2 else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "benchmarks/operations.py", *args, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 140)
    output = text.decode()
    assert proc.returncode == 0, output[-3000:]
    assert "6 of 6 checks hold" in output


@pytest.mark.timeout(240)
async def test_resilience_harness(tmp_path: Path) -> None:
    """``benchmarks/resilience.py`` at a small size (one run of each scenario, a storm of 100
    clients within 2 s): every scenario recovers, nothing acked is lost or duplicated, and
    handshakes without a token stay within the address's budget after the storm."""
    out = tmp_path / "resilience.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "benchmarks/resilience.py", "--runs", "1", "--storm-clients", "100",
        "--storm-spread", "2", "--json", str(out), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 220)
    assert proc.returncode == 0, text.decode()[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {"half_dead", "retries", "ice_restart", "deploy_sigterm",
                           "deploy_sigkill", "storm"}
    for name, tally in report.items():
        assert tally["runs"] == tally["recovered"] == 1, (name, tally)
        assert tally["sent"] > 0 and tally["acked"] == tally["delivered"], (name, tally)
        assert tally["lost"] == tally["duplicated"] == 0, (name, tally)
    assert report["retries"]["notes"]["emits"] > report["retries"]["sent"]
    storm = report["storm"]["notes"]
    assert storm["tokenless_accepted_of_40"][0] <= storm["tokenless_budget"][0]


@pytest.mark.timeout(60)
async def test_resilience_harness_sees_what_is_lost_without_a_claim() -> None:
    """The harness counts what it should: when bob's app does not claim its call after his
    socket went half-dead, what alice sent meanwhile is acked and lost, and it says so."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "benchmarks/resilience.py", "--runs", "1", "--only", "half_dead",
        "--no-claim", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 50)
    output = text.decode()
    assert proc.returncode == 1, output[-3000:]
    row = next(line for line in output.splitlines() if line.startswith("half_dead"))
    runs, recovered, sent, acked, *_, lost = map(int, row.split()[1:9])
    assert (runs, recovered, lost) == (1, 0, 6) and acked == sent
    assert "FAILED: half_dead" in output


@pytest.mark.timeout(120)
async def test_lifecycle_harness(tmp_path: Path) -> None:
    """``benchmarks/lifecycle.py`` at a small size (every kind of call once, two nodes on
    Redis, the first killed while the backend is down): the backend sees exactly the events
    the calls imply, in order, each signed; the users online then offline."""
    out = tmp_path / "lifecycle.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "benchmarks/lifecycle.py", "--rounds", "1", "--redis",
        "redis://127.0.0.1:6379/0", "--kill", "--json", str(out), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 110)
    assert proc.returncode == 0, text.decode()[-3000:]
    report = json.loads(out.read_text())
    assert report["unsigned"] == 0
    assert len(report["rows"]) == 10  # nine kinds of call, and the users
    for kind, row in report["rows"].items():
        assert row["expected"] == row["received"] > 0, (kind, row)
        assert row.get("missing", 0) == row.get("unexpected", 0) == 0, (kind, row)
        assert row.get("out_of_order", 0) == 0, (kind, row)
