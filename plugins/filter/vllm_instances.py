# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# The instances of vllm_server_instances, resolved on their host and from the inventory, and the GPUs each
# one asks for: filters over the resolver of plugins/plugin_utils/_vllm_instances.py.

import functools

from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.plugin_utils import _vllm_instances as resolver
from ansible_collections.llmops.vllm.plugins.plugin_utils._role_defaults import role_defaults
from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_container import ContainerSpecError, device_requests


def filter_error(function):
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
vllm_gpu_count = filter_error(resolver.gpu_count)


def vllm_resolve_instances(instances, defaults, gpus_available=None):
    """Fill each instance of vllm_server_instances in and derive what follows (plugin_utils/_vllm_instances.py).

    defaults: the role's values of the fields its variables give (bind_address, gpus, options, ...); port and
    served_model_name default to the instance's own defaults there. gpus_available is the number of GPUs of
    the host when known (for gpus: all). An instance with nodes (one spanning several hosts) gets multinode:
    true and multinode_head (its head's inventory hostname).
    """
    return filter_error(resolver.resolve)(instances, defaults, gpus_available)


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
    return filter_error(resolver.inventory_instances)(hosts, hostvars, vllm_defaults)


def vllm_published_ports(instances, variables=None):
    """[{port, container}] of each instance that publishes a port on its host, as vllm_server resolves it:
    the preflight's ports. instances is vllm_server_instances (none where it is unset: then the default
    instance of the single-instance variables in variables, vllm_server_container_name and vllm_server_port,
    over vllm_server's defaults)."""
    return filter_error(resolver.published_ports)(instances, variables)


class FilterModule(object):
    def filters(self):
        return {
            "vllm_device_requests": vllm_device_requests,
            "vllm_gpu_count": vllm_gpu_count,
            "vllm_resolve_instances": vllm_resolve_instances,
            "vllm_instances_served_here": vllm_instances_served_here,
            "vllm_inventory_instances": vllm_inventory_instances,
            "vllm_published_ports": vllm_published_ports,
        }
