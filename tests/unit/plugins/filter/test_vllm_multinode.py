"""The multi-node plan of one vLLM instance spanning several hosts (issue 13, groundwork).

The model configs are real config.json values: Llama-3.1-405B (128 heads, 8 KV heads, 126 layers),
Qwen2.5-1.5B-Instruct (12 heads, 2 KV heads, 28 layers).
"""

import pytest

from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import (
    vllm_is_multinode, vllm_multinode_node, vllm_multinode_nftables, vllm_multinode_plan, vllm_node_interfaces)

LLAMA_405B = {"num_attention_heads": 128, "num_key_value_heads": 8, "num_hidden_layers": 126}
QWEN_1_5B = {"num_attention_heads": 12, "num_key_value_heads": 2, "num_hidden_layers": 28}
HOSTS = ["gpu1", "gpu2", "gpu3", "gpu4", "ops"]
DIGEST = "sha256:" + "a" * 64


def instance(**kw):
    i = {"name": "big", "model": "meta-llama/Llama-3.1-405B-Instruct", "port": 8000, "bind_address": "0.0.0.0",
         "image": "vllm/vllm-openai:v0.32.0", "nodes": ["gpu1", "gpu2"], "gpus_per_node": 8, "shape": "pipeline",
         "executor": "mp", "cluster_interface": "ens5", "options": {"max_model_len": 8192}}
    i.update(kw)
    return i


def facts(hosts=("gpu1", "gpu2"), gpus=8, platform="cuda", digest=DIGEST, interface="ens5"):
    return dict((h, {"interfaces": {"eth0": "192.0.2.%d" % (i + 1), interface: "10.0.0.%d" % (i + 1)},
                     "gpus": gpus, "platform": platform, "image_digest": digest}) for i, h in enumerate(hosts))


def plan(inst=None, node_facts=None, hosts=HOSTS, config=LLAMA_405B):
    return vllm_multinode_plan(inst or instance(), facts() if node_facts is None else node_facts, hosts, config)


def problems(*args, **kwargs):
    return " ".join(plan(*args, **kwargs)["problems"])


def args_of(p, host):
    return vllm_multinode_node(p, host)["vllm_args"]


def opt(args, flag):
    """The value after flag in args (True for a flag without one, None when absent)."""
    if flag not in args:
        return None
    i = args.index(flag)
    return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True


# ---- sizes derived from the shape ------------------------------------------------------------------

def test_pipeline_is_tensor_within_a_node_and_pipeline_across_nodes():
    p = plan()
    assert p["problems"] == []
    assert p["sizes"] == {"tensor_parallel_size": 8, "pipeline_parallel_size": 2, "data_parallel_size": 1,
                          "data_parallel_size_local": 0, "world_size": 16}


def test_tensor_spans_every_gpu_of_every_node():
    p = plan(instance(shape="tensor"))
    assert p["problems"] == []
    assert (p["sizes"]["tensor_parallel_size"], p["sizes"]["pipeline_parallel_size"]) == (16, 1)


def test_data_is_one_replica_per_node_by_default_and_more_with_a_smaller_tensor_size():
    p = plan(instance(shape="data"))
    assert p["problems"] == [] and p["sizes"]["data_parallel_size"] == 2 and p["sizes"]["data_parallel_size_local"] == 1
    p = plan(instance(shape="data", options={"tensor_parallel_size": 2}), config=QWEN_1_5B)
    assert p["problems"] == []
    assert (p["sizes"]["tensor_parallel_size"], p["sizes"]["data_parallel_size_local"], p["sizes"]["data_parallel_size"]) == (2, 4, 8)


# ---- the arguments of each node ---------------------------------------------------------------------

