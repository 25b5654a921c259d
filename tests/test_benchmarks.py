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
