"""What the monitoring role writes, rendered by Ansible's own templating from its defaults: the
alert rules (checked with promtool, the one of Debian 12's prometheus package that the role
installs), Prometheus's configuration, Grafana's provisioning files and dashboards. Every query
must name only metrics that exist: vLLM's as recorded from the real 0.32.0 server
(fixtures/vllm_metrics/0.32.0.txt), the exporters' from their documentation
(fixtures/exporter_metrics.yml)."""

import json
import os
import re
import subprocess

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from ansible_collections.llmops.vllm.plugins.filter.monitoring import (
    monitoring_grafana_dashboard, monitoring_scrape_configs)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROLE = os.path.join(ROOT, "roles", "monitoring")
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures")
VLLM_VERSION = "0.32.0"


def vllm_metric_names():
    """Every sample name vLLM's /metrics printed (histograms with _bucket, _sum, _count)."""
    names = set()
    with open(os.path.join(FIXTURES, "vllm_metrics", VLLM_VERSION + ".txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def known_metrics():
    with open(os.path.join(FIXTURES, "exporter_metrics.yml")) as f:
        exporters = yaml.safe_load(f)
    return vllm_metric_names() | set(name for names in exporters.values() for name in names)


PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
                "inf", "nan"}


def metric_names(expr):
    """The metric names a PromQL expression selects (functions, labels, strings and ranges left out)."""
    text = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = re.findall(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", text)
    return {n for n in names if n not in PROMQL_WORDS}


def test_the_metric_name_reader_finds_what_a_query_selects():
    expr = ('histogram_quantile(0.95, sum by (le, host) (rate(vllm:time_to_first_token_seconds_bucket'
            '{model_name=~"$model_name"}[$__rate_interval]))) > 2 and on (instance) up{job="vllm"} == 1')
    assert metric_names(expr) == {"vllm:time_to_first_token_seconds_bucket", "up"}


def role_variables(**overrides):
    loader = DataLoader()
    variables = {}
    for name in ("defaults/main.yml", "vars/main.yml"):
        variables.update(loader.load_from_file(os.path.join(ROLE, name), trusted_as_template=True))
    variables.update(ansible_managed="Ansible managed", inventory_hostname="ops", role_path=ROLE)
    variables.update(overrides)
    return loader, variables


def render_template(name, **overrides):
    loader, variables = role_variables(**overrides)
    with open(os.path.join(ROLE, "templates", name)) as f:
        text = f.read()
    return Templar(loader=loader, variables=variables).template(trust_as_template(text))


def promtool():
    path = subprocess.run([os.path.join(ROOT, "tests", "tooling", "promtool")], capture_output=True, text=True)
    assert path.returncode == 0, "tests/tooling/promtool could not provide promtool: %s" % path.stderr
    return path.stdout.strip()


def check_rules(tmp_path, text):
    rules = tmp_path / "rules.yml"
    rules.write_text(text)
    return subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)


def alert_rules(**overrides):
    data = yaml.safe_load(render_template("llmops-vllm-alerts.yml.j2", **overrides))
    return dict((r["alert"], r) for g in data["groups"] for r in g["rules"])


def test_the_shipped_rules_pass_promtool(tmp_path):
    result = check_rules(tmp_path, render_template("llmops-vllm-alerts.yml.j2"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path):
    broken = "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: up{job=\"vllm\" == 0\n"
    assert check_rules(tmp_path, broken).returncode != 0


def test_the_issue_s_alerts_are_all_there_with_their_durations():
    rules = alert_rules()
    assert set(rules) >= {"VllmInstanceDown", "VllmModelWithoutHealthyBackend", "VllmKvCacheAlmostFull",
                          "VllmRequestsWaiting", "VllmTimeToFirstTokenHigh", "GpuXidError", "VllmDataDiskFilling"}
    assert rules["VllmInstanceDown"]["for"] == "2m"
    assert rules["VllmKvCacheAlmostFull"]["expr"] == "vllm:kv_cache_usage_perc > 0.9"


def test_thresholds_and_durations_are_variables(tmp_path):
    rules = alert_rules(monitoring_alert_instance_down_for="15s", monitoring_alert_kv_cache_usage=0.75,
                        monitoring_alert_ttft_p95_seconds=0.5, monitoring_alert_ttft_window="2m",
                        monitoring_alert_disk_free_ratio=0.2, monitoring_alert_requests_waiting=3)
    assert rules["VllmInstanceDown"]["for"] == "15s"
    assert rules["VllmKvCacheAlmostFull"]["expr"].endswith("> 0.75")
    assert rules["VllmTimeToFirstTokenHigh"]["expr"].endswith("> 0.5")
    assert "[2m]" in rules["VllmTimeToFirstTokenHigh"]["expr"]
    assert rules["VllmDataDiskFilling"]["expr"].endswith("< 0.2")
    assert rules["VllmRequestsWaiting"]["expr"] == "vllm:num_requests_waiting > 3"


def test_prometheus_templates_in_annotations_reach_prometheus_untouched():
    summary = alert_rules()["VllmInstanceDown"]["annotations"]["summary"]
    assert summary == "vLLM instance {{ $labels.vllm_instance }} on {{ $labels.host }} ({{ $labels.model }}) is down"


def test_rules_name_only_metrics_that_exist():
    known = known_metrics()
    for name, rule in alert_rules().items():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, "%s names metrics vLLM %s or the exporters do not export: %s" % (name, VLLM_VERSION, unknown)


def test_the_alerts_label_sets_let_a_person_filter():
    # the "instance down" rule keeps the target labels: host, vllm_instance and model
    assert "by" not in alert_rules()["VllmInstanceDown"]["expr"]
    assert "host" in alert_rules()["VllmTimeToFirstTokenHigh"]["expr"]


def dashboards():
    found = {}
    for name in sorted(os.listdir(os.path.join(ROLE, "files", "dashboards"))):
        with open(os.path.join(ROLE, "files", "dashboards", name)) as f:
            spec = yaml.safe_load(f)
        _, variables = role_variables()
        model = monitoring_grafana_dashboard(spec, variables["_monitoring_grafana_datasource_uid"])
        # what the role writes (to_nice_json) parses back as the same dashboard
        found[name] = json.loads(json.dumps(model, indent=2))
    return found


def test_dashboards_render_to_grafana_json_with_unique_uids():
    boards = dashboards()
    assert set(boards) == {"vllm.yml", "fleet-overview.yml"}
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_dashboard_queries_name_only_metrics_that_exist():
    known = known_metrics()
    for name, board in dashboards().items():
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        exprs += [v["query"]["query"] for v in board["templating"]["list"]]
        assert exprs
        for expr in exprs:
            inner = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr)
            unknown = metric_names(inner) - known
            assert not unknown, "%s: %s names unknown metrics %s" % (name, expr, unknown)


def test_the_fleet_overview_has_one_row_per_host():
    board = dashboards()["fleet-overview.yml"]
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert len(rows) == 1 and rows[0]["repeat"] == "host"
    assert board["templating"]["list"][0]["name"] == "host"


def test_the_vllm_dashboard_filters_every_query_by_host_instance_and_model():
    board = dashboards()["vllm.yml"]
    for panel in board["panels"]:
        for target in panel["targets"]:
            for variable in ("$host", "$vllm_instance", "$model_name"):
                assert variable in target["expr"], (panel["title"], target["expr"])


def test_grafana_provisioning_files():
    source = yaml.safe_load(render_template("grafana-datasource.yml.j2"))
    (ds,) = source["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://127.0.0.1:9090" and ds["uid"] == "llmops-prometheus"
    for board in dashboards().values():
        uids = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
        assert uids == {ds["uid"]}
    provider = yaml.safe_load(render_template("grafana-dashboards.yml.j2"))
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/llmops"
    assert provider["providers"][0]["type"] == "file"


def test_prometheus_configuration_passes_promtool(tmp_path):
    """The configuration the role writes, with the fleet scenario's targets, as promtool checks it at deploy time."""
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    (rules_dir / "llmops-vllm-alerts.yml").write_text(render_template("llmops-vllm-alerts.yml.j2"))
    with open(os.path.join(ROOT, "roles", "vllm_server", "defaults", "main.yml")) as f:
        vllm_defaults = yaml.safe_load(f)
    hostvars = {"gpu1": {"vllm_server_instances": [{"name": "a", "model": "m", "port": 8000},
                                                    {"name": "b", "model": "m", "port": 8001}]},
                "gpu2": {"llmops_cpu_only": True}, "ops": {"gateway_stats_password": "stats-password-0123456789"}}
    scrape = monitoring_scrape_configs(hostvars, {
        "vllm_hosts": ["gpu1", "gpu2"], "node_hosts": ["gpu1", "gpu2", "ops"], "gateway_hosts": ["ops"],
        "registry_cache_hosts": ["ops"], "vllm_defaults": vllm_defaults, "node_exporter_port": 9100,
        "dcgm_exporter": True, "dcgm_exporter_port": 9400, "gateway_stats_port": 8404,
        "registry_cache_metrics_port": 5001, "prometheus_port": 9090, "prometheus_host": "ops",
        "gateway_stats_user": "llmops-stats"})
    config = {"global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
              "rule_files": [str(rules_dir / "*.yml")], "scrape_configs": scrape}
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool(), "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout
    assert [c["job_name"] for c in scrape] == ["prometheus", "vllm", "node", "dcgm", "haproxy", "registry_cache"]
    # HAProxy's exporter behind the statistics password; the registry cache's debug server on this host's loopback
    haproxy = [c for c in scrape if c["job_name"] == "haproxy"][0]
    assert haproxy["basic_auth"] == {"username": "llmops-stats", "password": "stats-password-0123456789"}
    registry = [c for c in scrape if c["job_name"] == "registry_cache"][0]
    assert registry["static_configs"][0]["targets"] == ["127.0.0.1:5001"]


# Rendered in a fresh interpreter whose collection loader finds llmops.vllm's filters, as in
# ansible-playbook (this process imported the collection as a plain package already).
_RENDER = """
import json, os, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([os.path.join(sys.argv[1], "collections")])
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
loader = DataLoader()
variables = {}
for name in ("defaults/main.yml", "vars/main.yml"):
    variables.update(loader.load_from_file(os.path.join(sys.argv[1], "roles", "monitoring", name), trusted_as_template=True))
variables.update(json.loads(sys.argv[3]), role_path=os.path.join(sys.argv[1], "roles", "monitoring"))
print(json.dumps(Templar(loader=loader, variables=variables).template(variables[sys.argv[2]])))
"""


@pytest.fixture(scope="module")
def collection_templar():
    import sys

    def render(name, **overrides):
        result = subprocess.run([sys.executable, "-c", _RENDER, ROOT, name, json.dumps(overrides)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return render


def test_the_dcgm_exporter_task_gets_nvidias_container(collection_templar):
    """What tasks/dcgm-exporter.yml passes to docker_container, rendered from the role's defaults.
    No GPU and no nvcr.io here: the container itself never runs in these tests."""
    c = collection_templar("_monitoring_dcgm_container")
    assert c["image"] == "nvcr.io/nvidia/k8s/dcgm-exporter:4.4.2-4.7.1-ubuntu22.04"
    assert c["device_requests"] == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    assert c["capabilities"] == ["SYS_ADMIN"] and c["published_ports"] == ["0.0.0.0:9400:9400"]
    assert c["env"] == {"DCGM_EXPORTER_LISTEN": ":9400"} and c["command"] == []
    c = collection_templar("_monitoring_dcgm_container", monitoring_dcgm_exporter_port=9401,
                           monitoring_dcgm_exporter_counters="/etc/dcgm-exporter/dcp-metrics-included.csv")
    assert c["published_ports"] == ["0.0.0.0:9401:9401"]
    assert c["command"] == ["-f", "/etc/dcgm-exporter/dcp-metrics-included.csv"]


@pytest.mark.parametrize("cpu_only, enabled, wanted", [(False, True, True), (True, True, False), (False, False, False)])
def test_the_dcgm_exporter_is_skipped_on_cpu_only_hosts(collection_templar, cpu_only, enabled, wanted):
    assert collection_templar("_monitoring_dcgm_wanted", llmops_cpu_only=cpu_only,
                              monitoring_dcgm_exporter_enabled=enabled) is wanted


def test_prometheus_flags(collection_templar):
    args = collection_templar("_monitoring_prometheus_args", monitoring_prometheus_retention="30d").split()
    assert args == ["--web.listen-address=0.0.0.0:9090", "--storage.tsdb.retention.time=30d"]
