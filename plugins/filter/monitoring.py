# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Filters of the monitoring role: Prometheus scrape targets read from the inventory, the DCGM
# exporter's container, and Grafana dashboards built from a short panel list.

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_device_requests, vllm_inventory_instances
from ansible_collections.llmops.vllm.plugins.plugin_utils._role_defaults import role_default


def _vars_of(hostvars, host):
    try:
        return hostvars[host]
    except KeyError:
        raise AnsibleFilterError("%s is in a monitored group but not in the inventory" % host)


def _get(hv, name, default=None):
    """A variable of another host, or default where the inventory does not set it."""
    try:
        value = hv[name]
    except KeyError:
        return default
    # an undefined value (a host without facts) reads as missing
    if value is None or type(value).__name__.startswith("AnsibleUndefined"):
        return default
    return value


def _address(hv, host):
    """How Prometheus reaches a host: monitoring_scrape_address, else ansible_host, else its inventory name."""
    address = str(_get(hv, "monitoring_scrape_address") or _get(hv, "ansible_host") or host)
    return "[%s]" % address if ":" in address and not address.startswith("[") else address


def _cpu_only(hv):
    return boolean(_get(hv, "llmops_cpu_only", False), strict=False)


def monitoring_vllm_instances(hostvars, hosts, vllm_defaults=None):
    """Every vLLM instance the hosts serve as their inventory declares it (vllm_inventory_instances).

    Returns host, name, model (served name), port and whether the instance listens on loopback only.
    """
    found = []
    for i in vllm_inventory_instances(list(hosts or []), hostvars, vllm_defaults):
        served = i["served_model_name"]
        if isinstance(served, (list, tuple)):
            # vLLM labels its metrics with the first of several served names
            served = served[0] if served else i["model"]
        found.append({"host": i["host"], "name": i["name"], "model": str(served), "port": i["port"],
                      "loopback_only": i["loopback_only"]})
    return found


def _static(host, address, port, **labels):
    entry_labels = {"host": host}
    entry_labels.update((k, str(v)) for k, v in labels.items())
    return {"targets": ["%s:%s" % (address, port)], "labels": entry_labels}


def monitoring_scrape_configs(hostvars, settings):
    """Prometheus's scrape_configs for the fleet, read from the inventory.

    settings: vllm_hosts, node_hosts, gateway_hosts, registry_cache_hosts (host lists), vllm_defaults (vllm_server's
    defaults as data; its defaults file when left out),
    node_exporter_port, dcgm_exporter (bool), dcgm_exporter_port, gateway_stats_port, gateway_stats_user,
    registry_cache_metrics_port, registry_cache_metrics_bind_address (defaults where a host does not set its
    own), scrape_interval, prometheus_port, prometheus_host (the host this configuration is for). The haproxy job
    carries the gateway hosts' gateway_stats_user and gateway_stats_password as basic_auth; a registry cache whose
    debug server listens on loopback is scraped at 127.0.0.1 by a Prometheus on its own host and by no other.
    Every target carries the label host (the inventory name); vLLM targets also
    vllm_instance (the container) and model (the served model name, on `up` too).
    Instances that listen on loopback only are left out (no other host reaches them); see
    monitoring_unscrapable_instances.
    """
    s = dict(settings)
    jobs = []

    vllm = []
    for i in monitoring_vllm_instances(hostvars, s.get("vllm_hosts"), s.get("vllm_defaults")):
        if i["loopback_only"]:
            continue
        hv = _vars_of(hostvars, i["host"])
        vllm.append(_static(i["host"], _address(hv, i["host"]), i["port"], vllm_instance=i["name"], model=i["model"]))
    jobs.append(("vllm", "/metrics", vllm))

    node = [_static(h, _address(_vars_of(hostvars, h), h), s["node_exporter_port"]) for h in _unique(s.get("node_hosts"))]
    jobs.append(("node", "/metrics", node))

    if s.get("dcgm_exporter", True):
        dcgm = [_static(h, _address(_vars_of(hostvars, h), h), s["dcgm_exporter_port"])
                for h in s.get("vllm_hosts") or [] if not _cpu_only(_vars_of(hostvars, h))]
        jobs.append(("dcgm", "/metrics", dcgm))

    # HAProxy's exporter answers behind the statistics page's password (gateway_stats_user / _password):
    # one job, so one credential for every gateway host.
    haproxy = []
    credentials = {}
    for h in s.get("gateway_hosts") or []:
        hv = _vars_of(hostvars, h)
        haproxy.append(_static(h, _address(hv, h), _get(hv, "gateway_stats_port", s["gateway_stats_port"])))
        credentials[h] = (str(_get(hv, "gateway_stats_user", s.get("gateway_stats_user") or role_default("gateway_stats_user"))),
                          str(_get(hv, "gateway_stats_password", "") or ""))
    if len(set(credentials.values())) > 1:
        raise AnsibleFilterError("the gateway hosts %s do not share gateway_stats_user and gateway_stats_password: Prometheus "
                                 "scrapes them as one job, with one credential; give them the same"
                                 % ", ".join(sorted(credentials)))
    haproxy_auth = {}
    if credentials:
        user, password = list(credentials.values())[0]
        if password:
            haproxy_auth = {"basic_auth": {"username": user, "password": password}}
    jobs.append(("haproxy", "/metrics", haproxy, haproxy_auth))

    registry = []
    for h in s.get("registry_cache_hosts") or []:
        hv = _vars_of(hostvars, h)
        port = _get(hv, "registry_cache_metrics_port", s["registry_cache_metrics_port"])
        # 0: the registry cache role's way of turning its metrics off
        if not int(port):
            continue
        if _registry_metrics_on_loopback(hv, s):
            # Distribution's debug server on loopback: only a Prometheus on the same host reaches it
            if h == s["prometheus_host"]:
                registry.append(_static(h, "127.0.0.1", port))
            continue
        registry.append(_static(h, _address(hv, h), port))
    jobs.append(("registry_cache", "/metrics", registry, {}))

    configs = [{"job_name": "prometheus", "static_configs": [
        {"targets": ["127.0.0.1:%s" % s["prometheus_port"]], "labels": {"host": s["prometheus_host"]}}]}]
    for job in jobs:
        name, path, static = job[:3]
        extra = job[3] if len(job) > 3 else {}
        if static:
            config = {"job_name": name, "metrics_path": path}
            config.update(extra)
            config["static_configs"] = static
            configs.append(config)
    return configs