def test_mp_pipeline_head_and_headless_worker_follow_vllms_multiproc_recipe():
    p = plan()
    head, worker = args_of(p, "gpu1"), args_of(p, "gpu2")
    for args, rank in ((head, "0"), (worker, "1")):
        assert opt(args, "--nnodes") == "2" and opt(args, "--node-rank") == rank
        assert opt(args, "--master-addr") == "10.0.0.1" and opt(args, "--master-port") == "29501"
        assert opt(args, "--tensor-parallel-size") == "8" and opt(args, "--pipeline-parallel-size") == "2"
        assert opt(args, "--distributed-executor-backend") == "mp"
    assert "--headless" not in head and opt(worker, "--headless") is True
    assert opt(head, "--port") == "8000" and "--port" not in worker


def test_mp_data_parallel_head_has_no_start_rank_and_workers_start_at_their_first_replica():
    p = plan(instance(nodes=["gpu1", "gpu2", "gpu3"], shape="data", options={"tensor_parallel_size": 4}),
             facts(("gpu1", "gpu2", "gpu3")), config=QWEN_1_5B)
    assert p["problems"] == []
    head = args_of(p, "gpu1")
    # with a start rank and without --headless vLLM would switch to hybrid load balancing
    assert "--data-parallel-start-rank" not in head and "--headless" not in head
    assert opt(head, "--data-parallel-size") == "6" and opt(head, "--data-parallel-size-local") == "2"
    assert opt(head, "--data-parallel-address") == "10.0.0.1" and opt(head, "--data-parallel-rpc-port") == "29550"
    assert opt(args_of(p, "gpu2"), "--data-parallel-start-rank") == "2"
    assert opt(args_of(p, "gpu3"), "--data-parallel-start-rank") == "4"
    assert opt(args_of(p, "gpu3"), "--headless") is True
    assert "--nnodes" not in head


def test_ray_workers_run_only_ray_and_the_head_serves_with_the_ray_executor():
    p = plan(instance(executor="ray", ray_port=6380))
    head, worker = vllm_multinode_node(p, "gpu1"), vllm_multinode_node(p, "gpu2")
    assert head["ray_start"] == ["ray", "start", "--head", "--node-ip-address=10.0.0.1", "--port=6380"]
    assert worker["ray_start"] == ["ray", "start", "--block", "--address=10.0.0.1:6380", "--node-ip-address=10.0.0.2"]
    assert worker["vllm_args"] == []
    assert opt(head["vllm_args"], "--distributed-executor-backend") == "ray"
    assert "--nnodes" not in head["vllm_args"] and "--master-addr" not in head["vllm_args"]
    assert [s["step"] for s in p["start_order"]] == ["head", "workers", "server"]


def test_env_names_the_cluster_interface_exactly_and_each_nodes_own_address():
    p = plan()
    for host, address in (("gpu1", "10.0.0.1"), ("gpu2", "10.0.0.2")):
        env = vllm_multinode_node(p, host)["env"]
        assert env == {"VLLM_HOST_IP": address, "NCCL_SOCKET_IFNAME": "=ens5", "GLOO_SOCKET_IFNAME": "ens5"}


def test_explicit_head_goes_first_and_ranks_follow_the_list():
    p = plan(instance(nodes=["gpu1", "gpu2", "gpu3"], head="gpu3", shape="tensor", gpus_per_node=4),
             facts(("gpu1", "gpu2", "gpu3"), gpus=4), config=QWEN_1_5B)
    assert p["problems"] == []
    assert [(n["host"], n["role"], n["rank"]) for n in p["nodes"]] == [
        ("gpu3", "head", 0), ("gpu1", "worker", 1), ("gpu2", "worker", 2)]
    assert p["start_order"] == [{"step": "head", "hosts": ["gpu3"]}, {"step": "workers", "hosts": ["gpu1", "gpu2"]}]
    assert p["head_address"] == "10.0.0.3"


