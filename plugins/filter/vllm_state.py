# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# What the vllm_server role finds on its host (the GPUs, its containers, the instances dropped from the
# inventory and the containers to remove) and the state it records for upgrade.yml's rollback.

from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_container import (
    INSTANCE_LABEL, MODE_LABEL, NODE_ROLE_LABEL, NODES_LABEL)


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


# The keys of an instance spanning several hosts (docs/multinode.md); llmops.vllm.vllm_multinode_plan reads them.
MULTINODE_KEYS = ("nodes", "head", "gpus_per_node", "shape", "executor", "cluster_interface", "master_port",
                  "data_parallel_rpc_port", "ray_port", "health_port")
# What an instance needs to be created again exactly (upgrade.yml's rollback); never a secret.
STATE_KEYS = ("name", "model", "served_model_name", "port", "bind_address", "gpus", "options", "env", "image",
              "download", "revision", "parameters", "lora") + MULTINODE_KEYS


def vllm_instance_state(instances):
    """The instances reduced to what recreates them, for the role's state file."""
    # an instance without adapters (lora: {}, the default) keeps the state it had before the lora block existed
    return [dict((k, i[k]) for k in STATE_KEYS if k in i and not (k == "lora" and not i[k])) for i in instances]


class FilterModule(object):
    def filters(self):
        return {
            "vllm_host_gpus": vllm_host_gpus,
            "vllm_found_instances": vllm_found_instances,
            "vllm_dropped_instances": vllm_dropped_instances,
            "vllm_stale_containers": vllm_stale_containers,
            "vllm_instance_state": vllm_instance_state,
        }
