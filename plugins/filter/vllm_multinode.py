# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# One vLLM instance spanning several hosts (issue 13): from an entry of vllm_server_instances that
# lists its nodes, the facts of those nodes and the model's config.json, the plan of every node
# (role, rank, vLLM's arguments, environment, cluster ports, start order) and the problems the
# preflight must refuse. The vllm_server role calls them (tasks/preflight-multinode.yml,
# run-multinode.yml, firewall-multinode.yml); docs/testing.md says what is proven, docs/multinode.md what is not.
#
# Every vLLM flag and default below was checked against vLLM 0.32.0 (the test image's
# vllm/engine/arg_utils.py, vllm/config/parallel.py, vllm/entrypoints/cli/serve.py) and vLLM's
# docs (docs/serving/parallelism_scaling.md, data_parallel_deployment.md,
# examples/ray_serving/run_cluster.sh); tests/integration/test_multinode_args.py parses the
# rendered arguments with vLLM's own parser.

import ipaddress

from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.vllm_options import vllm_cli_key, vllm_config
from ansible_collections.llmops.vllm.plugins.plugin_utils._hostvars import hostvar as _hostvar
from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_container import (
    CONTAINER_CONFIGS_DIR, _image_repository, pinned_image)
from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_instances import SIZE_KEYS, local_url

SHAPES = ("data", "tensor", "pipeline")
EXECUTORS = ("mp", "ray")
# vLLM 0.32.0 runs Ray only on platforms with a ray_device_key (vllm/platforms/cuda.py, rocm.py,
# xpu.py); its CPU platform has none and refuses: "current platform cpu does not support ray"
# (vllm/v1/executor/ray_utils.py; vLLM issue #21602).
RAY_PLATFORMS = ("cuda", "rocm", "xpu")
# vLLM's own defaults (vllm/config/parallel.py ParallelConfig.master_port, data_parallel_rpc_port)
# and Ray's head port (ray start --port; examples/ray_serving/run_cluster.sh uses 6379).
DEFAULT_MASTER_PORT = 29501
DEFAULT_DP_RPC_PORT = 29550
DEFAULT_RAY_PORT = 6379
# The port of each node's health agent (llmops-vllm-health@, docs/multinode.md): the gateway checks the head's,
# which answers 200 only while the head's vLLM and every other node's agent do.
DEFAULT_HEALTH_PORT = 29560
# Options the plan sets per node; an instance gives them through its own fields, never its options.
CLUSTER_OPTIONS = {
    "nnodes": "the instance's nodes",
    "node-rank": "the order of the instance's nodes",
    "master-addr": "the head's address on cluster_interface",
    "master-port": "the instance's master_port",
    "headless": "the node's role (every node but the head runs headless)",
    "data-parallel-size-local": "gpus_per_node and tensor_parallel_size",
    "data-parallel-start-rank": "the order of the instance's nodes",
    "data-parallel-rank": "the order of the instance's nodes",
    "data-parallel-address": "the head's address on cluster_interface",
    "data-parallel-rpc-port": "the instance's data_parallel_rpc_port",
    "data-parallel-backend": "the instance's executor",
    "distributed-executor-backend": "the instance's executor",
    "host": "the instance's bind_address",
    "port": "the instance's port",
}


def vllm_is_multinode(instance):
    """True for an entry of vllm_server_instances that lists its nodes."""
    return isinstance(instance, dict) and bool(instance.get("nodes"))


def vllm_node_interfaces(facts):
    """{interface: IPv4 address} of one host, from its gathered ansible_facts (network subset).

    Ansible names each interface's fact after the interface with '-' and ':' turned into '_'.
    """
    found = {}
    for name in (facts or {}).get("interfaces") or []:
        entry = facts.get(str(name).replace("-", "_").replace(":", "_")) or {}
        address = (entry.get("ipv4") or {}).get("address")
        if address:
            found[str(name)] = str(address)
    return found