def _registry_metrics_on_loopback(hv, settings):
    bind = str(_get(hv, "registry_cache_metrics_bind_address", settings.get("registry_cache_metrics_bind_address")
                    or role_default("registry_cache_metrics_bind_address")))
    return bind.startswith("127.") or bind in ("::1", "[::1]", "localhost")


def monitoring_unscraped_registry_caches(hostvars, hosts, prometheus_host, settings=None):
    """Registry cache hosts whose metrics Prometheus on prometheus_host cannot reach: their debug server
    listens on loopback (registry_cache_metrics_bind_address) of another host."""
    s = dict(settings or {})
    found = []
    for h in hosts or []:
        hv = _vars_of(hostvars, h)
        port = _get(hv, "registry_cache_metrics_port", s["registry_cache_metrics_port"] if s.get("registry_cache_metrics_port") is not None
                    else role_default("registry_cache_metrics_port"))
        if int(port) and h != prometheus_host and _registry_metrics_on_loopback(hv, s):
            found.append(h)
    return found


def _unique(hosts):
    seen = []
    for h in hosts or []:
        if h not in seen:
            seen.append(h)
    return seen


def monitoring_unscrapable_instances(hostvars, hosts, vllm_defaults=None):
    """'host/instance' of each vLLM instance that listens on loopback only (Prometheus cannot reach it)."""
    return ["%s/%s" % (i["host"], i["name"]) for i in monitoring_vllm_instances(hostvars, hosts, vllm_defaults)
            if i["loopback_only"]]


def monitoring_dcgm_exporter_container(settings):
    """community.docker.docker_container arguments of NVIDIA's DCGM exporter, as NVIDIA's docs run it:
    all GPUs, SYS_ADMIN (DCGM's profiling metrics), the metrics port; the image's default counters file
    unless another one is named.

    settings: name, image, port, bind_address, counters (a path inside the image, or ''), restart_policy,
    extra_args (list), env (dict).
    """
    s = dict(settings)
    image = str(s["image"])
    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        raise AnsibleFilterError("the DCGM exporter image must name a pinned tag (monitoring_dcgm_exporter_image), not %s" % image)
    bind = str(s.get("bind_address") or "0.0.0.0")
    bind = "[%s]" % bind if ":" in bind else bind
    port = int(s["port"])
    command = ["-f", str(s["counters"])] if s.get("counters") else []
    command += [str(a) for a in s.get("extra_args") or []]
    # the exporter's own variable for its listen address (its -a flag)
    env = {"DCGM_EXPORTER_LISTEN": ":%d" % port}
    env.update((str(k), str(v)) for k, v in (s.get("env") or {}).items())
    return {
        "name": str(s["name"]),
        "image": image,
        "command": command,
        "env": env,
        "capabilities": ["SYS_ADMIN"],
        "device_requests": vllm_device_requests("all"),
        "published_ports": ["%s:%d:%d" % (bind, port, port)],
        "restart_policy": str(s.get("restart_policy") or "unless-stopped"),
        "labels": {"org.llmops.vllm.monitoring": "dcgm-exporter"},
    }


