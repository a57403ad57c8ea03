# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
"""Filters that read the whole fleet from the inventory: registry caches, images, the site report."""

from __future__ import annotations

from ansible_collections.llmops.vllm.plugins.plugin_utils._hostvars import hostvar

DOCKER_HUB = "docker.io"
# The registry_cache role's defaults, for hosts whose inventory does not set them (role defaults
# are not visible through another host's hostvars); tests/unit checks they match the role's.
REGISTRY_CACHE_DEFAULT_PORT = 5000


def _get(hostvars, host, name, default=None):
    return hostvar(hostvars, host, name, default, blank_is_missing=True)


def registry_cache_mirrors(cache_hosts, hostvars, this_host=None):
    """The registry-mirrors URLs of the fleet's pull-through caches, leaving out this_host itself."""
    mirrors = []
    for host in cache_hosts or []:
        if host == this_host:
            continue
        address = _get(hostvars, host, "registry_cache_advertise_address") or _get(hostvars, host, "ansible_host") or host
        if ":" in address and not address.startswith("["):
            address = "[%s]" % address
        scheme = "https" if _get(hostvars, host, "registry_cache_tls_certificate") else "http"
        port = int(_get(hostvars, host, "registry_cache_port", REGISTRY_CACHE_DEFAULT_PORT))
        mirrors.append("%s://%s:%d" % (scheme, address, port))
    return mirrors


def image_registry(image):
    """The registry an image reference pulls from: docker.io for Docker Hub, else its host[:port]."""
    name = str(image).split("@", 1)[0]
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return DOCKER_HUB if first in ("docker.io", "index.docker.io", "registry-1.docker.io") else first
    return DOCKER_HUB


def fleet_images(hosts, hostvars, hub_only=False, fact="llmops_vllm_images"):
    """Every image the given hosts recorded in their fact, once, in a stable order (Docker Hub's only, with hub_only)."""
    images = []
    for host in hosts or []:
        for image in _get(hostvars, host, fact, []) or []:
            if hub_only and image_registry(image) != DOCKER_HUB:
                continue
            if image not in images:
                images.append(image)
    return images


def unreachable_reasons(probe):
    """{host: message} of the hosts a probe (a registered loop of ping delegated to each host, with
    ignore_unreachable and ignore_errors) could not reach, or reached only to get an error back."""
    reasons = {}
    for result in (probe or {}).get("results", []) or []:
        if isinstance(result, dict) and (result.get("unreachable") or result.get("failed")):
            reasons[str(result.get("item"))] = failure_reason(result).strip() or "unreachable"
    return reasons


def fleet_report(hosts, hostvars, unreachable=None, stopped=False):
    """One row per host: ok, failed (with the step and the message), unreachable (with the connection
    error, from unreachable_reasons) or not reached (stopped by llmops_any_errors_fatal /
    llmops_max_fail_percentage when stopped, else left by the run for a reason Ansible printed above)."""
    rows = []
    unreachable = unreachable or {}
    for host in hosts or []:
        failure = _get(hostvars, host, "llmops_site_failure")
        if failure:
            rows.append({"host": host, "status": "failed", "step": failure.get("step", ""), "reason": failure.get("reason", "")})
        elif _get(hostvars, host, "llmops_site_done"):
            rows.append({"host": host, "status": "ok", "step": "", "reason": ""})
        elif host in unreachable:
            rows.append({"host": host, "status": "unreachable", "step": "", "reason": unreachable[host]})
        else:
            rows.append({"host": host, "status": "not reached", "step": "",
                         "reason": "stopped by llmops_any_errors_fatal / llmops_max_fail_percentage before it finished"
                         if stopped else "the run left it before it finished: see its last task above"})
    return rows


def hf_cache_folder(repo_id, repo_type="model"):
    """The folder of a repository in a Hugging Face hub cache: org/name -> models--org--name."""
    return "%ss--%s" % (repo_type, str(repo_id).replace("/", "--"))


def not_from_docker_hub(instances):
    """The instances whose image a Docker Hub mirror cannot serve."""
    return [i for i in instances or [] if image_registry(i.get("image", "")) != DOCKER_HUB]


def failure_reason(result):
    """The message of a failed task's result; for a loop, the first failed item's message; for gathered
    facts, the first failed module's. Where the message only says that the module's output was not
    JSON (a connection that returned the remote side's error instead, e.g. a container that is gone),
    what the remote side said (module_stderr) is added."""
    if not isinstance(result, dict):
        return ""
    modules = result.get("failed_modules")
    if isinstance(modules, dict) and modules:
        return failure_reason(list(modules.values())[0])
    message = result.get("msg", "")
    items = [r for r in result.get("results", []) or [] if isinstance(r, dict) and r.get("failed")]
    if items and (not message or message == "One or more items failed"):
        item = items[0]
        label = item.get("_ansible_item_label", item.get("item", ""))
        message = "%s%s" % ("(%s) " % (label,) if label not in ("", None) else "", failure_reason(item) or "failed")
    stderr = str(result.get("module_stderr", "") or "").strip()
    if stderr and (str(message).startswith("Module result deserialization failed") or str(message).startswith("MODULE FAILURE")):
        message = "%s: %s" % (message, stderr.splitlines()[-1])
    return str(message)


def failed_percentage(hosts, hostvars):
    """The percentage of the hosts that recorded a failure (llmops_site_failure)."""
    hosts = list(hosts or [])
    if not hosts:
        return 0.0
    return 100.0 * sum(1 for h in hosts if _get(hostvars, h, "llmops_site_failure")) / len(hosts)


def fleet_report_line(row):
    """One line of the fleet report."""
    if row["status"] == "ok":
        return "%s: ok" % row["host"]
    if row["status"] == "failed":
        return "%s: FAILED at '%s': %s" % (row["host"], row["step"], row["reason"])
    return "%s: %s (%s)" % (row["host"], row["status"].upper(), row["reason"])


class FilterModule(object):
    def filters(self):
        return {
            "registry_cache_mirrors": registry_cache_mirrors,
            "image_registry": image_registry,
            "fleet_images": fleet_images,
            "fleet_report": fleet_report,
            "unreachable_reasons": unreachable_reasons,
            "not_from_docker_hub": not_from_docker_hub,
            "fleet_report_line": fleet_report_line,
            "failure_reason": failure_reason,
            "failed_percentage": failed_percentage,
            "hf_cache_folder": hf_cache_folder,
        }