def test_cluster_ports_are_open_only_to_the_peers_on_the_cluster_interface():
    p = plan(instance(nodes=["gpu1", "gpu2", "gpu3"], shape="tensor", gpus_per_node=4), facts(("gpu1", "gpu2", "gpu3"), gpus=4),
             config=QWEN_1_5B)
    head = vllm_multinode_node(p, "gpu1")
    assert head["firewall"] == {"interface": "ens5", "accept_from": ["10.0.0.2", "10.0.0.3"]}
    assert [(port["port"], port["proto"]) for port in head["listens"]] == [(29501, "tcp")]
    # a worker listens on no fixed cluster port of vLLM's, only on its health agent's, which the head asks
    assert [(port["port"], port["bound_to"]) for port in vllm_multinode_node(p, "gpu2")["listens"]] == [(29560, "10.0.0.2")]
    data = plan(instance(shape="data"))
    assert vllm_multinode_node(data, "gpu1")["listens"][0]["port"] == 29550
    assert vllm_multinode_node(data, "gpu1")["listens"][0]["bound_to"] == "10.0.0.1"
    assert all(n["restart_policy"] == "no" and n["network_mode"] == "host" for n in p["nodes"])


def test_each_node_gets_a_health_agent_and_the_head_s_asks_every_other_node():
    """docs/multinode.md: the gateway checks the head's agent, which answers 200 only while the head's vLLM and every
    other node's agent do; a worker's agent answers for its own container, on its cluster address."""
    p = plan(instance(nodes=["gpu1", "gpu2", "gpu3"], shape="tensor", gpus_per_node=4, port=8001),
             facts(("gpu1", "gpu2", "gpu3"), gpus=4), config=QWEN_1_5B)
    head, worker = vllm_multinode_node(p, "gpu1"), vllm_multinode_node(p, "gpu3")
    assert head["health"] == {"listen": "0.0.0.0", "port": 29560, "container": "big",
                              "vllm_health": "http://127.0.0.1:8001/health", "peers": ["10.0.0.2:29560", "10.0.0.3:29560"]}
    assert worker["health"] == {"listen": "10.0.0.3", "port": 29560, "container": "big", "vllm_health": "", "peers": []}
    # the head's agent listens where its API does; its own vLLM is asked there too
    bound = plan(instance(bind_address="10.9.0.1", health_port=30000))
    assert vllm_multinode_node(bound, "gpu1")["health"]["listen"] == "10.9.0.1"
    assert vllm_multinode_node(bound, "gpu1")["health"]["vllm_health"].startswith("http://10.9.0.1:")
    assert vllm_multinode_node(bound, "gpu1")["health"]["peers"] == ["10.0.0.2:30000"]
    # the worker's agent port is in its firewall's rules (the head asks it); the head's admits its nodes and
    # the gateway hosts (test_the_head_s_health_agent_admits_its_nodes_and_the_gateway_hosts_only)
    rules = vllm_multinode_nftables([{"name": "big", "node": vllm_multinode_node(p, "gpu2")}])
    assert 'iifname "ens5" ip saddr { 10.0.0.1, 10.0.0.3 } tcp dport 29560 accept' in rules
    assert "tcp dport 29560 drop" in rules
    head_rules = vllm_multinode_nftables([{"name": "big", "node": head}], {"gw1": ["192.0.2.50"]})
    assert 'iifname "ens5" ip saddr { 10.0.0.2, 10.0.0.3 } tcp dport 29560 accept' in head_rules
    assert "ip saddr { 192.0.2.50 } tcp dport 29560 accept\n    tcp dport 29560 drop" in head_rules


def test_image_is_pinned_to_the_digest_and_config_holds_no_cluster_option():
    p = plan(instance(options={"max_model_len": 8192, "tensor_parallel_size": 8}))
    # repository@digest without the tag: community.docker reads name:tag@digest as repository name:tag
    assert p["image"] == "vllm/vllm-openai@" + DIGEST
    assert p["config"] == {"served-model-name": "meta-llama/Llama-3.1-405B-Instruct", "max-model-len": 8192}
    assert p["config_path"] == "/etc/vllm/big.yaml"


# ---- what preflight refuses -------------------------------------------------------------------------