# ---- Grafana dashboards ----

_UNITS = {"s": "s", "percent": "percentunit", "tokens/s": "short", "requests": "short", "bytes": "bytes",
          "celsius": "celsius", "watt": "watt", "mib": "decmbytes", "percent100": "percent", "none": "none"}


def _datasource(uid):
    return {"type": "prometheus", "uid": uid}


def monitoring_grafana_dashboard(spec, datasource_uid):
    """A Grafana dashboard (JSON model) from a short spec: uid, title, description, tags, variables
    (name, query, label; multi-select with All), rows (title, repeat, panels) or panels
    (title, type, unit, description, targets: [{expr, legend}]), and selector, a label filter
    that <selector> in a query stands for.
    Panels are laid out two per line, eight units high.
    """
    if not isinstance(spec, dict) or not spec.get("uid") or not spec.get("title"):
        raise AnsibleFilterError("a dashboard spec needs a uid and a title")
    selector = str(spec.get("selector") or "")
    ds = _datasource(datasource_uid)
    templating = []
    for v in spec.get("variables") or []:
        templating.append({
            "name": v["name"], "label": v.get("label", v["name"]), "type": "query", "datasource": ds,
            "query": {"query": v["query"], "refId": "StandardVariableQuery"}, "definition": v["query"],
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        })
    panels = []
    ids = iter(range(1, 10000))
    y = 0
    rows = spec.get("rows")
    if rows is None:
        rows = [{"panels": spec.get("panels") or []}]
    for row in rows:
        if row.get("title"):
            row_panel = {"type": "row", "id": next(ids), "title": row["title"], "collapsed": False, "panels": [],
                         "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}
            if row.get("repeat"):
                row_panel["repeat"] = row["repeat"]
            panels.append(row_panel)
            y += 1
        x = 0
        for p in row.get("panels") or []:
            width = int(p.get("width", 12))
            height = int(p.get("height", 8))
            if x + width > 24:
                x, y = 0, y + height
            panel = {
                "id": next(ids), "type": p.get("type", "timeseries"), "title": p["title"],
                "description": p.get("description", ""), "datasource": ds,
                "gridPos": {"h": height, "w": width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": _UNITS.get(p.get("unit", "none"), p.get("unit", "none"))},
                                "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "none"}},
                "targets": [],
            }
            if p.get("type") == "heatmap":
                panel["options"] = {"calculate": False, "yAxis": {"axisLabel": p.get("axis_label", "")}}
            for ref, t in zip("ABCDEFGHIJ", p.get("targets") or []):
                target = {"datasource": ds, "refId": ref, "expr": str(t["expr"]).replace("<selector>", selector),
                          "legendFormat": t.get("legend", "__auto"), "range": True, "instant": False, "editorMode": "code"}
                if p.get("type") == "heatmap":
                    target["format"] = "heatmap"
                panel["targets"].append(target)
            panels.append(panel)
            x += width
        if x:
            y += 8
    return {
        "uid": spec["uid"], "title": spec["title"], "description": spec.get("description", ""),
        "tags": list(spec.get("tags") or []), "editable": True, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": spec.get("refresh", "30s"), "timezone": "",
        "graphTooltip": 1, "links": [], "annotations": {"list": []},
        "templating": {"list": templating}, "panels": panels,
    }


class FilterModule(object):
    def filters(self):
        return {
            "monitoring_vllm_instances": monitoring_vllm_instances,
            "monitoring_scrape_configs": monitoring_scrape_configs,
            "monitoring_unscrapable_instances": monitoring_unscrapable_instances,
            "monitoring_unscraped_registry_caches": monitoring_unscraped_registry_caches,
            "monitoring_dcgm_exporter_container": monitoring_dcgm_exporter_container,
            "monitoring_grafana_dashboard": monitoring_grafana_dashboard,
        }
