"""The alerting rules and the Prometheus configs (docker/prometheus/, docs/operating.md).

promtool (Debian's prometheus package, which .ci/run installs) checks the configs and the rules
and runs the rules' unit tests; the other tests read the files.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "docker" / "prometheus"
CONFIGS = ("prometheus.yml", "native.yml")
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: apt-get install --no-install-recommends prometheus)",
)


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def load(name: str) -> dict:
    return yaml.safe_load((PROMETHEUS / name).read_text())


def alerts() -> dict[str, dict]:
    return {
        rule["alert"]: rule
        for group in load("alerts.yml")["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def promtool(*args: str) -> str:
    result = subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def sites_job(config: str) -> dict:
    (job,) = [job for job in load(config)["scrape_configs"] if job["job_name"] == "sites"]
    return job


def recorded_max_connections(rule_file: str) -> int | None:
    for group in load(rule_file)["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == "postgresql:max_connections":
                return int(re.fullmatch(r"vector\((\d+)\)", rule["expr"]).group(1))
    return None


@needs_promtool
@pytest.mark.parametrize("config", CONFIGS)
def test_promtool_accepts_the_config_and_every_rule_file_it_loads(config):
    output = promtool("check", "config", f"docker/prometheus/{config}")
    for rule_file in load(config)["rule_files"]:
        assert f"Checking docker/prometheus/{rule_file}" in output


@needs_promtool
def test_promtool_accepts_the_rules():
    promtool("check", "rules", "docker/prometheus/alerts.yml")


@needs_promtool
def test_every_alert_passes_its_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", "docker/prometheus/alerts_test.yml")


def test_every_alert_has_a_case_that_fires_and_one_that_must_not():
    found = {name: set() for name in alerts()}
    for test in load("alerts_test.yml")["tests"]:
        for case in test.get("alert_rule_test", []):
            assert case["alertname"] in found, f"a test of an alert alerts.yml does not have: {case}"
            found[case["alertname"]].add("fires" if case["exp_alerts"] else "quiet")
    assert {name: kinds for name, kinds in found.items() if kinds != {"fires", "quiet"}} == {}


def test_the_unit_tests_load_the_rules_compose_loads():
    assert load("alerts_test.yml")["rule_files"] == load("prometheus.yml")["rule_files"]


def test_every_alert_has_a_severity_a_summary_and_a_section_in_the_docs():
    page = (ROOT / "docs" / "operating.md").read_text()
    sections = set(re.findall(r"^### (\w+)$", page, re.MULTILINE))
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"docs/operating.md#{name.lower()}", name
        assert name in sections, f"docs/operating.md has no section for {name}"


@pytest.mark.parametrize("config", CONFIGS)
def test_each_config_records_the_servers_max_connections_once(config):
    recorded = [recorded_max_connections(name) for name in load(config)["rule_files"]]
    assert len([value for value in recorded if value is not None]) == 1


def test_max_connections_recorded_for_compose_is_the_servers(services):
    setting = next(arg for arg in services["db"]["command"] if arg.startswith("max_connections="))
    assert recorded_max_connections("max-connections.yml") == int(setting.split("=", 1)[1])


def test_prometheus_scrapes_every_compose_site(services):
    job = sites_job("prometheus.yml")
    listed = {target for config in job["static_configs"] for target in config["targets"]}
    discovered = {name for config in job["dns_sd_configs"] for name in config["names"]}
    sites = [name for name in services if name.startswith("web")]
    assert listed | {f"{name}:8000" for name in discovered} == {f"{name}:8000" for name in sites}
    for name in sites:
        # A site of a profile is found while it runs; listed, it would be down whenever the
        # profile is not started.
        assert (f"{name}:8000" in listed) is ("profiles" not in services[name]), name


def test_native_prometheus_scrapes_both_sites_of_run_ab():
    (config,) = sites_job("native.yml")["static_configs"]
    assert config["targets"] == ["127.0.0.1:8000", "127.0.0.1:8001"]


def test_compose_prometheus_is_pinned_on_loopback_and_loads_the_rules(services):
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    assert prometheus["ports"] == ["${PUBLISH_ADDRESS:-127.0.0.1}:9090:9090"]
    assert prometheus["volumes"] == ["./docker/prometheus:/etc/prometheus:ro"]
    assert "networks" not in prometheus  # on the sites' network


def test_sites_admit_container_networks_to_metrics_and_nothing_public(services):
    # Addresses Docker (172.17-31.x, 192.168.x) and podman (10.88-89.x) give containers.
    containers = [ipaddress.ip_address(a) for a in ("172.18.0.5", "192.168.32.4", "10.89.0.7")]
    sites = {name: s for name, s in services.items() if "METRICS_ALLOWED_IPS" in s.get("environment", {})}
    assert {"web", "web-baseline", "web-ceiling"} <= set(sites)
    for name, site in sites.items():
        allowed = [
            ipaddress.ip_network(entry, strict=False)
            for entry in site["environment"]["METRICS_ALLOWED_IPS"].split(",")
        ]
        assert all(network.is_private for network in allowed), name
        assert all(any(address in network for network in allowed) for address in containers), name
