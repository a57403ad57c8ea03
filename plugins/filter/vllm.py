# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Filters that turn the collection's vLLM variables into Docker and vLLM settings.

from ansible.errors import AnsibleFilterError


def vllm_device_requests(gpus):
    """Return docker_container device_requests for a GPU selection."""
    request = {"driver": "nvidia", "capabilities": [["gpu"]]}
    if gpus is None or gpus == "none" or gpus == []:
        return []
    if gpus == "all":
        return [dict(request, count=-1)]
    if isinstance(gpus, bool):
        raise AnsibleFilterError("GPU selection must be 'all', 'none', a count or a list of GPU ids, not %r" % gpus)
    if isinstance(gpus, int) or (isinstance(gpus, str) and gpus.isdigit()):
        count = int(gpus)
        return [dict(request, count=count)] if count > 0 else []
    if isinstance(gpus, (list, tuple)):
        return [dict(request, device_ids=[str(g) for g in gpus])]
    if isinstance(gpus, str):
        return [dict(request, device_ids=[g.strip() for g in gpus.split(",") if g.strip()])]
    raise AnsibleFilterError("GPU selection must be 'all', 'none', a count or a list of GPU ids, not %r" % (gpus,))


def vllm_gpu_count(gpus, available=None):
    """How many GPUs a selection gives the container; 'all' counts the host's GPUs when known."""
    requests = vllm_device_requests(gpus)
    if not requests:
        return 0
    request = requests[0]
    if "device_ids" in request:
        return len(request["device_ids"])
    if request["count"] == -1:
        return int(available) if available is not None else -1
    return request["count"]


def vllm_cli_key(name):
    """vLLM's long option name for a config key: underscores become dashes."""
    return str(name).strip().lstrip("-").replace("_", "-")


def vllm_config(options):
    """Render an options dictionary as vLLM's --config YAML mapping.

    Keys use vLLM's long option names with dashes. Nested dictionaries become JSON strings,
    which every vLLM release that reads --config understands (older ones turned a YAML mapping
    into a Python repr, which is not valid JSON).
    """
    import json

    if not isinstance(options, dict):
        raise AnsibleFilterError("vLLM options must be a dictionary, not %s" % type(options).__name__)
    rendered = {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        rendered[vllm_cli_key(key)] = value
    return rendered


class FilterModule(object):
    def filters(self):
        return {
            "vllm_device_requests": vllm_device_requests,
            "vllm_gpu_count": vllm_gpu_count,
            "vllm_cli_key": vllm_cli_key,
            "vllm_config": vllm_config,
        }
