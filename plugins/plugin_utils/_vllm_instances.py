# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

# PRIVATE to the collection: no compatibility is promised to anyone who imports it.

"""The one place that knows the fields of a vllm_server instance and their defaults.

Every consumer of vllm_server_instances resolves it here: the vllm_server role on its host
(llmops.vllm.vllm_resolve_instances), the gateway's backends and Prometheus's targets from the inventory
(llmops.vllm.vllm_inventory_instances), and the preflight's ports (llmops.vllm.vllm_published_ports).
So an instance without a port publishes the same port for all of them.
"""

from __future__ import annotations

import json

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import lora_options
from ansible_collections.llmops.vllm.plugins.plugin_utils._hostvars import hostvar
from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_container import ContainerSpecError, device_requests
from ansible_collections.llmops.vllm.plugins.plugin_utils._role_defaults import role_defaults

# An instance's own defaults. The port an instance without one publishes is 8000, vLLM's own port (the
# container listens on 8000 whatever the host port); vllm_server_port is the port of the default
# instance only (DEFAULT_INSTANCE). An empty served_model_name means the model's id.
FIELD_DEFAULTS = {"served_model_name": "", "port": 8000}
# The fields whose defaults are the vllm_server role's variables, and those variables.
ROLE_VARIABLES = {
    "bind_address": "vllm_server_bind_address",
    "gpus": "vllm_server_gpus",
    "options": "vllm_server_options",
    "env": "vllm_server_env",
    "image": "vllm_server_image",
    "download": "vllm_server_download_models",
    "shutdown_timeout": "vllm_server_shutdown_timeout",
    "lora": "vllm_server_lora",
}
# The one instance a host serves when vllm_server_instances is unset (the role's default list): field -> variable.
DEFAULT_INSTANCE = {
    "name": "vllm_server_container_name",
    "model": "vllm_server_model",
    "served_model_name": "vllm_server_served_model_name",
    "port": "vllm_server_port",
}
# The fields read from another host's inventory: the gateway and Prometheus need no more of them (lora: the
# gateway routes the adapters of vllm_server_lora as it does those of an instance's own lora block).
INVENTORY_FIELDS = ("bind_address", "options", "lora")
# The role's defaults read where no Ansible templating happens (another host's inventory, a play without
# the role): plain values in defaults/main.yml (a unit test keeps them so).
PLAIN_DEFAULTS = tuple(DEFAULT_INSTANCE.values()) + tuple(ROLE_VARIABLES[f] for f in INVENTORY_FIELDS)

# The parallel sizes: a multi-node instance gets them on its command line from its plan, never in its config file.
SIZE_KEYS = ("tensor-parallel-size", "pipeline-parallel-size", "data-parallel-size")


class InstanceError(ValueError):
    """vllm_server_instances, or one of its entries, cannot be resolved."""


def cli_key(name):
    """vLLM's long option name for a config key: underscores become dashes."""
    return str(name).strip().lstrip("-").replace("_", "-")