def _int(value, default=None):
    if value is None or value == "" or isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _sizes(instance, options, nodes, gpus_per_node, where, problems):
    """The parallel sizes: derived from the shape, nodes x gpus_per_node, checked against what options give."""
    shape = instance.get("shape")
    n = len(nodes)
    total = n * gpus_per_node
    given = dict((k, _int(options.get(k))) for k in SIZE_KEYS if k in options)
    for key, value in given.items():
        if value is None or value < 1:
            option = key.replace("-", "_")
            problems.append("%s: %s in its options must be a whole number of at least 1, not %r. Fix "
                            "vllm_server_instances[%s].options.%s." % (where, option, options[key], instance.get("name"), option))
    if any(v is None or v < 1 for v in given.values()):
        return None
    if shape == "data":
        tp = given.get("tensor-parallel-size", gpus_per_node)
        pp = given.get("pipeline-parallel-size", 1)
        if gpus_per_node % (tp * pp):
            problems.append(
                "%s: data parallel replicas of tensor_parallel_size %d x pipeline_parallel_size %d do not fill the %d "
                "GPUs of each node (gpus_per_node). Set tensor_parallel_size in the instance's options to a number "
                "that divides gpus_per_node, or change gpus_per_node." % (where, tp, pp, gpus_per_node))
            return None
        local = gpus_per_node // (tp * pp)
        dp = local * n
    else:
        dp = given.get("data-parallel-size", 1)
        if dp != 1:
            problems.append(
                "%s: shape %s spreads one copy of the model over all nodes, so data_parallel_size must be 1, not %d. "
                "Use shape: data for replicas, or remove data_parallel_size from the instance's options." % (where, shape, dp))
            return None
        if shape == "tensor":
            pp = given.get("pipeline-parallel-size", 1)
            tp = given.get("tensor-parallel-size", total // pp if pp and total % pp == 0 else total)
        else:
            tp = given.get("tensor-parallel-size", gpus_per_node)
            pp = given.get("pipeline-parallel-size", n)
        local = 0
    world = tp * pp * dp
    if world != total:
        problems.append(
            "%s: tensor_parallel_size %d x pipeline_parallel_size %d x data_parallel_size %d = %d GPUs, but its %d "
            "node%s x gpus_per_node %d give %d. Make them match: change the instance's nodes or gpus_per_node, or the "
            "sizes in its options (leave them out to derive them from the shape %s)."
            % (where, tp, pp, dp, world, n, "" if n == 1 else "s", gpus_per_node, total, shape))
        return None
    if "data-parallel-size" in given and shape == "data" and given["data-parallel-size"] != dp:
        problems.append(
            "%s: data_parallel_size %d in its options does not match its %d nodes x %d replicas per node (gpus_per_node "
            "%d / tensor_parallel_size %d) = %d. Leave data_parallel_size out, or change nodes, gpus_per_node or "
            "tensor_parallel_size." % (where, given["data-parallel-size"], n, local, gpus_per_node, tp, dp))
        return None
    if shape in ("tensor", "pipeline") and (tp * pp) % n:
        problems.append("%s: %d nodes do not divide the world size %d evenly (vLLM's --nnodes must). Change nodes or "
                        "gpus_per_node." % (where, n, tp * pp))
        return None
    return {"tensor_parallel_size": tp, "pipeline_parallel_size": pp, "data_parallel_size": dp,
            "data_parallel_size_local": local, "world_size": world}


def _model_problems(sizes, model_config, where, model):
    """What vLLM's model config checks would refuse (vllm/config/model.py verify_with_parallel_config, linear.py)."""
    problems = []
    config = model_config or {}
    tp = sizes["tensor_parallel_size"]
    pp = sizes["pipeline_parallel_size"]
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads")
    layers = config.get("num_hidden_layers")
    if isinstance(heads, int) and not isinstance(heads, bool) and heads % tp:
        problems.append(
            "%s: %s has %d attention heads, which tensor_parallel_size %d does not divide, so vLLM refuses to start "
            "(\"must be divisible by tensor parallel size\"). Choose gpus_per_node (or tensor_parallel_size in the "
            "instance's options) so that it divides %d, or use shape: pipeline." % (where, model, heads, tp, heads))
    if isinstance(kv_heads, int) and not isinstance(kv_heads, bool) and kv_heads > 0 and tp > 1:
        if (tp >= kv_heads and tp % kv_heads) or (tp < kv_heads and kv_heads % tp):
            problems.append(
                "%s: %s has %d key/value heads; tensor_parallel_size %d must divide them or be a multiple of them, so "
                "vLLM refuses to start. Change gpus_per_node or tensor_parallel_size in the instance's options."
                % (where, model, kv_heads, tp))
    if isinstance(layers, int) and not isinstance(layers, bool) and pp > layers:
        problems.append(
            "%s: pipeline_parallel_size %d is larger than the %d layers of %s (num_hidden_layers), so some stages "
            "would hold no layer. Use fewer nodes or shape: tensor." % (where, pp, layers, model))
    return problems


def _ports(instance):
    return {
        "master_port": _int(instance.get("master_port"), DEFAULT_MASTER_PORT),
        "data_parallel_rpc_port": _int(instance.get("data_parallel_rpc_port"), DEFAULT_DP_RPC_PORT),
        "ray_port": _int(instance.get("ray_port"), DEFAULT_RAY_PORT),
        "health_port": _int(instance.get("health_port"), DEFAULT_HEALTH_PORT),
    }


def _vllm_args(shape, executor, sizes, rank, head_address, ports, nodes, instance):
    """The arguments after `vllm serve MODEL --config FILE` of the node with this rank ([] for a Ray worker)."""
    tp = str(sizes["tensor_parallel_size"])
    pp = str(sizes["pipeline_parallel_size"])
    head = rank == 0
    if executor == "ray" and not head:
        return []
    args = []
    if head:
        args += ["--host", str(instance.get("bind_address") or "0.0.0.0"), "--port", str(instance.get("port"))]
    if executor == "ray":
        args += ["--tensor-parallel-size", tp, "--pipeline-parallel-size", pp]
        if shape == "data":
            args += ["--data-parallel-size", str(sizes["data_parallel_size"]),
                     "--data-parallel-size-local", str(sizes["data_parallel_size_local"]),
                     "--data-parallel-backend", "ray"]
        return args + ["--distributed-executor-backend", "ray"]
    if shape == "data":
        # vLLM's docs (data_parallel_deployment.md): the same sizes, address and RPC port on every node,
        # --headless and the first rank of the node on the others. The head gets no start rank: with one
        # and without --headless, vLLM 0.32.0 switches to its hybrid load balancing (serve.py).
        args += ["--tensor-parallel-size", tp, "--pipeline-parallel-size", pp,
                 "--data-parallel-size", str(sizes["data_parallel_size"]),
                 "--data-parallel-size-local", str(sizes["data_parallel_size_local"]),
                 "--data-parallel-address", head_address,
                 "--data-parallel-rpc-port", str(ports["data_parallel_rpc_port"])]
        if not head:
            args += ["--data-parallel-start-rank", str(rank * sizes["data_parallel_size_local"]), "--headless"]
        return args
    # vLLM's Ray-free multi-node mode (parallelism_scaling.md, "Running vLLM with MultiProcessing").
    args += ["--tensor-parallel-size", tp, "--pipeline-parallel-size", pp,
             "--distributed-executor-backend", "mp",
             "--nnodes", str(len(nodes)), "--node-rank", str(rank),
             "--master-addr", head_address, "--master-port", str(ports["master_port"])]
    if not head:
        args.append("--headless")
    return args


def _ray_start(rank, address, head_address, ports):
    """`ray start` of a node, as examples/ray_serving/run_cluster.sh runs it.

    A worker's Ray stays in the foreground (--block) as its container's process; the head's returns once
    Ray runs, so that the head's container goes on to `vllm serve` (docs/multinode-design.md, "Order").
    """
    if rank == 0:
        return ["ray", "start", "--head", "--node-ip-address=%s" % address, "--port=%d" % ports["ray_port"]]
    return ["ray", "start", "--block", "--address=%s:%d" % (head_address, ports["ray_port"]),
            "--node-ip-address=%s" % address]


def _health(rank, host, name, address, bind_address, port, health_port, addresses):
    """The node's health agent (roles/vllm_server/files/vllm-node-health): where it listens and what it checks.

    Every node's agent answers GET /health with 200 while the node's container runs. The head's also asks its own
    vLLM's /health and every other node's agent: the gateway checks the head's agent, so an instance with a node
    down leaves the gateway within its check interval (a data parallel head keeps answering /health itself and
    sends some requests to the dead engine, where they hang).
    """
    if rank:
        return {"listen": address, "port": health_port, "container": name, "vllm_health": "", "peers": []}
    return {"listen": bind_address or "0.0.0.0", "port": health_port, "container": name,
            "vllm_health": local_url(bind_address, port) + "/health",
            "peers": ["%s:%d" % (addresses[h], health_port) for h in addresses if h != host]}


def _listens(shape, executor, head, ports, address):
    """The fixed cluster ports a node listens on, with what binds them and to which address.

    A worker's health agent is one of them (only the head asks it); the head's agent is not: the gateway asks it,
    from wherever it reaches the head's API.
    """
    if not head:
        return [{"port": ports["health_port"], "proto": "tcp", "what": "the node's health agent (llmops-vllm-health@)",
                 "bound_to": address}] + _vllm_listens(shape, executor, head, ports, address)
    return _vllm_listens(shape, executor, head, ports, address)


def _vllm_listens(shape, executor, head, ports, address):
    if executor == "ray":
        if head:
            return [{"port": ports["ray_port"], "proto": "tcp", "what": "Ray GCS (ray start --head --port)",
                     "bound_to": "not pinned by this plan: treat it as all addresses"}]
        return []
    if not head:
        return []
    if shape == "data":
        return [{"port": ports["data_parallel_rpc_port"], "proto": "tcp",
                 "what": "vLLM data parallel handshake (ZMQ, --data-parallel-rpc-port)", "bound_to": address}]
    return [{"port": ports["master_port"], "proto": "tcp",
             "what": "torch.distributed TCPStore rendezvous (--master-port)", "bound_to": "all addresses (torch's TCPStore)"}]


def vllm_multinode_plan(instance, node_facts, inventory_hosts, model_config=None):
    """The plan of a multi-node instance: {name, shape, executor, head, head_address, sizes, image, config,
    start_order, nodes: [per-node plan], problems: [sentences preflight must refuse with]}.

    instance: an entry of vllm_server_instances with nodes (resolved like a single-node one: name, model,
    port, bind_address, options, image). node_facts: {host: {interfaces: {name: IPv4}, gpus: count,
    image_digest: sha256:..., platform: cuda|rocm|xpu|cpu}} (missing keys are not checked).
    image_id: sha256:... (the image's own id) is compared across nodes too: the same digest of a multi-platform
    image is a different image on a node of another architecture.
    inventory_hosts: every inventory hostname (groups['all']). model_config: the model's config.json
    (num_attention_heads, num_key_value_heads, num_hidden_layers), when known.
    """
    if not isinstance(instance, dict):
        raise AnsibleFilterError("a multi-node instance must be a dictionary, not %r" % (instance,))
    name = str(instance.get("name", ""))
    node_facts = node_facts or {}
    known_hosts = set(str(h) for h in (inventory_hosts or []))
    problems = []
    where = "Instance %s" % name
    raw_nodes = instance.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise AnsibleFilterError("%s: nodes must be a list of inventory hostnames, not %r" % (where, raw_nodes))
    nodes = []
    for host in [str(h) for h in raw_nodes]:
        if host in nodes:
            problems.append("%s lists node %s twice in nodes: each host holds one node of an instance. Remove the "
                            "duplicate from vllm_server_instances[%s].nodes." % (where, host, name))
            continue
        if host not in known_hosts:
            problems.append("%s lists node %s, which is not in the inventory. Add the host to the inventory or fix "
                            "vllm_server_instances[%s].nodes." % (where, host, name))
        nodes.append(host)
    head = str(instance.get("head") or nodes[0])
    if head not in nodes:
        problems.append("%s: its head %s is not one of its nodes (%s). Set vllm_server_instances[%s].head to one of "
                        "them, or leave it out to use the first." % (where, head, ", ".join(nodes), name))
        head = nodes[0]
    ordered = [head] + [h for h in nodes if h != head]

    shape = instance.get("shape")
    executor = instance.get("executor", "mp")
    if shape not in SHAPES:
        problems.append("%s: shape must be one of %s (data: replicas for throughput; tensor or pipeline: one model "
                        "larger than a host), not %r. Set vllm_server_instances[%s].shape."
                        % (where, ", ".join(SHAPES), shape, name))
    if executor not in EXECUTORS:
        problems.append("%s: executor must be mp (vLLM's Ray-free multi-node mode) or ray, not %r. Set "
                        "vllm_server_instances[%s].executor." % (where, executor, name))
    gpus_per_node = _int(instance.get("gpus_per_node"))
    if gpus_per_node is None or gpus_per_node < 1:
        problems.append("%s: gpus_per_node must be the number of GPUs each node gives the instance (1 or more), not %r. "
                        "Set vllm_server_instances[%s].gpus_per_node." % (where, instance.get("gpus_per_node"), name))
    interface = str(instance.get("cluster_interface") or "")
    if not interface:
        problems.append("%s: cluster_interface names the network interface its nodes talk to each other over; it is "
                        "not set. Set vllm_server_instances[%s].cluster_interface (for example the private network's "
                        "interface, ens5)." % (where, name))

    options = dict((vllm_cli_key(k), v) for k, v in (instance.get("options") or {}).items())
    for key in sorted(k for k in options if k.split(".", 1)[0] in CLUSTER_OPTIONS):
        problems.append("%s: %s is set by the multi-node plan from %s; remove it from the instance's options."
                        % (where, key.replace("-", "_"), CLUSTER_OPTIONS[key.split(".", 1)[0]]))

    # per-node facts: the cluster interface, GPUs, platform, image
    addresses = {}
    digests = {}
    image_ids = {}
    for host in ordered:
        facts = node_facts.get(host)
        if facts is None:
            if host in known_hosts:
                problems.append("%s: no facts of node %s (unreachable, or not in the play?). Run the play on every "
                                "node of the instance." % (where, host))
            continue
        interfaces = facts.get("interfaces") or {}
        if interface and interface not in interfaces:
            problems.append("%s: node %s has no IPv4 address on cluster_interface %s (it has: %s). Set "
                            "vllm_server_instances[%s].cluster_interface to the interface of the cluster network, "
                            "the same name on every node." % (where, host, interface,
                                                              ", ".join(sorted(interfaces)) or "none", name))
        elif interface:
            addresses[host] = str(interfaces[interface])
        gpus = _int(facts.get("gpus"))
        platform = str(facts.get("platform") or "")
        if gpus is not None and gpus_per_node and platform != "cpu" and gpus < gpus_per_node:
            problems.append("%s: node %s has %d GPU%s, fewer than gpus_per_node %d. Lower "
                            "vllm_server_instances[%s].gpus_per_node or replace the node."
                            % (where, host, gpus, "" if gpus == 1 else "s", gpus_per_node, name))
        if executor == "ray" and platform and platform not in RAY_PLATFORMS:
            problems.append("%s: executor ray on node %s, whose vLLM platform is %s: vLLM runs Ray only on %s "
                            "(\"current platform %s does not support ray\"). Set vllm_server_instances[%s].executor: mp."
                            % (where, host, platform, ", ".join(RAY_PLATFORMS), platform, name))
        if facts.get("image_digest"):
            digests[host] = str(facts["image_digest"])
        if facts.get("image_id"):
            image_ids[host] = str(facts["image_id"])
    seen = {}
    for host, address in addresses.items():
        if address in seen:
            problems.append("%s: nodes %s and %s have the same address %s on %s, so they cannot tell each other apart. "
                            "Give each node its own address on the cluster network."
                            % (where, seen[address], host, address, interface))
        seen.setdefault(address, host)
    if len(set(digests.values())) > 1:
        problems.append("%s: its nodes run different images (%s); vLLM, torch and Ray must be the same on every node "
                        "(Ray refuses a \"Version mismatch\"). Pull the same image on every node: pin "
                        "vllm_server_instances[%s].image to a digest (image@sha256:...)."
                        % (where, "; ".join("%s %s" % (h, digests[h]) for h in ordered if h in digests), name))
    elif len(set(image_ids.values())) > 1:
        problems.append("%s: its nodes hold different images under the same reference (image ids: %s): a node of "
                        "another CPU architecture, or an image loaded by hand. Every node must run the same image; "
                        "give them the same architecture and pull vllm_server_instances[%s].image on each."
                        % (where, "; ".join("%s %s" % (h, image_ids[h]) for h in ordered if h in image_ids), name))

    sizes = None
    if shape in SHAPES and gpus_per_node and gpus_per_node >= 1:
        sizes = _sizes(instance, options, ordered, gpus_per_node, where, problems)
    if sizes:
        problems.extend(_model_problems(sizes, model_config, where, instance.get("model")))

    head_address = addresses.get(head, "")
    image = pinned_image(str(instance.get("image") or ""), digests.get(head)) if instance.get("image") else ""
    config_options = dict((k, v) for k, v in (instance.get("options") or {}).items()
                          if vllm_cli_key(k) not in SIZE_KEYS and vllm_cli_key(k).split(".", 1)[0] not in CLUSTER_OPTIONS)
    served = instance.get("served_model_name") or instance.get("model")
    plan = {
        "name": name,
        "shape": shape,
        "executor": executor,
        "head": head,
        "head_address": head_address,
        "sizes": sizes,
        "image": image,
        "config": dict([("served-model-name", served)] + sorted(vllm_config(config_options).items())),
        "config_path": "%s/%s.yaml" % (CONTAINER_CONFIGS_DIR, name),
        "start_order": [],
        "nodes": [],
        "problems": problems,
    }
    if problems or not sizes or not head_address:
        return plan
    ports = _ports(instance)
    plan["start_order"] = [{"step": "head", "hosts": [head]}, {"step": "workers", "hosts": ordered[1:]}]
    if executor == "ray":
        plan["start_order"].append({"step": "server", "hosts": [head]})
    for rank, host in enumerate(ordered):
        address = addresses[host]
        peers = [addresses[h] for h in ordered if h != host]
        env = {"VLLM_HOST_IP": address,
               # NCCL reads a list of prefixes ("eth" matches eth0, eth1); "=" asks for this interface only.
               "NCCL_SOCKET_IFNAME": "=" + interface,
               "GLOO_SOCKET_IFNAME": interface}
        node = {
            "host": host,
            "role": "head" if rank == 0 else "worker",
            "rank": rank,
            "address": address,
            "start_order": 0 if rank == 0 else 1,
            "serves_api": rank == 0,
            "network_mode": "host",
            # One rank cannot rejoin a running torch.distributed group or Ray placement: Docker must not restart
            # a node alone; the role brings the whole instance down and up (docs/multinode.md).
            "restart_policy": "no",
            "env": env,
            "vllm_args": _vllm_args(shape, executor, sizes, rank, head_address, ports, ordered, instance),
            "ray_start": _ray_start(rank, address, head_address, ports) if executor == "ray" else [],
            "listens": _listens(shape, executor, rank == 0, ports, address),
            "health": _health(rank, host, name, address, str(instance.get("bind_address") or ""), instance.get("port"),
                              ports["health_port"], dict((h, addresses[h]) for h in ordered)),
            # Gloo, NCCL, vLLM's ZMQ queues and Ray's workers also use ports the kernel picks: the firewall
            # accepts the peers' cluster addresses on the cluster interface, not a port list.
            "firewall": {"interface": interface, "accept_from": peers},
        }
        plan["nodes"].append(node)
    return plan


def vllm_multinode_node(plan, host):
    """The plan of one node (host) of a multi-node plan, or {} when the host is not one of its nodes."""
    for node in (plan or {}).get("nodes") or []:
        if node.get("host") == host:
            return node
    return {}


# ---- the role's wiring: every node of an instance runs the role in the same play, in lockstep ----------

def _plain(value):
    """A plain dict/list copy of a value read through hostvars (lazy containers compare as plain ones)."""
    if isinstance(value, dict):
        return dict((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _docker_hub_short(repository):
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if repository.startswith(prefix):
            return repository[len(prefix):]
    return repository


def vllm_image_pin(image_info, image):
    """{digest, id} of an image from community.docker.docker_image_info's result (or its images list).

    digest: the registry digest (sha256:...) under the image's own repository, from RepoDigests, or ""
    for an image that came from no registry (docker load, a local build): such an image cannot be pinned
    and is compared by id only. id: the image's own id.
    """
    images = image_info.get("images") if isinstance(image_info, dict) else image_info
    if not images:
        return {"digest": "", "id": ""}
    inspect = images[0] or {}
    wanted = _docker_hub_short(_image_repository(image))
    digest = ""
    for entry in inspect.get("RepoDigests") or []:
        repository, dummy, found = str(entry).partition("@")
        if _docker_hub_short(repository) == wanted and found:
            digest = found
            break
    if not digest and "@" in str(image):
        digest = str(image).split("@", 1)[1]
    return {"digest": digest, "id": str(inspect.get("Id") or "")}


def vllm_multinode_pinned_image(instance, hostvars, images_fact="vllm_server_node_images"):
    """The image every node of a multi-node instance runs: its image at the digest its head pulled.

    The head's digest comes from the head's images fact (vllm_image_pin of its pull); until the head has one
    (an image without a registry digest), the instance's image as it is.
    """
    head = instance.get("multinode_head") or (instance.get("nodes") or [""])[0]
    pin = (_hostvar(hostvars, head, images_fact, {}) or {}).get(instance.get("name")) or {}
    return pinned_image(instance.get("image"), pin.get("digest"))


def vllm_multinode_plans(instances, hostvars, host, inventory_hosts, play_hosts, model_infos=None, mode="container",
                         facts_fact="vllm_server_node_facts", images_fact="vllm_server_node_images"):
    """The plans of this host's multi-node instances: [{name, instance, plan, node, problems}].

    instances: the role's resolved instances (vllm_resolve_instances; only those with multinode count);
    hostvars: Ansible's hostvars, where each node published facts_fact ({interfaces, gpus, platform, instances})
    and, once its image is pulled, images_fact ({instance name: {digest, id}}); host: inventory_hostname;
    play_hosts: the hosts of this play's batch (ansible_play_batch): every node must run the role in it;
    model_infos: llmops.vllm.serving_host_info's models (each cached model's config.json).
    problems: the plan's, and what only the role's run can see: this host not a node, a node outside the
    play, nodes that define the instance differently, compose mode.
    """
    configs = dict((str(m.get("model")), m.get("config") or {}) for m in model_infos or [] if isinstance(m, dict))
    batch = set(str(h) for h in play_hosts or [])
    own = _plain(_hostvar(hostvars, host, facts_fact, {}) or {})
    plans = []
    for instance in instances or []:
        if not instance.get("multinode"):
            continue
        name = str(instance.get("name"))
        nodes = [str(n) for n in instance.get("nodes") or []]
        where = "Instance %s on %s" % (name, host)
        problems = []
        if host not in nodes:
            problems.append("%s: this host lists the instance, but is not one of its nodes (%s). Define a multi-node "
                            "instance only in the variables its nodes read (the group_vars of a group holding exactly "
                            "its nodes), or add %s to vllm_server_instances[%s].nodes."
                            % (where, ", ".join(nodes), host, name))
        if mode != "container":
            problems.append("%s: vllm_server_mode %s does not run instances spanning several hosts; they run in "
                            "container mode only. Set vllm_server_mode: container on its nodes." % (where, mode))
        outside = [n for n in nodes if n not in batch]
        if outside:
            problems.append("%s: node%s %s of the instance %s not in this run (a --limit, a host that failed earlier, "
                            "or a serial batch that splits the instance). Every node of an instance starts, changes "
                            "and stops together: run the play on all of %s."
                            % (where, "s" if len(outside) > 1 else "", ", ".join(outside),
                               "are" if len(outside) > 1 else "is", ", ".join(nodes)))
        mine = (own.get("instances") or {}).get(name)
        node_facts = {}
        for node in nodes:
            facts = _plain(_hostvar(hostvars, node, facts_fact, None))
            if facts is None:
                continue
            theirs = (facts.get("instances") or {}).get(name)
            if node != host and node in batch and mine is not None and theirs != mine:
                keys = sorted(k for k in set(mine) | set(theirs or {}) if (theirs or {}).get(k) != mine.get(k))
                problems.append("%s: node %s defines the instance differently (%s). Define it once, in the variables "
                                "every node of it reads (its group's group_vars), not per host."
                                % (where, node, ", ".join(keys) if theirs else "it does not list it"))
            pin = (_plain(_hostvar(hostvars, node, images_fact, {})) or {}).get(name) or {}
            entry = {"interfaces": facts.get("interfaces") or {}, "platform": facts.get("platform")}
            if facts.get("gpus") is not None:
                entry["gpus"] = facts.get("gpus")
            if pin.get("digest"):
                entry["image_digest"] = pin["digest"]
            if pin.get("id"):
                entry["image_id"] = pin["id"]
            node_facts[node] = entry
        plan = vllm_multinode_plan(instance, node_facts, inventory_hosts, configs.get(str(instance.get("model"))))
        plans.append({"name": name, "instance": instance, "plan": plan, "node": vllm_multinode_node(plan, host),
                      "problems": problems + [_on_host(p, name, host) for p in plan["problems"]]})
    # each node's health agent listens on its instance's health_port: one agent a port on a host
    by_port = {}
    for entry in plans:
        by_port.setdefault(_ports(entry["instance"])["health_port"], []).append(entry["name"])
    for entry in plans:
        port = _ports(entry["instance"])["health_port"]
        others = [n for n in by_port[port] if n != entry["name"]]
        if others:
            entry["problems"].append(
                "Instance %s on %s: its health_port %d is also the health port of %s on this host (default %d). Give each "
                "multi-node instance of a host its own vllm_server_instances[].health_port."
                % (entry["name"], host, port, ", ".join(others), DEFAULT_HEALTH_PORT))
    return plans


def _on_host(problem, name, host):
    """'Instance big: ...' -> 'Instance big on gpu1: ...': the role's messages name the host."""
    prefix = "Instance %s" % name
    return "%s on %s%s" % (prefix, host, problem[len(prefix):]) if problem.startswith(prefix) else problem


# What every node of an instance must define alike: a node that differs would run another plan.
SIGNATURE_KEYS = ("name", "model", "served_model_name", "port", "options", "image", "revision", "nodes", "head",
                  "gpus_per_node", "shape", "executor", "cluster_interface", "master_port", "data_parallel_rpc_port",
                  "ray_port", "health_port")


def vllm_multinode_signatures(instances):
    """{name: the keys every node must define alike} of the multi-node instances among resolved instances."""
    return dict((str(i.get("name")), dict((k, _plain(i[k])) for k in SIGNATURE_KEYS if k in i))
                for i in instances or [] if i.get("multinode"))


def vllm_multinode_restarts(plans, hostvars, down_fact="vllm_server_multinode_down"):
    """Names of the multi-node instances to stop and start again on every node: those of which any node
    published in down_fact that its container is missing, stopped, changing, unhealthy or reconfigured."""
    names = []
    for entry in plans or []:
        for node in entry["plan"].get("nodes") or []:
            if entry["name"] in (_hostvar(hostvars, node["host"], down_fact, []) or []) and entry["name"] not in names:
                names.append(entry["name"])
    return names


NFT_TABLE = "llmops_vllm_cluster"


def vllm_resolved_addresses(registered, loop_var="item"):
    """{name: [address, ...]} from an ansible.builtin.getent (database ahosts, fail_key false) task looped over names:
    every IPv4 and IPv6 address each name resolved to on this host, sorted; [] for a name that did not resolve.
    IPv6 link-local addresses are left out (fe80::/10 means nothing without its interface)."""
    found = {}
    for result in (registered or {}).get("results") or []:
        if result.get("skipped"):
            continue
        name = str(result.get(loop_var))
        table = ((result.get("ansible_facts") or {}).get("getent_ahosts") or {})
        addresses = []
        for key in table:
            try:
                address = ipaddress.ip_address(str(key))
            except ValueError:
                continue
            if address.version == 6 and address.is_link_local:
                continue
            if str(address) not in addresses:
                addresses.append(str(address))
        found[name] = sorted(addresses, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
    return found


def _split_families(addresses):
    """(IPv4 addresses, IPv6 addresses) of addresses, each once, sorted."""
    parsed = []
    for text in addresses or []:
        try:
            address = ipaddress.ip_address(str(text).strip())
        except ValueError:
            raise AnsibleFilterError("%r is not an IP address (a gateway host's, as this host resolved it)" % (text,))
        if address not in parsed:
            parsed.append(address)
    return ([str(a) for a in sorted(a for a in parsed if a.version == 4)],
            [str(a) for a in sorted(a for a in parsed if a.version == 6)])


def vllm_multinode_nftables(plans, gateways=None):
    """The nftables rule set of this host's nodes: each fixed cluster port it listens on is accepted from the
    instance's other nodes on the cluster interface (and from the host itself) and dropped from anywhere else.

    A head's health agent (the port the gateway checks) is accepted from the instance's other nodes on the
    cluster interface, from the gateway hosts (gateways: {name: [address, ...]} as this host resolved them, or a
    list of addresses; on any interface: the gateway reaches the head where its API is) and from the host itself,
    and dropped from anywhere else (issue 22: nothing but the key-protected API answers strangers).
    The kernel-chosen ports (Gloo, NCCL, vLLM's ZMQ queues, Ray's workers) are not covered: see docs/multinode.md.
    The table is replaced as a whole when nft reads the file (table; delete table; table {...}).
    """
    if isinstance(gateways, dict):
        gateway_addresses = [a for name in sorted(gateways) for a in gateways[name] or []]
    else:
        gateway_addresses = list(gateways or [])
    gateway4, gateway6 = _split_families(gateway_addresses)
    rules = []
    for entry in plans or []:
        node = entry.get("node") or {}
        firewall = node.get("firewall") or {}
        peers = firewall.get("accept_from") or []
        for listen in node.get("listens") or []:
            port = int(listen["port"])
            rules.append("    # %s: %s" % (entry["name"], listen["what"]))
            if peers:
                rules.append('    iifname "%s" ip saddr { %s } tcp dport %d accept'
                             % (firewall["interface"], ", ".join(peers), port))
            rules.append("    tcp dport %d drop" % port)
        health = node.get("health") or {}
        if node.get("role") == "head" and health.get("port"):
            port = int(health["port"])
            rules.append("    # %s: the head's health agent (llmops-vllm-health@), checked by the gateway" % entry["name"])
            if peers:
                rules.append('    iifname "%s" ip saddr { %s } tcp dport %d accept'
                             % (firewall["interface"], ", ".join(peers), port))
            if gateway4:
                rules.append("    ip saddr { %s } tcp dport %d accept" % (", ".join(gateway4), port))
            if gateway6:
                rules.append("    ip6 saddr { %s } tcp dport %d accept" % (", ".join(gateway6), port))
            rules.append("    tcp dport %d drop" % port)
    lines = ["# Managed by Ansible (llmops.vllm.vllm_server): the fixed cluster ports of the multi-node vLLM instances",
             "# of this host, open to their other nodes on the cluster interface only, and a head's health agent to",
             "# its nodes and the gateway hosts (docs/multinode.md).",
             "table inet %s" % NFT_TABLE,
             "delete table inet %s" % NFT_TABLE,
             "table inet %s {" % NFT_TABLE,
             "  chain input {",
             "    type filter hook input priority filter - 10; policy accept;",
             '    iifname "lo" accept'] + rules + ["  }", "}"]
    return "\n".join(lines) + "\n"


def vllm_multinode_heads(plans):
    """Names of the instances of which this host is the head (its health agent is the one the gateway checks)."""
    return [entry["name"] for entry in plans or [] if (entry.get("node") or {}).get("role") == "head"]


def vllm_upgrade_batches(hosts, hostvars, serial=1, instances_var="vllm_server_instances"):
    """The host order and serial batch sizes of a rollout that never splits a multi-node instance.

    hosts: the play's hosts in inventory order; serial: hosts per batch (a number; a group of nodes larger than
    it gets a batch of its own). Returns {hosts: [...], serial: [sizes]} for the play's hosts: and serial:.
    """
    try:
        size = max(1, int(serial))
    except (TypeError, ValueError):
        raise AnsibleFilterError("llmops_upgrade_serial must be a number of hosts, not %r" % (serial,))
    hosts = [str(h) for h in hosts or []]
    group_of = dict((h, [h]) for h in hosts)
    for host in hosts:
        for instance in _hostvar(hostvars, host, instances_var, []) or []:
            try:
                nodes = instance.get("nodes") if isinstance(instance, dict) else None
            except Exception:  # a value that cannot be templated here (a role default it names): no nodes to read
                nodes = None
            if not isinstance(nodes, (list, tuple)) or not nodes:
                continue
            members = [str(n) for n in nodes if str(n) in group_of]
            merged = []
            for member in members:
                for h in group_of[member]:
                    if h not in merged:
                        merged.append(h)
            for h in merged:
                group_of[h] = merged
    groups = []
    for host in hosts:
        group = sorted(group_of[host], key=hosts.index)
        if group not in groups:
            groups.append(group)
    ordered, sizes, current = [], [], 0
    for group in groups:
        if current and current + len(group) > size:
            sizes.append(current)
            current = 0
        ordered.extend(group)
        current += len(group)
        if current >= size:
            sizes.append(current)
            current = 0
    if current:
        sizes.append(current)
    return {"hosts": ordered, "serial": sizes or [size]}


def vllm_image_pins(registered, loop_var="_vllm_server_instance"):
    """{instance name: vllm_image_pin} from a docker_image_info task looped over multi-node instances."""
    pins = {}
    for result in (registered or {}).get("results") or []:
        instance = result.get(loop_var) or {}
        if result.get("skipped"):
            continue
        pins[str(instance.get("name"))] = vllm_image_pin(result, instance.get("image"))
    return pins


def vllm_multinode_down(probe, reconfigured=None, loop_var="_vllm_server_multinode"):
    """Names of this host's multi-node instances whose node must restart with all the others: its container
    would change (missing, stopped, other arguments or image: the check-mode probe says changed), its files
    changed (reconfigured), or it is the head and Docker's health check calls it unhealthy."""
    down = []
    reconfigured = list(reconfigured or [])
    for result in (probe or {}).get("results") or []:
        entry = result.get(loop_var) or {}
        name = entry.get("name")
        if result.get("skipped") or not name:
            continue
        health = (((result.get("container") or {}).get("State") or {}).get("Health") or {}).get("Status")
        if result.get("changed") or name in reconfigured or health == "unhealthy":
            if name not in down:
                down.append(name)
    return down


def vllm_multinode_unverified(plans, hostvars, verification_fact="vllm_server_verification"):
    """Sentences for the multi-node instances this host is a worker of whose head did not verify (its chat
    completion failed, or the head left the run): the worker's run fails too, so that it records nothing
    and an upgrade's rescue puts the previous instances back on every node together."""
    problems = []
    for entry in plans or []:
        node = entry.get("node") or {}
        if node.get("role") != "worker":
            continue
        head = entry["plan"]["head"]
        results = (_plain(_hostvar(hostvars, head, verification_fact, {})) or {}).get("results") or []
        mine = [r for r in results if ((r.get("_vllm_server_instance") or {}).get("name")) == entry["name"]]
        if not mine or any(r.get("failed") for r in mine):
            problems.append("Instance %s: its head %s did not answer a chat completion in this run (see the head's "
                            "verification above), so its worker %s fails with it." % (entry["name"], head, node["host"]))
    return problems


class FilterModule(object):
    def filters(self):
        return {
            "vllm_is_multinode": vllm_is_multinode,
            "vllm_node_interfaces": vllm_node_interfaces,
            "vllm_multinode_plan": vllm_multinode_plan,
            "vllm_multinode_node": vllm_multinode_node,
            "vllm_image_pin": vllm_image_pin,
            "vllm_image_pins": vllm_image_pins,
            "vllm_multinode_down": vllm_multinode_down,
            "vllm_multinode_unverified": vllm_multinode_unverified,
            "vllm_multinode_pinned_image": vllm_multinode_pinned_image,
            "vllm_multinode_plans": vllm_multinode_plans,
            "vllm_multinode_signatures": vllm_multinode_signatures,
            "vllm_multinode_restarts": vllm_multinode_restarts,
            "vllm_multinode_nftables": vllm_multinode_nftables,
            "vllm_multinode_heads": vllm_multinode_heads,
            "vllm_resolved_addresses": vllm_resolved_addresses,
            "vllm_upgrade_batches": vllm_upgrade_batches,
        }