def test_sizes_that_do_not_match_nodes_times_gpus_are_refused_naming_the_variables():
    text = problems(instance(options={"tensor_parallel_size": 8, "pipeline_parallel_size": 4}))
    assert "Instance big: tensor_parallel_size 8 x pipeline_parallel_size 4 x data_parallel_size 1 = 32 GPUs" in text
    assert "2 nodes x gpus_per_node 8 give 16" in text
    assert "data_parallel_size 3 in its options does not match" in problems(instance(shape="data", options={"data_parallel_size": 3}))
    assert "do not fill the 8 GPUs of each node" in problems(instance(shape="data", options={"tensor_parallel_size": 3}))
    assert "data_parallel_size must be 1" in problems(instance(shape="tensor", options={"data_parallel_size": 2}))
    assert plan(instance(options={"tensor_parallel_size": 8, "pipeline_parallel_size": 4}))["nodes"] == []


def test_tensor_size_that_does_not_divide_the_heads_is_refused():
    text = problems(instance(nodes=["gpu1", "gpu2", "gpu3"], shape="tensor", gpus_per_node=8),
                    facts(("gpu1", "gpu2", "gpu3")), config=QWEN_1_5B)
    assert "has 12 attention heads, which tensor_parallel_size 24 does not divide" in text
    assert "vllm_server_instances" not in text or "gpus_per_node" in text
    assert "2 key/value heads" not in text  # 24 is a multiple of 2


def test_tensor_size_that_fits_neither_way_with_the_kv_heads_is_refused():
    config = {"num_attention_heads": 24, "num_key_value_heads": 8, "num_hidden_layers": 40}
    text = problems(instance(shape="tensor", gpus_per_node=6), facts(gpus=6), config=config)
    assert "8 key/value heads; tensor_parallel_size 12 must divide them or be a multiple of them" in text


def test_more_pipeline_stages_than_layers_are_refused():
    text = problems(instance(nodes=["gpu1", "gpu2", "gpu3", "gpu4"], gpus_per_node=1),
                    facts(("gpu1", "gpu2", "gpu3", "gpu4"), gpus=1), config={"num_attention_heads": 4, "num_hidden_layers": 2})
    assert "pipeline_parallel_size 4 is larger than the 2 layers" in text


def test_differing_image_digests_are_refused_naming_each_node():
    f = facts()
    f["gpu2"]["image_digest"] = "sha256:" + "b" * 64
    text = problems(node_facts=f)
    assert "its nodes run different images (gpu1 sha256:aaa" in text and "gpu2 sha256:bbb" in text
    assert "vllm_server_instances[big].image" in text


def test_a_node_without_the_cluster_interface_is_refused():
    f = facts()
    del f["gpu2"]["interfaces"]["ens5"]
    text = problems(node_facts=f)
    assert "node gpu2 has no IPv4 address on cluster_interface ens5 (it has: eth0)" in text
    assert "vllm_server_instances[big].cluster_interface" in text
    assert "cluster_interface names the network interface" in problems(instance(cluster_interface=""))


def test_ray_on_the_cpu_platform_is_refused_and_mp_on_it_is_not():
    text = problems(instance(executor="ray", gpus_per_node=1), facts(gpus=0, platform="cpu"), config=QWEN_1_5B)
    assert "executor ray on node gpu1, whose vLLM platform is cpu" in text
    assert "current platform cpu does not support ray" in text and "executor: mp" in text
    assert problems(instance(shape="data", gpus_per_node=1), facts(gpus=0, platform="cpu"), config=QWEN_1_5B) == ""


def test_a_node_listed_twice_or_missing_from_the_inventory_is_refused():
    assert "lists node gpu2 twice" in problems(instance(nodes=["gpu1", "gpu2", "gpu2"]))
    text = problems(instance(nodes=["gpu1", "gpu9"]), facts(("gpu1",)))
    assert "lists node gpu9, which is not in the inventory" in text
    assert "vllm_server_instances[big].nodes" in text