def config_mapping(options):
    """An options dictionary as vLLM's --config YAML mapping: long option names with dashes, nested
    dictionaries as JSON strings (which every vLLM release that reads --config understands), None left out."""
    if not isinstance(options, dict):
        raise InstanceError("vLLM options must be a dictionary, not %s" % type(options).__name__)
    rendered = {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        rendered[cli_key(key)] = value
    return rendered


def gpu_count(gpus, available=None):
    """How many GPUs a selection gives the container; 'all' counts the host's GPUs when known (else -1)."""
    try:
        requests = device_requests(gpus)
    except ContainerSpecError as e:
        raise InstanceError(str(e))
    if not requests:
        return 0
    request = requests[0]
    if "device_ids" in request:
        return len(request["device_ids"])
    if request["count"] == -1:
        return int(available) if available is not None else -1
    return request["count"]


def is_loopback(address):
    """Whether an instance bound to this address is reachable from its own host only."""
    return address in ("127.0.0.1", "::1", "localhost") or str(address).startswith("127.")


def local_url(bind_address, port):
    """Where a process on the host itself reaches a server bound to bind_address (all addresses: loopback)."""
    bind = str(bind_address or "0.0.0.0")
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
    return "http://%s:%s" % ("[%s]" % host if ":" in host else host, port)


def resolve(instances, settings, gpus_available=None):
    """Each instance filled in from FIELD_DEFAULTS under settings (the fields of ROLE_VARIABLES, as the role's
    variables give them) and what follows from it: tensor parallelism, config, file names, local URL.

    An instance with nodes (one spanning several hosts) gets multinode: true and multinode_head (its head's
    inventory hostname); its sizes come from its plan (llmops.vllm.vllm_multinode_plan), so none is derived here.
    """
    if not isinstance(instances, (list, tuple)):
        raise InstanceError("vllm_server_instances must be a list, not %s" % type(instances).__name__)
    resolved = []
    for instance in instances:
        if not isinstance(instance, dict):
            raise InstanceError("each entry of vllm_server_instances must be a dictionary, not %r" % (instance,))
        i = dict(FIELD_DEFAULTS)
        i.update(settings or {})
        i.update(instance)
        name = str(i.get("name", ""))
        try:
            port = int(i.get("port"))
        except (TypeError, ValueError):
            port = i.get("port")
        options = dict(i.get("options") or {})
        count = gpu_count(i.get("gpus"), gpus_available)
        option_keys = {cli_key(k) for k in options}
        nodes = i.get("nodes")
        multinode = isinstance(nodes, list) and len(nodes) > 0
        # One vLLM instance spreads a model over its GPUs with tensor parallelism unless told otherwise.
        if not multinode and count > 1 and not option_keys & set(SIZE_KEYS):
            options["tensor_parallel_size"] = count
        # A stopped server finishes what it started for this long (vllm_server_shutdown_timeout).
        shutdown = int(i.get("shutdown_timeout") or 0)
        if shutdown > 0 and "shutdown-timeout" not in option_keys:
            options["shutdown_timeout"] = shutdown
        bind = str(i.get("bind_address") or "0.0.0.0")
        served = i.get("served_model_name") or i.get("model")
        config_options = dict((k, v) for k, v in options.items() if not (multinode and cli_key(k) in SIZE_KEYS))
        # The LoRA adapters (docs/lora.md) become vLLM options of their own, kept apart from the instance's
        # options so that the preflight can tell a lora block from options that say the same.
        adapter_options = lora_options(dict(i, served_model_name=served))
        config_options.update(adapter_options)
        i.update(
            name=name,
            port=port,
            bind_address=bind,
            served_model_name=served,
            options=options,
            gpu_count=count,
            loopback_only=is_loopback(bind),
            config=dict([("served-model-name", served)] + sorted(config_mapping(config_options).items())),
            config_file=name + ".yaml",
            secrets_file=name + ".env",
            logging_file=name + ".logging.json",
            cache_volume=name + "-vllm-cache",
            local_url=local_url(bind, port),
            multinode=multinode,
            multinode_head=str(i.get("head") or nodes[0]) if multinode else "",
            lora_options=adapter_options,
        )
        resolved.append(i)
    return resolved


def served_here(instances, host):
    """The instances whose API this host serves: every single-node one, and the multi-node ones it heads."""
    return [i for i in instances or [] if not i.get("multinode") or i.get("multinode_head") == host]


def listed_instances(instances, var):
    """vllm_server_instances, or the default instance the single-instance variables describe when it is unset
    (None); var(name) gives a vllm_server variable."""
    if instances is None:
        return [dict((field, var(variable)) for field, variable in DEFAULT_INSTANCE.items())]
    return instances


def inventory_instances(hosts, hostvars, vllm_defaults=None):
    """Every instance each host serves as its inventory declares it, each with host (its inventory hostname).

    A variable the inventory leaves unset takes its value from vllm_defaults (vllm_server's defaults/main.yml
    unless given): role defaults are not in another host's hostvars.
    """
    if not isinstance(hosts, (list, tuple)):
        raise InstanceError("vllm_inventory_instances wants a list of hosts, not %s" % type(hosts).__name__)
    defaults = role_defaults("vllm_server") if vllm_defaults is None else vllm_defaults
    if not isinstance(defaults, dict):
        raise InstanceError("vllm_defaults must be vllm_server's defaults as a dictionary")
    found = []
    for host in hosts:
        try:
            known = host in hostvars
        except TypeError:
            known = False
        if not known:
            raise InstanceError("%s is listed as a vLLM host but is not in the inventory" % host)

        def var(name, host=host):
            return hostvar(hostvars, host, name, defaults.get(name))

        instances = listed_instances(hostvar(hostvars, host, "vllm_server_instances"), var)
        if not isinstance(instances, (list, tuple)):
            raise InstanceError("%s: vllm_server_instances must be a list, not %s" % (host, type(instances).__name__))
        settings = dict((field, var(ROLE_VARIABLES[field])) for field in INVENTORY_FIELDS)
        try:
            resolved = resolve(instances, settings)
        except InstanceError as e:
            raise InstanceError("%s: vllm_server_instances: %s" % (host, e))
        for instance in served_here(resolved, str(host)):
            found.append(dict(instance, host=str(host)))
    return found


def published_ports(instances, variables=None):
    """[{port, container}] of each instance that publishes a port on this host, as vllm_server resolves it.

    instances is vllm_server_instances, None where it is unset: then the default instance, from the
    single-instance variables in variables (None or missing: vllm_server's defaults). An instance spanning
    several hosts publishes none (its head's vLLM listens on the host network itself). A port that is not a
    number is left out: vllm_server's own preflight refuses it, naming the instance.
    """
    defaults = role_defaults("vllm_server")
    variables = variables or {}

    def var(name):
        value = variables.get(name)
        return defaults.get(name) if value is None else value

    return [{"port": i["port"], "container": i["name"]}
            for i in resolve(listed_instances(instances, var), {})
            if not i["multinode"] and isinstance(i["port"], int)]
