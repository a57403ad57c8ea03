"""The fleet seen through Prometheus on the monitoring host (playbooks/monitoring.yml): every vLLM
instance of every GPU host is scraped, test traffic shows in the token counters, the "instance
down" alert fires when a server is killed and resolves when it is back, and a broken rule file
from the inventory is refused while the running rules stay.

The fleet inventory shortens the alert durations (monitoring_alert_instance_down_for: 15s,
monitoring_prometheus_scrape_interval / _evaluation_interval: 5s) so that this takes seconds, and
lets the node exporter report the test hosts' overlay root file system
(monitoring_node_exporter_args), which it leaves out by default.
"""

import json
import os
import subprocess
import time
import urllib.parse

import pytest

from llmops_testlib import TEST_API_KEY, run_playbook

# Every test runs on the monitoring host(s); the GPU hosts are reached through Docker.
testinfra_hosts = ["ansible://monitoring"]

PROMETHEUS = "http://127.0.0.1:9090"


def wait_for(predicate, timeout, interval=2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def api(host, path, **params):
    """GET Prometheus's HTTP API on the monitoring host; the decoded "data"."""
    url = PROMETHEUS + path + ("?" + urllib.parse.urlencode(params) if params else "")
    out = host.check_output("curl -fsS %s", url)
    body = json.loads(out)
    assert body["status"] == "success", body
    return body["data"]


def query(host, promql):
    return api(host, "/api/v1/query", query=promql)["result"]


def gpu_hosts(host):
    return sorted(host.ansible.get_variables()["groups"]["gpu_hosts"])


def docker_on(gpu, *args):
    """docker inside a GPU host container (each host runs its own daemon)."""
    return subprocess.run(["docker", "exec", gpu, "docker"] + list(args), capture_output=True, text=True, check=True).stdout


def running_instances():
    """(host, container) of every vLLM container the vllm_server role runs on each GPU host."""
    found = set()
    for gpu in GPU_HOSTS:
        names = docker_on(gpu, "ps", "--filter", "label=org.llmops.vllm.instance", "--format", "{{.Names}}").split()
        found.update((gpu, name) for name in names)
    return found


GPU_HOSTS = []


@pytest.fixture(autouse=True)
def _gpu_hosts(host):
    GPU_HOSTS[:] = gpu_hosts(host)


def test_prometheus_runs_the_checked_configuration(host):
    assert host.service("prometheus").is_running
    assert host.service("prometheus").is_enabled
    check = host.run("promtool check config /etc/prometheus/prometheus.yml")
    assert check.rc == 0, check.stdout + check.stderr
    groups = [g["name"] for g in api(host, "/api/v1/rules")["groups"]]
    assert "llmops-vllm" in groups


def test_every_vllm_instance_is_scraped_with_host_instance_and_model_labels(host):
    expected = running_instances()
    assert expected, "no vLLM containers on %s" % GPU_HOSTS

    def scraped():
        series = query(host, "vllm:num_requests_running")
        return set((s["metric"]["host"], s["metric"]["vllm_instance"]) for s in series) == expected and series

    series = wait_for(scraped, 90)
    assert series, "vllm:num_requests_running by (host, vllm_instance): %s, containers: %s" % (
        query(host, "vllm:num_requests_running"), expected)
    for s in series:
        # vLLM's own label and the target's: the served model name both times
        assert s["metric"]["model_name"] == s["metric"]["model"]
    targets = [t for t in api(host, "/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "vllm"]
    assert len(targets) == len(expected) and all(t["health"] == "up" for t in targets), targets


def test_every_target_is_up_through_the_fleet_firewall_and_the_gateway_password(host):
    """Prometheus reaches every exporter through the fleet_firewall tables that keep others out, HAProxy's
    exporter with gateway_stats_password, and the registry cache's debug server on its host's loopback."""
    def all_up():
        targets = api(host, "/api/v1/targets")["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, 60)
    assert targets, [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"])
                     for t in api(host, "/api/v1/targets")["activeTargets"]]
    jobs = set(t["labels"]["job"] for t in targets)
    assert {"prometheus", "vllm", "node", "haproxy", "registry_cache"} <= jobs, jobs
    (registry,) = [t for t in targets if t["labels"]["job"] == "registry_cache"]
    assert registry["scrapeUrl"] == "http://127.0.0.1:5001/metrics"


def test_every_host_has_a_node_exporter_and_no_cpu_only_host_a_dcgm_exporter(host):
    up = dict((s["metric"]["host"], s["value"][1]) for s in query(host, 'up{job="node"}'))
    for name in GPU_HOSTS + [host.backend.get_hostname()]:
        assert up.get(name) == "1", up
    # the fleet's GPU hosts are CPU-only stand-ins (llmops_cpu_only): no DCGM exporter, no target
    assert query(host, 'up{job="dcgm"}') == []
    for gpu in GPU_HOSTS:
        assert "dcgm-exporter" not in docker_on(gpu, "ps", "-a", "--format", "{{.Names}}").split()


def test_the_disk_holding_the_vllm_data_is_watched_on_every_gpu_host(host):
    # the left side of VllmDataDiskFilling, as Prometheus loaded it
    (rule,) = [r for g in api(host, "/api/v1/rules")["groups"] for r in g["rules"] if r["name"] == "VllmDataDiskFilling"]
    ratio = rule["query"].rsplit("<", 1)[0]
    series = wait_for(lambda: query(host, ratio), 30)
    assert set(s["metric"]["host"] for s in series) == set(GPU_HOSTS), series
    for s in series:
        assert "/data/vllm" in s["metric"]["paths"].split(",")
        assert 0 < float(s["value"][1]) <= 1


def test_generated_tokens_count_after_test_traffic(host):
    series = query(host, 'up{job="vllm"}')
    assert series
    for s in series:
        labels = s["metric"]
        body = json.dumps({"model": labels["model"], "max_tokens": 8,
                           "messages": [{"role": "user", "content": "Say hello"}]})
        reply = host.run("curl -fsS -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d %s http://%s/v1/chat/completions",
                         TEST_API_KEY, body, labels["instance"])
        assert reply.rc == 0, reply.stderr
    for s in series:
        selector = '{host="%s", vllm_instance="%s"}' % (s["metric"]["host"], s["metric"]["vllm_instance"])

        def counted():
            result = query(host, "vllm:generation_tokens_total" + selector)
            return result and float(result[0]["value"][1]) > 0

        assert wait_for(counted, 60), query(host, "vllm:generation_tokens_total" + selector)


def alerts(monitor, name, **labels):
    """The alerts of that name whose labels include these (pending or firing)."""
    return [a for a in api(monitor, "/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name and all(a["labels"].get(k) == v for k, v in labels.items())]


def test_instance_down_fires_after_a_kill_and_resolves_when_it_is_back(host):
    gpu = GPU_HOSTS[0]
    name = sorted(n for h, n in running_instances() if h == gpu)[0]
    assert not alerts(host, "VllmInstanceDown", host=gpu, vllm_instance=name)
    docker_on(gpu, "kill", name)
    try:
        firing = wait_for(lambda: [a for a in alerts(host, "VllmInstanceDown", host=gpu, vllm_instance=name)
                                   if a["state"] == "firing"], 120)
        assert firing, api(host, "/api/v1/alerts")
        assert firing[0]["labels"]["severity"] == "critical" and firing[0]["labels"]["model"]
    finally:
        # `docker kill` counts as a stop made by hand, which the restart policy respects
        docker_on(gpu, "start", name)
    resolved = wait_for(lambda: not alerts(host, "VllmInstanceDown", host=gpu, vllm_instance=name), 600, interval=5)
    assert resolved, alerts(host, "VllmInstanceDown", host=gpu, vllm_instance=name)
    up = query(host, 'up{job="vllm", host="%s", vllm_instance="%s"}' % (gpu, name))
    assert up and up[0]["value"][1] == "1"


def test_a_broken_rule_file_is_refused_and_the_running_rules_stay(host, tmp_path):
    before = host.file("/etc/prometheus/rules.d/llmops-vllm-alerts.yml").sha256sum
    broken = tmp_path / "team-rules.yml"
    broken.write_text("groups:\n  - name: team\n    rules:\n      - alert: Broken\n        expr: up{job=\"vllm\" == 0\n")
    result = run_playbook(os.path.join("playbooks", "monitoring.yml"), extra_vars={"monitoring_rule_files": [str(broken)]})
    assert result.returncode != 0, result.output[-3000:]
    assert "promtool check rules" in result.output or "failed to validate" in result.output, result.output[-3000:]
    assert not host.file("/etc/prometheus/rules.d/team-rules.yml").exists
    assert host.file("/etc/prometheus/rules.d/llmops-vllm-alerts.yml").sha256sum == before
    assert host.service("prometheus").is_running
    assert "llmops-vllm" in [g["name"] for g in api(host, "/api/v1/rules")["groups"]]


@pytest.mark.parametrize("variables, message", [
    ({"monitoring_alert_instance_down_for": "5 minutes"},
     "monitoring_alert_instance_down_for must be a Prometheus duration such as 30s, 5m or 1h30m, not 5 minutes."),
    ({"monitoring_alert_kv_cache_usage": 90}, "monitoring_alert_kv_cache_usage must be a number from 0 to 1, not 90."),
])
def test_wrong_thresholds_stop_the_run_before_any_host_changes(host, variables, message):
    before = host.file("/etc/prometheus/rules.d/llmops-vllm-alerts.yml").sha256sum
    result = run_playbook(os.path.join("playbooks", "monitoring.yml"), extra_vars=variables)
    assert result.returncode != 0
    assert message in " ".join(result.output.split()), result.output[-3000:]
    assert "Run the exporters on every watched host" not in result.output
    assert host.file("/etc/prometheus/rules.d/llmops-vllm-alerts.yml").sha256sum == before