def test_more_refusals_each_name_what_to_change():
    assert "its head gpu7 is not one of its nodes" in problems(instance(head="gpu7"))
    assert "shape must be one of data, tensor, pipeline" in problems(instance(shape="both"))
    assert "executor must be mp" in problems(instance(executor="slurm"))
    assert "gpus_per_node must be" in problems(instance(gpus_per_node=0))
    assert "tensor_parallel_size in its options must be a whole number of at least 1, not 'eight'. Fix " \
        "vllm_server_instances[big].options.tensor_parallel_size." in problems(instance(options={"tensor_parallel_size": "eight"}))
    assert "node gpu2 has 4 GPUs, fewer than gpus_per_node 8" in problems(
        node_facts=dict(facts(), gpu2=dict(facts()["gpu2"], gpus=4)))
    assert "no facts of node gpu2" in problems(node_facts={"gpu1": facts()["gpu1"]})
    assert "node_rank is set by the multi-node plan" in problems(instance(options={"node_rank": 1}))
    assert "headless is set by the multi-node plan" in problems(instance(options={"headless": True}))
    f = facts()
    f["gpu2"]["interfaces"]["ens5"] = "10.0.0.1"
    assert "nodes gpu1 and gpu2 have the same address 10.0.0.1" in problems(node_facts=f)


def test_every_message_names_the_instance():
    p = plan(instance(nodes=["gpu1", "gpu1", "gpu9"], shape="x", executor="y", gpus_per_node=0, cluster_interface=""))
    assert len(p["problems"]) >= 5
    assert all(m.startswith("Instance big") for m in p["problems"])


# ---- helpers ----------------------------------------------------------------------------------------

def test_node_interfaces_come_from_ansible_network_facts():
    ansible_facts = {"interfaces": ["lo", "eth0", "ens5", "br-1a2b", "wg0"],
                     "lo": {"ipv4": {"address": "127.0.0.1"}}, "eth0": {"ipv4": {"address": "192.0.2.7"}},
                     "ens5": {"ipv4": {"address": "10.0.0.7"}}, "br_1a2b": {"ipv4": {"address": "172.18.0.1"}},
                     "wg0": {"ipv6": [{"address": "fd00::1"}]}}
    assert vllm_node_interfaces(ansible_facts) == {"lo": "127.0.0.1", "eth0": "192.0.2.7", "ens5": "10.0.0.7",
                                                   "br-1a2b": "172.18.0.1"}
    assert vllm_node_interfaces(None) == {}


def test_only_an_instance_with_nodes_is_multinode_and_a_node_outside_gets_nothing():
    assert vllm_is_multinode(instance()) and not vllm_is_multinode({"name": "vllm", "model": "m"})
    assert not vllm_is_multinode(instance(nodes=[]))
    assert vllm_multinode_node(plan(), "ops") == {}


@pytest.mark.parametrize("nodes", [None, "gpu1,gpu2", []])
def test_nodes_that_are_not_a_list_raise(nodes):
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="nodes must be a list"):
        vllm_multinode_plan(instance(nodes=nodes), facts(), HOSTS)


def test_the_examples_of_docs_multinode_are_what_the_plan_renders():
    import os
    import re

    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
    with open(os.path.join(root, "docs", "multinode-design.md")) as f:
        documented = set(re.sub(r"\s+", " ", line).strip() for line in f)
    two = dict((h, {"interfaces": {"ens5": "10.0.0.%d" % (11 + i)}, "gpus": 8, "platform": "cuda"})
               for i, h in enumerate(("gpu-01", "gpu-02")))
    checked = 0
    for shape, executor in (("data", "mp"), ("pipeline", "mp"), ("pipeline", "ray")):
        p = vllm_multinode_plan(instance(name="llama405b", nodes=["gpu-01", "gpu-02"], shape=shape, executor=executor,
                                         options={"max_model_len": 16384}), two, ["gpu-01", "gpu-02"], LLAMA_405B)
        assert p["problems"] == []
        for node in p["nodes"]:
            lines = []
            if node["ray_start"]:
                lines.append("%s %s: %s" % (node["host"], node["role"], " ".join(node["ray_start"])))
            if node["vllm_args"]:
                lines.append("%s %s: vllm serve MODEL --config %s %s" % (node["host"], node["role"], p["config_path"],
                                                                       " ".join(node["vllm_args"])))
            for line in lines:
                assert line in documented, "docs/multinode-design.md lacks: " + line
                checked += 1
    assert checked == 7
