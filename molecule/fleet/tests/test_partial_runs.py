"""Partial runs leave the fleet whole (issue 22): a run that reaches only some hosts (--limit,
llmops_target_hosts) keeps every host's servers in the gateway and its targets in Prometheus, because
both come from the inventory, not from what the hosts of the run publish. Before, `site.yml --limit
<gpu3>,<ops>` rewrote the gateway from gpu3 alone and a load running meanwhile got 404s.

Runs after test_gateway.py and test_monitoring.py (file order), on the converged fleet they leave."""

import json
import re
import subprocess
import time
import urllib.parse

from llmops_gateway import PACED_LOAD, PACED_LOAD_MAX_GAP_S, TEST_GATEWAY_KEY, Gateway, Load
from llmops_testlib import recap, run_playbook

OPS = "llmops-fleet-ops"
ONE_GPU_HOST = "llmops-fleet-gpu3"

testinfra_hosts = [OPS]


def docker_address(name):
    out = subprocess.check_output(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name], text=True)
    return json.loads(out)["llmops-test"]["IPAddress"]


def prometheus_targets(host):
    """(job, host, vllm_instance) of every active Prometheus target, read on the monitoring host."""
    url = "http://127.0.0.1:9090/api/v1/targets?" + urllib.parse.urlencode({"state": "active"})
    body = json.loads(host.check_output("curl -fsS %s", url))
    return sorted((t["labels"]["job"], t["labels"].get("host", ""), t["labels"].get("vllm_instance", ""))
                  for t in body["data"]["activeTargets"])


def fleet_view(host, gateway):
    """What a partial run must leave as it is: the gateway's servers, its /v1/models, Prometheus's targets
    and the two configuration files they come from."""
    status, models = gateway.call("/v1/models")
    assert status == 200, models
    return {"servers": sorted(gateway.servers()), "models": models, "targets": prometheus_targets(host),
            "haproxy.cfg": host.file("/etc/haproxy/haproxy.cfg").sha256sum,
            "prometheus.yml": host.file("/etc/prometheus/prometheus.yml").sha256sum}


def test_a_limited_site_run_under_load_keeps_every_backend_and_target(host):
    gateway = Gateway(docker_address(OPS))
    for backend, server in gateway.servers():
        gateway.wait_status(backend, server, "UP", 120)
    before = fleet_view(host, gateway)
    hosts = set(s.split(":")[0] for _, s in before["servers"])
    assert hosts == {"llmops-fleet-gpu1", "llmops-fleet-gpu2", "llmops-fleet-gpu3"}, before["servers"]
    assert set(h for job, h, _ in before["targets"] if job == "vllm") == hosts, before["targets"]
    models = [m["id"] for m in before["models"]["data"]]

    started = time.monotonic()
    # every reply read to its end: finish_reason and usage (streams with include_usage), checked by the load
    load = Load(gateway.base_url, TEST_GATEWAY_KEY, models, max_tokens=16, **PACED_LOAD).start()
    result = run_playbook("site.yml", extra_args=["--limit", "%s,%s" % (ONE_GPU_HOST, OPS)])
    # a few seconds more of load on the gateway as the run left it
    time.sleep(5)
    summary = load.wait(stop=True)
    print("site.yml --limit %s,%s under load: %s; %.0f s" % (ONE_GPU_HOST, OPS, summary, time.monotonic() - started))

    assert result.returncode == 0, result.output[-4000:]
    for other in ("llmops-fleet-gpu1", "llmops-fleet-gpu2"):
        assert not re.search(r"^%s\s+:" % other, result.output, re.M), "%s was in the run" % other
    assert recap(result.output, OPS)["changed"] == 0, result.output[-4000:]
    assert fleet_view(host, gateway) == before
    assert summary["failed"] == 0, summary["failures"]
    assert summary["ok"] > 0
    assert summary["max_gap_s"] <= PACED_LOAD_MAX_GAP_S, summary
    # every model answered during the run, not only the one of the limited host
    answered = set(model for _, _, ok, model, _ in load.events if ok)
    assert answered == set(models), answered


def test_playbooks_run_for_one_target_host_keep_the_others(host):
    """llmops_target_hosts naming one host: the gateway and Prometheus still list every host."""
    gateway = Gateway(docker_address(OPS))
    before = fleet_view(host, gateway)
    for playbook in ("playbooks/gateway.yml", "playbooks/monitoring.yml"):
        result = run_playbook(playbook, {"llmops_target_hosts": ONE_GPU_HOST})
        assert result.returncode == 0, result.output[-4000:]
        assert recap(result.output, OPS)["changed"] == 0, result.output[-4000:]
    assert fleet_view(host, gateway) == before
