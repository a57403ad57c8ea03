"""The monitoring role's filters: scrape targets read from a fleet's host variables, the DCGM
exporter's container, and dashboards built from their specs."""

import os

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.monitoring import (
    monitoring_dcgm_exporter_container, monitoring_grafana_dashboard, monitoring_scrape_configs,
    monitoring_unscrapable_instances, monitoring_unscraped_registry_caches, monitoring_vllm_instances)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
with open(os.path.join(ROOT, "roles", "vllm_server", "defaults", "main.yml")) as f:
    VLLM_DEFAULTS = yaml.safe_load(f)

# The fleet scenario's shape: gpu1 serves two instances, gpu2 one through the single-instance
# variables, gpu3 is CPU-only and leaves everything at vllm_server's defaults; ops holds the gateway,
# the registry cache and Prometheus.
HOSTVARS = {
    "gpu1": {"vllm_server_instances": [
        {"name": "chat-a", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8000},
        {"name": "chat-b", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat-b", "port": "8001"}]},
    "gpu2": {"vllm_server_model": "llmops-test/tiny-chat", "vllm_server_served_model_name": "tiny-chat-b",
             "ansible_host": "10.0.0.2"},
    "gpu3": {"llmops_cpu_only": "true", "monitoring_scrape_address": "gpu3.internal"},
    "ops": {"gateway_stats_port": 9000},
}
SETTINGS = {"vllm_hosts": ["gpu1", "gpu2", "gpu3"], "node_hosts": ["gpu1", "gpu2", "gpu3", "ops", "gpu1"],
            "gateway_hosts": ["ops"], "registry_cache_hosts": ["ops"], "vllm_defaults": VLLM_DEFAULTS,
            "node_exporter_port": 9100, "dcgm_exporter": True, "dcgm_exporter_port": 9400,
            "gateway_stats_port": 8404, "registry_cache_metrics_port": 5001, "prometheus_port": 9090,
            "prometheus_host": "ops"}


def jobs(hostvars=HOSTVARS, **settings):
    configs = monitoring_scrape_configs(hostvars, dict(SETTINGS, **settings))
    return dict((c["job_name"], c) for c in configs)


def targets(job):
    return [(s["targets"][0], s["labels"]) for s in job["static_configs"]]


def test_every_vllm_instance_is_a_target_labelled_by_host_instance_and_model():
    assert targets(jobs()["vllm"]) == [
        ("gpu1:8000", {"host": "gpu1", "vllm_instance": "chat-a", "model": "tiny-chat"}),
        ("gpu1:8001", {"host": "gpu1", "vllm_instance": "chat-b", "model": "tiny-chat-b"}),
        ("10.0.0.2:8000", {"host": "gpu2", "vllm_instance": "vllm", "model": "tiny-chat-b"}),
        # vllm_server's defaults: container vllm, port 8000, the model id as served name
        ("gpu3.internal:8000", {"host": "gpu3", "vllm_instance": "vllm", "model": VLLM_DEFAULTS["vllm_server_model"]}),
    ]
    assert jobs()["vllm"]["metrics_path"] == "/metrics"
    # vLLM 0.32.0 serves /metrics without the API key (checked against the real server): no credentials
    assert "authorization" not in jobs()["vllm"]


def test_node_exporters_once_per_host_and_dcgm_only_where_there_are_gpus():
    assert [t for t, _ in targets(jobs()["node"])] == ["gpu1:9100", "10.0.0.2:9100", "gpu3.internal:9100", "ops:9100"]
    assert targets(jobs()["dcgm"]) == [("gpu1:9400", {"host": "gpu1"}), ("10.0.0.2:9400", {"host": "gpu2"})]
    assert "dcgm" not in jobs(dcgm_exporter=False)


def test_gateway_and_registry_cache_ports_come_from_their_hosts_or_the_defaults():
    assert targets(jobs()["haproxy"]) == [("ops:9000", {"host": "ops"})]
    # the debug server on loopback (registry_cache_metrics_bind_address's default): Prometheus on the same host
    assert targets(jobs()["registry_cache"]) == [("127.0.0.1:5001", {"host": "ops"})]
    hostvars = dict(HOSTVARS, ops={"registry_cache_metrics_port": 5002, "registry_cache_metrics_bind_address": "10.0.0.9"})
    assert targets(jobs(hostvars)["haproxy"]) == [("ops:8404", {"host": "ops"})]
    assert targets(jobs(hostvars)["registry_cache"]) == [("ops:5002", {"host": "ops"})]
    # the registry cache role turns its metrics off with port 0
    assert "registry_cache" not in jobs(dict(HOSTVARS, ops={"registry_cache_metrics_port": 0}))


def test_a_registry_cache_debug_server_on_loopback_of_another_host_is_not_scraped_but_named():
    hostvars = dict(HOSTVARS, cache={})
    assert "registry_cache" not in jobs(hostvars, registry_cache_hosts=["cache"])
    assert monitoring_unscraped_registry_caches(hostvars, ["cache", "ops"], "ops") == ["cache"]
    opened = dict(HOSTVARS, cache={"registry_cache_metrics_bind_address": "0.0.0.0"})
    assert targets(jobs(opened, registry_cache_hosts=["cache"])["registry_cache"]) == [("cache:5001", {"host": "cache"})]
    assert monitoring_unscraped_registry_caches(opened, ["cache"], "ops") == []


def test_the_haproxy_job_carries_the_gateways_statistics_password():
    hostvars = dict(HOSTVARS, ops={"gateway_stats_password": "s3cret-stats-password", "gateway_stats_user": "stats"})
    job = jobs(hostvars)["haproxy"]
    assert job["basic_auth"] == {"username": "stats", "password": "s3cret-stats-password"}
    # the user from the gateway role's defaults where the host sets none
    hostvars = dict(HOSTVARS, ops={"gateway_stats_password": "s3cret-stats-password"})
    assert jobs(hostvars, gateway_stats_user="llmops-stats")["haproxy"]["basic_auth"]["username"] == "llmops-stats"
    # no password (no gateway of this role there): no credentials sent
    assert "basic_auth" not in jobs()["haproxy"]
    # one job, one credential
    two = dict(HOSTVARS, gw1={"gateway_stats_password": "a" * 16}, gw2={"gateway_stats_password": "b" * 16})
    with pytest.raises(AnsibleFilterError, match="gw1, gw2 do not share gateway_stats_user and gateway_stats_password"):
        jobs(two, gateway_hosts=["gw1", "gw2"])


def test_empty_groups_leave_their_jobs_out():
    names = list(jobs(gateway_hosts=[], registry_cache_hosts=[], vllm_hosts=[], node_hosts=[]))
    assert names == ["prometheus"]


def test_loopback_only_instances_are_not_scraped_but_named():
    hostvars = dict(HOSTVARS, gpu2={"vllm_server_bind_address": "127.0.0.1"})
    assert "gpu2" not in [labels["host"] for _, labels in targets(jobs(hostvars)["vllm"])]
    assert monitoring_unscrapable_instances(hostvars, ["gpu1", "gpu2"], VLLM_DEFAULTS) == ["gpu2/vllm"]
    assert monitoring_unscrapable_instances(HOSTVARS, ["gpu1", "gpu2"], VLLM_DEFAULTS) == []


def test_ipv6_addresses_are_bracketed():
    hostvars = dict(HOSTVARS, gpu2={"ansible_host": "fd00::2"})
    assert ("[fd00::2]:8000") in [t for t, _ in targets(jobs(hostvars)["vllm"])]


def test_the_first_of_several_served_names_is_the_model_label():
    hostvars = {"h": {"vllm_server_instances": [{"name": "a", "model": "m", "served_model_name": ["x", "y"]}]}}
    assert monitoring_vllm_instances(hostvars, ["h"], VLLM_DEFAULTS)[0]["model"] == "x"


def test_a_host_missing_from_the_inventory_or_bad_instances_are_named():
    with pytest.raises(AnsibleFilterError, match="nothere"):
        monitoring_vllm_instances(HOSTVARS, ["nothere"], VLLM_DEFAULTS)
    with pytest.raises(AnsibleFilterError, match="^bad: vllm_server_instances"):
        monitoring_vllm_instances({"bad": {"vllm_server_instances": "x"}}, ["bad"], VLLM_DEFAULTS)


DCGM = {"name": "dcgm-exporter", "image": "nvcr.io/nvidia/k8s/dcgm-exporter:4.4.2-4.7.1-ubuntu22.04", "port": 9400,
        "bind_address": "0.0.0.0", "counters": "", "extra_args": [], "restart_policy": "unless-stopped"}


def test_dcgm_exporter_runs_as_nvidias_docs_run_it():
    # docker run -d --gpus all --cap-add SYS_ADMIN -p 9400:9400 nvcr.io/nvidia/k8s/dcgm-exporter:<tag>
    c = monitoring_dcgm_exporter_container(DCGM)
    assert c["image"] == DCGM["image"]
    assert c["device_requests"] == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    assert c["capabilities"] == ["SYS_ADMIN"]
    assert c["published_ports"] == ["0.0.0.0:9400:9400"]
    assert c["env"] == {"DCGM_EXPORTER_LISTEN": ":9400"}
    assert c["command"] == [] and c["restart_policy"] == "unless-stopped"


def test_dcgm_exporter_port_counters_and_address():
    c = monitoring_dcgm_exporter_container(dict(DCGM, port=9500, bind_address="::1",
                                                counters="/etc/dcgm-exporter/dcp-metrics-included.csv",
                                                extra_args=["-c", 5000]))
    assert c["published_ports"] == ["[::1]:9500:9500"] and c["env"]["DCGM_EXPORTER_LISTEN"] == ":9500"
    assert c["command"] == ["-f", "/etc/dcgm-exporter/dcp-metrics-included.csv", "-c", "5000"]


@pytest.mark.parametrize("image", ["nvcr.io/nvidia/k8s/dcgm-exporter:latest", "nvcr.io/nvidia/k8s/dcgm-exporter"])
def test_dcgm_exporter_image_must_be_pinned(image):
    with pytest.raises(AnsibleFilterError, match="monitoring_dcgm_exporter_image"):
        monitoring_dcgm_exporter_container(dict(DCGM, image=image))


def test_dashboard_layout_rows_and_targets():
    spec = {"uid": "u", "title": "T", "variables": [{"name": "host", "query": "label_values(up, host)"}],
            "rows": [{"title": "$host", "repeat": "host", "panels": [
                {"title": "a", "width": 6, "targets": [{"expr": "up", "legend": "x"}]},
                {"title": "b", "width": 12, "targets": [{"expr": "up"}, {"expr": "up"}]},
                {"title": "c", "width": 12, "type": "heatmap", "targets": [{"expr": "up"}]}]}]}
    d = monitoring_grafana_dashboard(spec, "ds")
    row, a, b, c = d["panels"]
    assert row["type"] == "row" and row["repeat"] == "host" and row["gridPos"]["y"] == 0
    assert [p["gridPos"] for p in (a, b, c)] == [{"h": 8, "w": 6, "x": 0, "y": 1}, {"h": 8, "w": 12, "x": 6, "y": 1},
                                                 {"h": 8, "w": 12, "x": 0, "y": 9}]
    assert [t["refId"] for t in b["targets"]] == ["A", "B"]
    assert c["targets"][0]["format"] == "heatmap"
    assert {p["datasource"]["uid"] for p in d["panels"] if p["type"] != "row"} == {"ds"}
    assert d["templating"]["list"][0]["query"]["query"] == "label_values(up, host)"
    assert len({p["id"] for p in d["panels"]}) == 4
    with pytest.raises(AnsibleFilterError):
        monitoring_grafana_dashboard({"title": "no uid"}, "ds")
