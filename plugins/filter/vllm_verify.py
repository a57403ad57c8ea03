# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# The endpoints playbooks/verify.yml checks, and its fleet report: one row per endpoint, the table
# it prints. verify.yml's Markdown report (playbooks/templates/verify-report.md.j2) reads the rows.

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import adapters as lora_adapters


def vllm_endpoints(instances):
    """The endpoints of resolved instances (vllm_resolve_instances): [{url, port, model, container}], local URLs."""
    endpoints = []
    for i in instances:
        endpoint = {"url": i["local_url"], "port": i["port"], "model": i.get("served_model_name") or "", "container": i["name"]}
        # the instance's static LoRA adapters (docs/lora.md), each checked under its own name
        names = [a["name"] for a in lora_adapters(i)]
        if names:
            endpoint["adapters"] = names
        endpoints.append(endpoint)
    return endpoints


def vllm_endpoints_at(endpoints, address):
    """The same endpoints reached at another address (the host's, from the control node)."""
    host = "[%s]" % address if ":" in str(address) else str(address)
    return [dict(e, url="http://%s:%s" % (host, e["port"])) for e in endpoints]


def vllm_verify_rows(run, endpoints, host):
    """One report row per endpoint of a host from verify_endpoint's registered loop result.

    A host that was unreachable before the loop ran gives every endpoint the same reason.
    """
    run = run or {}
    results = list(run.get("results") or [])
    if not results:
        results = [dict(run, item=e) for e in endpoints]
    rows = []
    for r in results:
        endpoint = r.get("item") or {}
        unreachable = bool(r.get("unreachable"))
        failed = bool(r.get("failed")) or unreachable
        reason = (("unreachable: " if unreachable else "") + str(r.get("msg", "failed"))) if failed else ""
        rows.append({
            "host": host,
            "url": r.get("url", endpoint.get("url", "")),
            "model": r.get("model", endpoint.get("model", "")),
            "ready": r.get("ready", False),
            "time_to_ready": r.get("time_to_ready"),
            "latency": r.get("latency"),
            "time_to_first_token": r.get("time_to_first_token"),
            "tokens_per_second": r.get("tokens_per_second"),
            "completion_tokens": r.get("completion_tokens"),
            "version": r.get("version"),
            "ok": not failed,
            "reason": reason,
        })
    return rows


def vllm_fleet_rows(hosts, hostvars, key="llmops_verify_results"):
    """The rows of every host of the play (hostvars[host][key]), in play order; a host without rows left the play early."""
    rows = []
    for host in hosts or []:
        try:
            results = hostvars[host][key] or []
        except KeyError:
            results = []
        if results:
            rows.extend(results)
        else:
            rows.append({"host": host, "url": "", "model": "", "ready": False, "ok": False,
                         "reason": "not verified: the host left the play before (see the output above)"})
    return rows


def _number(value, fmt):
    return fmt % value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def vllm_verify_table(rows):
    """The fleet table verify.yml prints, as lines with aligned columns."""
    header = ["HOST", "URL", "MODEL", "READY", "LATENCY", "TTFT", "TOKENS/S", "RESULT"]
    lines = [header]
    for r in rows:
        reason = str(r.get("reason") or "").split("\n", 1)[0]
        if len(reason) > 95:  # as Jinja's truncate(90) with its leeway of 5
            reason = reason[:87] + "..."
        lines.append([
            str(r.get("host", "")), str(r.get("url", "")), str(r.get("model", "")),
            _number(r.get("time_to_ready"), "%.1fs") or ("yes" if r.get("ready") else "no"),
            _number(r.get("latency"), "%.3fs") or "-",
            _number(r.get("time_to_first_token"), "%.3fs") or "-",
            _number(r.get("tokens_per_second"), "%.1f") or "-",
            "ok" if r.get("ok") else "FAILED: " + reason,
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).strip() for line in lines]


class FilterModule(object):
    def filters(self):
        return {
            "vllm_endpoints": vllm_endpoints,
            "vllm_endpoints_at": vllm_endpoints_at,
            "vllm_verify_rows": vllm_verify_rows,
            "vllm_fleet_rows": vllm_fleet_rows,
            "vllm_verify_table": vllm_verify_table,
        }
