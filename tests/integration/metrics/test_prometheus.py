"""A real Prometheus (Debian's ``prometheus``) scrapes a bootstrap node and a provider started with
only ``--metrics-port`` (no local API; NVML test double for its GPUs): both targets are up, every
query of every Grafana panel in ``deploy/`` returns data, the provider shows its GPU series, the
alert rules load; ``promtool`` accepts ``deploy/``'s config and rules and their unit tests.

Runs wherever ``prometheus`` is installed; skipped only when it is absent and ``CI`` is unset
(``.ci/run`` installs it, and in CI its absence fails the test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dgpu-node.json"
NVML_PROVIDER = Path(__file__).with_name("nvml_provider.py")
#: a loaded CI machine takes tens of seconds to start a process, and Prometheus a few more
START_TIMEOUT_S = 90.0
SCRAPES_TIMEOUT_S = 120.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{name} must be installed in CI (Debian's prometheus package; .ci/run installs it)",
                        pytrace=False)
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.stem} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return path.read_text().strip()


@dataclass
class Scraped:
    prometheus: str
    provider_port: int
    bootstrap_port: int
    logs: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=30) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.prometheus + path, timeout=30) as answer:
            return json.loads(answer.read())


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.workdir)
        self.procs.append(proc)
        return proc, log_path

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    prometheus = _tool("prometheus")
    workdir = tmp_path_factory.mktemp("prom")
    workdir.chmod(0o711)  # a root provider runs script jobs as nobody below it
    procs = Procs(workdir)
    python = sys.executable
    try:
        boot_port, provider_port, prom_port = _free_port(), _free_port(), _free_port()
        boot, boot_log = procs.start("bootstrap", [
            python, "-m", "dgpu.client.main", "bootstrap", "--data-dir", str(workdir / "b"), "--port", "0",
            "--http-port", "0", "--http-url-file", str(workdir / "b.url"), "--addr-file", str(workdir / "b.addr"),
            "--metrics-port", str(boot_port)])
        boot_addr = _wait_for_file(workdir / "b.addr", boot, boot_log)
        ledger_url = _wait_for_file(workdir / "b.url", boot, boot_log)
        provider, provider_log = procs.start("provider", [
            python, str(NVML_PROVIDER), "node", "--role", "provider", "--bootstrap", boot_addr,
            "--ledger-url", ledger_url, "--data-dir", str(workdir / "p"), "--addr-file", str(workdir / "p.addr"),
            "--metrics-port", str(provider_port)])
        _wait_for_file(workdir / "p.addr", provider, provider_log)
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "dgpu-node", "static_configs": [{"targets": [f"127.0.0.1:{provider_port}"]}]},
                {"job_name": "dgpu-bootstrap", "static_configs": [{"targets": [f"127.0.0.1:{boot_port}"]}]},
            ]}))
        prom, prom_log = procs.start("prometheus", [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
        result = Scraped(f"http://127.0.0.1:{prom_port}", provider_port, boot_port, workdir)
        deadline = time.monotonic() + SCRAPES_TIMEOUT_S
        while True:  # two successful scrapes of each target
            try:
                counts = {r["metric"]["job"]: float(r["value"][1])
                          for r in result.query("sum by (job) (count_over_time(up[5m]) * "
                                                "on(job, instance) group_left up)")}
            except OSError:  # not listening yet
                counts = {}
            if counts.get("dgpu-node", 0) >= 2 and counts.get("dgpu-bootstrap", 0) >= 2:
                break
            for p, log in ((prom, prom_log), (boot, boot_log), (provider, provider_log)):
                assert p.poll() is None, f"{log.stem} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no two scrapes of both targets: {counts}"
            time.sleep(0.5)
        yield result
    finally:
        procs.stop()


def test_both_nodes_are_up(scraped: Scraped) -> None:
    up = {r["metric"]["job"]: r["value"][1] for r in scraped.query("up")}
    assert up == {"dgpu-node": "1", "dgpu-bootstrap": "1"}


def test_every_dashboard_panel_returns_data(scraped: Scraped) -> None:
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["datasource"]["uid"] == "prom"]
    assert len(panels) >= 15
    empty = [(p["title"], t["expr"]) for p in panels for t in p["targets"] if not scraped.query(t["expr"])]
    assert not empty, f"panel queries without data: {empty}"


def test_the_provider_shows_its_gpus(scraped: Scraped) -> None:
    job = '{job="dgpu-node"}'
    gpus = {(r["metric"]["uuid"], r["metric"]["model"]): float(r["value"][1])
            for r in scraped.query(f"dgpu_gpu_utilization_ratio{job}")}
    assert gpus == {("GPU-11111111-aaaa", "H100"): 0.37, ("GPU-22222222-bbbb", "H100"): 0.37}
    for name, value in (("dgpu_gpu_power_watts", 200.0), ("dgpu_gpu_temperature_celsius", 61.0),
                        ("dgpu_gpu_memory_used_bytes", float(1024**3)), ("dgpu_gpu_leased", 0.0)):
        assert [float(r["value"][1]) for r in scraped.query(f"{name}{job}")] == [value, value], name
    # the provider asked the ledger for its mint and clock at start, through the counted ledger
    assert scraped.query('dgpu_ledger_calls_total{job="dgpu-node",action="mint_info",outcome="ok"} > 0')
    assert scraped.query('dgpu_relay_reservations_active{job="dgpu-bootstrap"}')


def test_the_alert_rules_are_loaded_and_healthy(scraped: Scraped) -> None:
    groups = scraped.get("/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    assert {"DgpuProviderStoppedClaiming", "DgpuLedgerErrors", "DgpuConnectionsRefusedAtBound"} <= set(rules)
    deadline = time.monotonic() + SCRAPES_TIMEOUT_S
    while "unknown" in rules.values() and time.monotonic() < deadline:  # not evaluated yet
        time.sleep(0.5)
        rules = {r["name"]: r["health"] for g in scraped.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]}
    assert set(rules.values()) == {"ok"}, rules
    firing = [a["labels"]["alertname"] for a in scraped.get("/api/v1/alerts")["data"]["alerts"]]
    assert firing == [], firing  # a healthy pair of nodes raises nothing


@pytest.mark.parametrize("args", [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                                  ("test", "rules", "alerts.test.yml")])
def test_promtool_accepts_deploy(args: tuple[str, ...]) -> None:
    promtool = _tool("promtool")
    result = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_expositions_pass_promtool(scraped: Scraped) -> None:
    promtool = _tool("promtool")
    for port in (scraped.provider_port, scraped.bootstrap_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            text = answer.read()
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
