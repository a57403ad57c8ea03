# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Filters that turn the collection's vLLM variables into Docker and vLLM settings.

import functools

from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_container import (
    INSTANCE_LABEL, MODE_LABEL, NODE_ROLE_LABEL, NODES_LABEL, ContainerSpecError, device_requests)
from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import adapters as lora_adapters
from ansible_collections.llmops.vllm.plugins.plugin_utils import _vllm_instances as resolver
from ansible_collections.llmops.vllm.plugins.plugin_utils._role_defaults import role_defaults


def _filter_error(function):
    """A resolver function of plugin_utils whose errors are the filter's errors."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except resolver.InstanceError as e:
            raise AnsibleFilterError(str(e))
    return wrapper


def vllm_device_requests(gpus):
    """Return docker_container device_requests for a GPU selection."""
    try:
        return device_requests(gpus)
    except ContainerSpecError as e:
        raise AnsibleFilterError(str(e))


# An instance's fields, their defaults and how they resolve: plugins/plugin_utils/_vllm_instances.py.
vllm_gpu_count = _filter_error(resolver.gpu_count)
vllm_cli_key = resolver.cli_key
vllm_config = _filter_error(resolver.config_mapping)
SIZE_KEYS = resolver.SIZE_KEYS
# The keys of an instance spanning several hosts (docs/multinode.md); llmops.vllm.vllm_multinode_plan reads them.
MULTINODE_KEYS = ("nodes", "head", "gpus_per_node", "shape", "executor", "cluster_interface", "master_port",
                  "data_parallel_rpc_port", "ray_port", "health_port")


def vllm_resolve_instances(instances, defaults, gpus_available=None):
    """Fill each instance of vllm_server_instances in and derive what follows (plugin_utils/_vllm_instances.py).

    defaults: the role's values of the fields its variables give (bind_address, gpus, options, ...); port and
    served_model_name default to the instance's own defaults there. gpus_available is the number of GPUs of
    the host when known (for gpus: all). An instance with nodes (one spanning several hosts) gets multinode:
    true and multinode_head (its head's inventory hostname).
    """
    return _filter_error(resolver.resolve)(instances, defaults, gpus_available)


def vllm_host_gpus(gpu_info):
    """The host's GPUs from llmops.vllm.nvidia_gpu_info's result: [{index, uuid, memory_mib}], [] without one."""
    gpus = (gpu_info or {}).get("gpus") or []
    return [{"index": str(g["index"]), "uuid": g["uuid"], "memory_mib": int(g["memory_total_mib"])} for g in gpus]


def vllm_found_instances(host_info, default_mode):
    """The role's containers that community.docker.docker_host_info found: [{name, mode, node_role, nodes}].

    A container of an older release without the mode label counts as running in default_mode. node_role
    is head or worker for a node of a multi-node instance (its nodes: the instance's hosts), else "".
    """
    found = []
    for container in (host_info or {}).get("containers") or []:
        labels = container.get("Labels") or {}
        nodes = labels.get(NODES_LABEL) or ""
        found.append({"name": labels[INSTANCE_LABEL], "mode": labels.get(MODE_LABEL, default_mode),
                      "node_role": labels.get(NODE_ROLE_LABEL) or "", "nodes": [n for n in nodes.split(",") if n]})
    return found


def vllm_instances_served_here(instances, host):
    """The instances whose API this host serves: every single-node one, and the multi-node ones it heads.

    A worker node of a multi-node instance serves no API; the gateway, verify.yml and the state record
    must not count it.
    """
    return resolver.served_here(instances, host)


def vllm_role_defaults():
    """vllm_server's defaults/main.yml as data (its Jinja left as text)."""
    return role_defaults("vllm_server")


def vllm_inventory_instances(hosts, hostvars, vllm_defaults=None):
    """Every instance each host serves, as its inventory declares it: the fleet's desired state.

    The gateway's backends and Prometheus's targets come from here, on their own hosts, from
    hostvars[host] of hosts that need not be in the play (a --limit, llmops_target_hosts or a failed
    host leaves them out). Role defaults are not in another host's hostvars, so a variable the inventory
    leaves unset takes its value from vllm_defaults (vllm_server's defaults/main.yml unless given), and
    a host without vllm_server_instances gets the one instance the single-instance variables describe,
    as the role's default list does. Each instance is resolved as the role resolves it and kept where
    vllm_instances_served_here keeps it (a worker node of a multi-node instance serves none), as the role
    does on the host itself; each result also carries host (its inventory hostname).
    """
    return _filter_error(resolver.inventory_instances)(hosts, hostvars, vllm_defaults)


def vllm_published_ports(instances, variables=None):
    """[{port, container}] of each instance that publishes a port on its host, as vllm_server resolves it:
    the preflight's ports. instances is vllm_server_instances (none where it is unset: then the default
    instance of the single-instance variables in variables, vllm_server_container_name and vllm_server_port,
    over vllm_server's defaults)."""
    return _filter_error(resolver.published_ports)(instances, variables)


def _unique(names):
    seen = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen


def vllm_dropped_instances(found, instances):
    """Names of the instances found on the host that vllm_server_instances no longer lists."""
    listed = set(i["name"] for i in instances)
    return _unique(f["name"] for f in found if f["name"] not in listed)


def vllm_stale_containers(found, instances, mode):
    """Containers to remove: those of dropped instances, and those running in the other mode."""
    return _unique(vllm_dropped_instances(found, instances) + [f["name"] for f in found if f["mode"] != mode])


def vllm_downloads(instances, models_dir):
    """The instances that fetch their model before they start (a hub id, not a path inside the container).

    Each gets download_stamp: the file recording a finished download of its model and revision.
    """
    downloads = []
    for i in instances:
        if not i.get("download"):
            continue
        # A hub adapter (docs/lora.md) is fetched as a model is, at its pinned revision, before the server starts.
        fetched = []
        if not str(i["model"]).startswith("/"):
            fetched.append(dict(i, download_stamp=_download_stamp(models_dir, i["model"], i.get("revision", "main"))))
        for adapter in lora_adapters(i):
            if adapter["kind"] == "hub":
                fetched.append(dict(i, model=adapter["source"], revision=adapter["revision"], adapter=adapter["name"],
                                    download_stamp=_download_stamp(models_dir, adapter["source"], adapter["revision"])))
        downloads.extend(fetched)
    return downloads


def _download_stamp(models_dir, model, revision):
    return "%s/.downloaded/%s@%s" % (models_dir, str(model).replace("/", "--"), revision)


def _version_tuple(text):
    import re

    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    return tuple(int(g or 0) for g in match.groups()) if match else None


def vllm_image_version(image):
    """The vLLM version in an image tag such as vllm/vllm-openai:v0.32.0 or ...-cpu:v0.32.0-x86_64, or None."""
    tag = str(image).rsplit("/", 1)[-1]
    if ":" not in tag:
        return None
    version = _version_tuple(tag.split(":", 1)[1].split("@")[0])
    return "%d.%d.%d" % version if version else None


def vllm_pick_option_spec(known_versions, image):
    """The option data version to check an image against: its own, else the newest older one, else the oldest."""
    known = sorted((v for v in known_versions if _version_tuple(v)), key=_version_tuple)
    if not known:
        return None
    wanted = _version_tuple(vllm_image_version(image) or "")
    if wanted is None:
        return known[-1]
    older = [v for v in known if _version_tuple(v) <= wanted]
    return older[-1] if older else known[0]


# What an instance needs to be created again exactly (upgrade.yml's rollback); never a secret.
STATE_KEYS = ("name", "model", "served_model_name", "port", "bind_address", "gpus", "options", "env", "image",
              "download", "revision", "parameters", "lora") + MULTINODE_KEYS


def vllm_instance_state(instances):
    """The instances reduced to what recreates them, for the role's state file."""
    # an instance without adapters (lora: {}, the default) keeps the state it had before the lora block existed
    return [dict((k, i[k]) for k in STATE_KEYS if k in i and not (k == "lora" and not i[k])) for i in instances]


# Keys the role sets itself; an instance gives them through its own fields.
MANAGED_OPTIONS = {
    "model": "the instance's model",
    "served-model-name": "the instance's served_model_name",
    "port": "the instance's port (the container always listens on 8000)",
    "host": "the instance's bind_address",
    "config": "the role (it writes the config file)",
    "api-key": "vllm_server_api_key (kept out of docker inspect)",
    "hf-token": "vllm_server_hf_token (kept out of docker inspect)",
}


def _display(key):
    return "%s (--%s)" % (key.replace("-", "_"), key)


def vllm_option_problems(options, spec, advice=None, strict=True):
    """Sentences describing every option that vLLM's `serve` would reject or that means something else.

    spec is the role's data for one vLLM version (options: name -> kind/negatable/choices/aliases,
    quantization_methods, vllm_version); advice maps common mistakes to what to use instead.
    With strict=False only the advice and the options the role sets itself are checked.
    """
    import difflib

    if not isinstance(options, dict):
        return ["vLLM options must be a dictionary of option names and values, not %s" % type(options).__name__]
    known = spec.get("options", {})
    version = spec.get("vllm_version", "?")
    aliases = {}
    for name, entry in known.items():
        for alias in entry.get("aliases") or []:
            aliases[alias] = name
    advice = dict((vllm_cli_key(k), v) for k, v in (advice or {}).items())
    problems = []
    for raw_key in sorted(options, key=str):
        value = options[raw_key]
        key = vllm_cli_key(raw_key)
        base = key.split(".", 1)[0]
        base = aliases.get(base, base)
        if base in advice:
            methods = ", ".join(spec.get("quantization_methods") or []) or "see vLLM's documentation"
            problems.append("%s: %s" % (raw_key, advice[base].replace("{quantization_methods}", methods)))
            continue
        if base in MANAGED_OPTIONS:
            problems.append("%s: set it through %s, not in the options." % (raw_key, MANAGED_OPTIONS[base]))
            continue
        if not strict:
            continue
        if base not in known:
            close = difflib.get_close_matches(base, list(known), n=3, cutoff=0.6)
            hint = (" Did you mean %s?" % " or ".join(_display(c) for c in close)) if close else ""
            problems.append("%s is not an option of vLLM %s's server.%s" % (raw_key, version, hint))
            continue
        entry = known[base]
        if value is None or "." in key:
            continue
        if entry.get("kind") == "flag" and not isinstance(value, bool):
            problems.append("%s is a flag of vLLM: give true or false, not %r." % (raw_key, value))
        elif entry.get("kind") == "value" and isinstance(value, list):
            problems.append("%s takes one value, not a list." % raw_key)
        choices = entry.get("choices")
        if choices and entry.get("kind") != "flag":
            values = value if isinstance(value, list) else [value]
            wrong = [v for v in values if str(v) not in choices]
            if wrong:
                problems.append("%s: %s is not one of %s." % (raw_key, ", ".join(repr(v) for v in wrong), ", ".join(choices)))
        if base == "quantization" and spec.get("quantization_methods") and str(value) not in spec["quantization_methods"]:
            close = difflib.get_close_matches(str(value), spec["quantization_methods"], n=3, cutoff=0.5)
            problems.append("%s: %r is not a quantization method of vLLM %s.%s Methods: %s." % (
                raw_key, value, version, (" Did you mean %s?" % " or ".join(close)) if close else "",
                ", ".join(spec["quantization_methods"])))
    return problems


class FilterModule(object):
    def filters(self):
        return {
            "vllm_device_requests": vllm_device_requests,
            "vllm_gpu_count": vllm_gpu_count,
            "vllm_cli_key": vllm_cli_key,
            "vllm_config": vllm_config,
            "vllm_option_problems": vllm_option_problems,
            "vllm_resolve_instances": vllm_resolve_instances,
            "vllm_image_version": vllm_image_version,
            "vllm_instance_state": vllm_instance_state,
            "vllm_pick_option_spec": vllm_pick_option_spec,
            "vllm_host_gpus": vllm_host_gpus,
            "vllm_found_instances": vllm_found_instances,
            "vllm_instances_served_here": vllm_instances_served_here,
            "vllm_inventory_instances": vllm_inventory_instances,
            "vllm_published_ports": vllm_published_ports,
            "vllm_dropped_instances": vllm_dropped_instances,
            "vllm_stale_containers": vllm_stale_containers,
            "vllm_downloads": vllm_downloads,
        }
