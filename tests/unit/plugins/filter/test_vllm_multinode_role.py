"""The vllm_server role's wiring of multi-node instances (issue 13): the filters its tasks call.

Each test builds what the role builds (resolved instances, the facts every node publishes through
hostvars) and checks what the tasks would act on: the plans and their refusals, the container of each
node, the pinned image, which instances restart on every node, the firewall rule set, the upgrade
batches and what each host serves.
"""

import re
import shlex

import pytest

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import (
    vllm_instances_served_here, vllm_resolve_instances)
from ansible_collections.llmops.vllm.plugins.filter.vllm_state import vllm_found_instances, vllm_instance_state
from ansible_collections.llmops.vllm.plugins.filter.vllm_container import vllm_container, vllm_multinode_container
from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import (
    vllm_image_pin, vllm_multinode_heads, vllm_multinode_nftables, vllm_multinode_pinned_image, vllm_multinode_plans,
    vllm_multinode_restarts, vllm_multinode_signatures, vllm_resolved_addresses, vllm_upgrade_batches)

IMAGE = "vllm/vllm-openai:v0.32.0"
DIGEST = "sha256:" + "d" * 64
DEFAULTS = {"served_model_name": "", "port": 8000, "bind_address": "0.0.0.0", "gpus": "all", "options": {},
            "env": {}, "image": IMAGE, "download": False, "shutdown_timeout": 60}
SETTINGS = {"models_dir": "/data/vllm/models", "logs_dir": "/data/vllm/logs", "configs_dir": "/data/vllm/configs",
            "timezone": "Etc/UTC", "log_to_file": True, "hf_endpoint": "", "compile_cache": True, "ipc_mode": "host",
            "shm_size": "", "capabilities": [], "security_opts": [], "restart_policy": "unless-stopped",
            "entrypoint": ["vllm", "serve"], "verify_timeout": 1800, "mode": "container", "shutdown_timeout": 60}
HOSTS = ["gpu1", "gpu2", "gpu3", "ops"]
QWEN = {"num_attention_heads": 12, "num_key_value_heads": 2, "num_hidden_layers": 28}


def multinode(**kw):
    i = {"name": "big", "model": "Qwen/Qwen2.5-1.5B-Instruct", "port": 8000, "nodes": ["gpu1", "gpu2"],
         "gpus_per_node": 2, "shape": "data", "executor": "mp", "cluster_interface": "ens5",
         "options": {"max_model_len": 4096}}
    i.update(kw)
    return i


def resolve(instances, gpus=2):
    return vllm_resolve_instances(instances, DEFAULTS, gpus)


def node_facts(host, instances, index, interface="ens5", gpus=2, platform="cuda"):
    return {"interfaces": {"eth0": "192.0.2.%d" % index, interface: "10.0.0.%d" % index}, "gpus": gpus,
            "platform": platform, "instances": vllm_multinode_signatures(instances)}


def hostvars_for(instances, hosts=("gpu1", "gpu2"), images=None, **kw):
    hv = {}
    for index, host in enumerate(hosts, 1):
        hv[host] = {"vllm_server_node_facts": node_facts(host, instances, index, **kw)}
        if images is not None:
            hv[host]["vllm_server_node_images"] = images.get(host, {})
    return hv


def plans(instances, host="gpu1", hv=None, play=("gpu1", "gpu2"), mode="container"):
    hv = hostvars_for(instances) if hv is None else hv
    return vllm_multinode_plans(instances, hv, host, HOSTS, list(play), [{"model": "Qwen/Qwen2.5-1.5B-Instruct",
                                                                        "config": QWEN}], mode)


# ---- resolving --------------------------------------------------------------------------------------

def test_a_multinode_instance_gets_no_derived_size_and_keeps_sizes_out_of_its_config():
    (single,) = resolve([{"name": "one", "model": "m"}])
    assert single["options"]["tensor_parallel_size"] == 2 and not single["multinode"]
    (big,) = resolve([multinode(options={"max_model_len": 4096, "tensor_parallel_size": 1})])
    assert big["multinode"] and big["multinode_head"] == "gpu1"
    assert "tensor-parallel-size" not in big["config"] and big["config"]["max-model-len"] == 4096
    assert big["options"]["tensor_parallel_size"] == 1, "the plan reads the given size"
    assert resolve([multinode(head="gpu2")])[0]["multinode_head"] == "gpu2"


def test_the_state_record_keeps_what_makes_an_instance_multinode():
    (big,) = resolve([multinode()])
    (state,) = vllm_instance_state([big])
    assert state["nodes"] == ["gpu1", "gpu2"] and state["shape"] == "data" and state["cluster_interface"] == "ens5"
    assert "multinode" not in state, "derived again when the state is resolved"


def test_a_worker_serves_no_api_and_the_head_does():
    instances = resolve([{"name": "one", "model": "m", "port": 8001}, multinode()])
    assert [i["name"] for i in vllm_instances_served_here(instances, "gpu1")] == ["one", "big"]
    assert [i["name"] for i in vllm_instances_served_here(instances, "gpu2")] == ["one"]


# ---- plans and refusals ------------------------------------------------------------------------------

def test_each_node_gets_its_part_of_the_plan():
    instances = resolve([multinode()])
    (head,) = plans(instances, "gpu1")
    (worker,) = plans(instances, "gpu2")
    assert head["problems"] == [] and worker["problems"] == []
    assert head["node"]["role"] == "head" and worker["node"]["role"] == "worker"
    assert head["plan"]["sizes"]["data_parallel_size"] == 2 and head["plan"]["head_address"] == "10.0.0.1"
    assert "--headless" in worker["node"]["vllm_args"]


def test_a_host_that_is_no_node_is_refused():
    instances = resolve([multinode()])
    hv = hostvars_for(instances, hosts=("gpu1", "gpu2", "gpu3"))
    (entry,) = plans(instances, "gpu3", hv, play=("gpu1", "gpu2", "gpu3"))
    assert any("Instance big on gpu3: this host lists the instance, but is not one of its nodes (gpu1, gpu2)" in p
               for p in entry["problems"])


def test_a_node_outside_the_play_is_refused_naming_it():
    instances = resolve([multinode()])
    (entry,) = plans(instances, "gpu1", play=("gpu1",))
    text = " ".join(entry["problems"])
    assert "Instance big on gpu1: node gpu2 of the instance is not in this run" in text
    assert "run the play on all of gpu1, gpu2" in text


def test_compose_mode_is_refused():
    (entry,) = plans(resolve([multinode()]), mode="compose")
    assert any("vllm_server_mode compose does not run instances spanning several hosts" in p for p in entry["problems"])


def test_a_node_that_defines_the_instance_differently_is_refused():
    instances = resolve([multinode()])
    hv = hostvars_for(instances)
    hv["gpu2"]["vllm_server_node_facts"]["instances"] = vllm_multinode_signatures(resolve([multinode(port=9000)]))
    (entry,) = plans(instances, "gpu1", hv)
    assert any("node gpu2 defines the instance differently (port)" in p for p in entry["problems"])


def test_the_plans_refusals_name_the_host():
    instances = resolve([multinode()])
    hv = hostvars_for(instances)
    del hv["gpu2"]["vllm_server_node_facts"]["interfaces"]["ens5"]
    (entry,) = plans(instances, "gpu1", hv)
    assert any(p.startswith("Instance big on gpu1: node gpu2 has no IPv4 address on cluster_interface ens5")
               for p in entry["problems"])
    hv = hostvars_for(instances)
    del hv["gpu2"]
    (entry,) = plans(instances, "gpu1", hv)
    assert any("no facts of node gpu2" in p for p in entry["problems"])


def test_sizes_against_the_gpus_of_the_nodes_are_refused():
    instances = resolve([multinode(shape="tensor", gpus_per_node=4)])
    hv = hostvars_for(instances, gpus=2)
    text = " ".join(plans(instances, "gpu1", hv)[0]["problems"])
    assert "node gpu1 has 2 GPUs, fewer than gpus_per_node 4" in text


# ---- the image: the head's digest on every node -------------------------------------------------------

def test_the_pin_reads_the_digest_of_the_images_own_repository():
    info = {"images": [{"Id": "sha256:" + "1" * 64, "RepoDigests": ["other/repo@sha256:" + "2" * 64,
                                                                     "vllm/vllm-openai@" + DIGEST]}]}
    assert vllm_image_pin(info, IMAGE) == {"digest": DIGEST, "id": "sha256:" + "1" * 64}
    assert vllm_image_pin(info, "docker.io/vllm/vllm-openai:v0.32.0")["digest"] == DIGEST
    assert vllm_image_pin({"images": [{"Id": "sha256:1", "RepoDigests": []}]}, "local/built:1") == {"digest": "",
                                                                                                   "id": "sha256:1"}
    assert vllm_image_pin({"images": []}, IMAGE) == {"digest": "", "id": ""}


def test_every_node_runs_the_heads_digest_without_the_tag():
    instances = resolve([multinode()])
    images = {"gpu1": {"big": {"digest": DIGEST, "id": "sha256:1"}}, "gpu2": {"big": {"digest": DIGEST, "id": "sha256:1"}}}
    hv = hostvars_for(instances, images=images)
    assert vllm_multinode_pinned_image(instances[0], hv) == "vllm/vllm-openai@" + DIGEST
    (entry,) = plans(instances, "gpu2", hv)
    assert entry["plan"]["image"] == "vllm/vllm-openai@" + DIGEST
    assert vllm_multinode_container(entry, SETTINGS)["image"] == "vllm/vllm-openai@" + DIGEST
    assert vllm_multinode_pinned_image(instances[0], hostvars_for(instances)) == IMAGE, "no digest yet: as it is"


def test_nodes_with_different_images_are_refused():
    instances = resolve([multinode()])
    images = {"gpu1": {"big": {"digest": DIGEST, "id": "sha256:1"}}, "gpu2": {"big": {"digest": DIGEST, "id": "sha256:2"}}}
    (entry,) = plans(instances, "gpu1", hostvars_for(instances, images=images))
    assert any("hold different images under the same reference (image ids: gpu1 sha256:1; gpu2 sha256:2)" in p
               for p in entry["problems"])


# ---- the container of each node ---------------------------------------------------------------------------

def test_an_mp_node_runs_on_the_host_network_with_its_cluster_environment():
    instances = resolve([multinode()])
    (head,) = plans(instances, "gpu1")
    (worker,) = plans(instances, "gpu2")
    h = vllm_multinode_container(head, SETTINGS)
    w = vllm_multinode_container(worker, SETTINGS)
    single = vllm_container(instances[0], SETTINGS)
    for c in (h, w):
        assert c["network_mode"] == "host" and c["published_ports"] == [] and c["restart_policy"] == "no"
        assert c["name"] == "big" and c["mounts"] == single["mounts"] and c["device_requests"] == single["device_requests"]
        assert c["entrypoint"][:2] == ["/bin/sh", "-c"] and c["entrypoint"][-2:] == ["vllm", "serve"]
        assert c["env"]["NCCL_SOCKET_IFNAME"] == "=ens5" and c["env"]["GLOO_SOCKET_IFNAME"] == "ens5"
        assert c["env"]["TZ"] == "Etc/UTC"
    assert h["env"]["VLLM_HOST_IP"] == "10.0.0.1" and w["env"]["VLLM_HOST_IP"] == "10.0.0.2"
    assert h["command"][:3] == ["Qwen/Qwen2.5-1.5B-Instruct", "--config", "/etc/vllm/big.yaml"]
    assert h["command"][3:] == head["node"]["vllm_args"] and w["command"][3:] == worker["node"]["vllm_args"]
    assert h["labels"]["org.llmops.vllm.node-role"] == "head" and w["labels"]["org.llmops.vllm.node-role"] == "worker"
    assert h["labels"]["org.llmops.vllm.nodes"] == "gpu1,gpu2"
    assert "http://127.0.0.1:8000/health" in h["healthcheck"]["test"][-1] and h["healthcheck"]["start_period"] == "1800s"
    assert w["healthcheck"] == {"test": ["NONE"]}


def test_the_heads_health_check_asks_the_address_vllm_listens_on():
    instances = resolve([multinode(bind_address="10.0.0.1", port=8100)])
    (head,) = plans(instances, "gpu1")
    assert "http://10.0.0.1:8100/health" in vllm_multinode_container(head, SETTINGS)["healthcheck"]["test"][-1]


def test_a_ray_head_starts_ray_waits_for_every_node_then_serves():
    instances = resolve([multinode(shape="pipeline", executor="ray")])
    (head,) = plans(instances, "gpu1")
    (worker,) = plans(instances, "gpu2")
    assert head["problems"] == []
    h = vllm_multinode_container(head, SETTINGS, 300)
    w = vllm_multinode_container(worker, SETTINGS)
    assert h["entrypoint"][-2:] == ["/bin/sh", "-c"] and h["command"][1] == "vllm-ray-head"
    script = h["command"][0]
    assert script.startswith("ray start --head --node-ip-address=10.0.0.1 --port=6379 || exit 1; ")
    assert "-ge 2 ]" in script and "-ge 300 ]" in script
    serve = script.rsplit("exec ", 1)[1]
    assert shlex.split(serve)[:5] == ["vllm", "serve", "Qwen/Qwen2.5-1.5B-Instruct", "--config", "/etc/vllm/big.yaml"]
    assert shlex.split(serve)[5:] == head["node"]["vllm_args"]
    assert w["command"] == ["ray", "start", "--block", "--address=10.0.0.1:6379", "--node-ip-address=10.0.0.2"]
    assert w["entrypoint"][-1] == "vllm-entrypoint", "the worker's ray start runs under the secrets wrapper"


def test_a_node_without_a_plan_has_no_container():
    instances = resolve([multinode(shape="nonsense")])
    (entry,) = plans(instances, "gpu1")
    with pytest.raises(Exception, match="preflight problems must be fixed first"):
        vllm_multinode_container(entry, SETTINGS)


# ---- restarts, firewall, upgrade batches, uninstall -----------------------------------------------------

def test_an_instance_restarts_on_every_node_when_any_node_is_down():
    instances = resolve([multinode(), multinode(name="other", port=8001)])
    entries = plans(instances, "gpu1")
    hv = {"gpu1": {"vllm_server_multinode_down": []}, "gpu2": {"vllm_server_multinode_down": ["big"]}}
    assert vllm_multinode_restarts(entries, hv) == ["big"]
    assert vllm_multinode_restarts(entries, {"gpu1": {}, "gpu2": {}}) == []


def test_the_firewall_opens_each_fixed_port_to_the_peers_only():
    instances = resolve([multinode()])
    text = vllm_multinode_nftables(plans(instances, "gpu1"))
    assert "delete table inet llmops_vllm_cluster\n" in text
    assert 'iifname "lo" accept' in text
    assert 'iifname "ens5" ip saddr { 10.0.0.2 } tcp dport 29550 accept\n    tcp dport 29550 drop' in text
    assert text.index("accept\n    tcp dport 29550 drop") > 0
    worker_text = vllm_multinode_nftables(plans(instances, "gpu2"))
    # a data parallel worker listens on no fixed port of vLLM's; its health agent's is open to the head only
    assert re.findall(r"dport (\d+)", worker_text) == ["29560", "29560"], worker_text
    assert 'iifname "ens5" ip saddr { 10.0.0.1 } tcp dport 29560 accept\n    tcp dport 29560 drop' in worker_text
    tensor = resolve([multinode(shape="tensor")])
    assert "tcp dport 29501 drop" in vllm_multinode_nftables(plans(tensor, "gpu1", hostvars_for(tensor)))


def _admitted(text, port):
    """{"iif ens5": [...], "any": [...]}: the sources each accept rule of port admits, by where it applies, and
    whether anything else is dropped after them."""
    admitted = {}
    for iif, family, sources in re.findall(r'^    (?:iifname "(\S+)" )?(ip6?) saddr \{ ([^}]*) \} tcp dport %d accept$'
                                           % port, text, re.M):
        key = "iif " + iif if iif else "any"
        admitted.setdefault(key, []).extend(s.strip() for s in sources.split(","))
    return admitted, bool(re.search(r"^    tcp dport %d drop$" % port, text, re.M))


def test_the_head_s_health_agent_admits_its_nodes_and_the_gateway_hosts_only():
    """Issue 22, item 5: the head's health agent (the port the gateway checks) answers the instance's other nodes
    on the cluster interface and the gateway hosts' addresses as the head resolved them (any interface: the
    gateway reaches the head where its API is), loopback, and nobody else."""
    instances = resolve([multinode(nodes=["gpu1", "gpu2", "gpu3"])])
    hv = hostvars_for(instances, hosts=("gpu1", "gpu2", "gpu3"))
    entries = plans(instances, "gpu1", hv, play=("gpu1", "gpu2", "gpu3"))
    assert vllm_multinode_heads(entries) == ["big"]
    gateways = {"gw1": ["192.0.2.50", "2001:db8::50"], "gw2": ["198.51.100.7"]}
    text = vllm_multinode_nftables(entries, gateways)
    admitted, dropped = _admitted(text, 29560)
    assert admitted == {"iif ens5": ["10.0.0.2", "10.0.0.3"], "any": ["192.0.2.50", "198.51.100.7", "2001:db8::50"]}, text
    assert dropped, text
    assert text.index('iifname "lo" accept') < text.index("tcp dport 29560 drop")
    # the rules of the agent come before its drop, and the drop is the last word on the port
    assert text.rindex("dport 29560 accept") < text.index("tcp dport 29560 drop")
    # the instance's fixed cluster port is still the nodes' only: no gateway address on it
    cluster, cluster_dropped = _admitted(text, 29550)
    assert cluster == {"iif ens5": ["10.0.0.2", "10.0.0.3"]} and cluster_dropped, text
    # a second instance headed here, on its own health port, admits the same gateways
    two = resolve([multinode(), multinode(name="other", port=8001, health_port=29561)])
    both = vllm_multinode_nftables(plans(two, "gpu1", hostvars_for(two)), gateways)
    assert _admitted(both, 29561)[0]["any"] == ["192.0.2.50", "198.51.100.7", "2001:db8::50"], both


def test_without_a_gateway_group_the_head_s_agent_admits_its_nodes_only():
    instances = resolve([multinode()])
    entries = plans(instances, "gpu1", hostvars_for(instances))
    for gateways in (None, {}, {"gw1": []}, []):
        admitted, dropped = _admitted(vllm_multinode_nftables(entries, gateways), 29560)
        assert admitted == {"iif ens5": ["10.0.0.2"]} and dropped, gateways


def test_a_worker_s_agent_admits_the_instance_s_nodes_only_whatever_the_gateways():
    instances = resolve([multinode(nodes=["gpu1", "gpu2", "gpu3"])])
    hv = hostvars_for(instances, hosts=("gpu1", "gpu2", "gpu3"))
    entries = plans(instances, "gpu2", hv, play=("gpu1", "gpu2", "gpu3"))
    assert vllm_multinode_heads(entries) == []
    text = vllm_multinode_nftables(entries, {"gw1": ["192.0.2.50"]})
    assert "192.0.2.50" not in text
    admitted, dropped = _admitted(text, 29560)
    assert admitted == {"iif ens5": ["10.0.0.1", "10.0.0.3"]} and dropped, text


def test_the_gateway_hosts_addresses_come_from_getent_as_the_head_resolved_them():
    registered = {"results": [
        {"item": "gw1", "ansible_facts": {"getent_ahosts": {"192.0.2.50": [["STREAM", "gw1"], ["DGRAM"], ["RAW"]],
                                                            "fe80::1": [["STREAM", "gw1"]],
                                                            "2001:db8::50": [["STREAM", "gw1"]]}}},
        {"item": "gw2", "ansible_facts": {"getent_ahosts": {"gw2": None}}},
        {"item": "gw3", "skipped": True}]}
    assert vllm_resolved_addresses(registered) == {"gw1": ["192.0.2.50", "2001:db8::50"], "gw2": []}
    assert vllm_resolved_addresses({"results": []}) == {} and vllm_resolved_addresses(None) == {}
    with pytest.raises(Exception, match="not an IP address"):
        vllm_multinode_nftables([], ["gw1"])


def test_upgrade_batches_keep_the_nodes_of_an_instance_together():
    hv = {"a": {"vllm_server_instances": [{"name": "x", "model": "m"}]},
          "b": {"vllm_server_instances": [{"name": "big", "nodes": ["b", "d"]}]},
          "c": {}, "d": {"vllm_server_instances": [{"name": "big", "nodes": ["b", "d"]}]}}
    assert vllm_upgrade_batches(["a", "b", "c", "d"], hv, 1) == {"hosts": ["a", "b", "d", "c"], "serial": [1, 2, 1]}
    assert vllm_upgrade_batches(["a", "b", "c", "d"], hv, 2) == {"hosts": ["a", "b", "d", "c"], "serial": [1, 2, 1]}
    assert vllm_upgrade_batches(["a", "b", "c", "d"], hv, 3) == {"hosts": ["a", "b", "d", "c"], "serial": [3, 1]}
    assert vllm_upgrade_batches(["a", "c"], {}, 1) == {"hosts": ["a", "c"], "serial": [1, 1]}
    with pytest.raises(Exception, match="llmops_upgrade_serial must be a number"):
        vllm_upgrade_batches(["a"], {}, "ten")


def test_found_containers_name_their_node_role_and_nodes():
    info = {"containers": [
        {"Labels": {"org.llmops.vllm.instance": "big", "org.llmops.vllm.mode": "container",
                    "org.llmops.vllm.node-role": "worker", "org.llmops.vllm.nodes": "gpu1,gpu2"}},
        {"Labels": {"org.llmops.vllm.instance": "one"}}]}
    assert vllm_found_instances(info, "container") == [
        {"name": "big", "mode": "container", "node_role": "worker", "nodes": ["gpu1", "gpu2"]},
        {"name": "one", "mode": "container", "node_role": "", "nodes": []}]


def test_pins_come_from_the_looped_image_inspection():
    from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import vllm_image_pins
    registered = {"results": [
        {"_vllm_server_instance": {"name": "big", "image": IMAGE},
         "images": [{"Id": "sha256:1", "RepoDigests": ["vllm/vllm-openai@" + DIGEST]}]},
        {"_vllm_server_instance": {"name": "skipped", "image": IMAGE}, "skipped": True}]}
    assert vllm_image_pins(registered) == {"big": {"digest": DIGEST, "id": "sha256:1"}}


def test_a_node_is_down_when_its_container_would_change_its_files_changed_or_the_head_is_unhealthy():
    from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import vllm_multinode_down

    def result(name, changed=False, health=None):
        container = {"State": {"Running": True, "Health": {"Status": health}}} if health else {"State": {"Running": True}}
        return {"_vllm_server_multinode": {"name": name}, "changed": changed, "container": container}

    probe = {"results": [result("a"), result("b", changed=True), result("c", health="unhealthy"), result("d", health="healthy"),
                         result("e")]}
    assert vllm_multinode_down(probe, ["e"]) == ["b", "c", "e"]
    assert vllm_multinode_down({"results": [result("a"), result("d", health="starting")]}) == []


def test_a_worker_fails_when_its_head_did_not_verify():
    from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import vllm_multinode_unverified
    instances = resolve([multinode()])
    (worker,) = plans(instances, "gpu2")
    ok = {"gpu1": {"vllm_server_verification": {"results": [{"_vllm_server_instance": {"name": "big"}, "ready": True}]}}}
    failed = {"gpu1": {"vllm_server_verification": {"results": [{"_vllm_server_instance": {"name": "big"}, "failed": True}]}}}
    assert vllm_multinode_unverified([worker], ok) == []
    assert vllm_multinode_unverified([worker], failed) == [
        "Instance big: its head gpu1 did not answer a chat completion in this run (see the head's verification above), "
        "so its worker gpu2 fails with it."]
    assert vllm_multinode_unverified([worker], {"gpu1": {}}) != [], "a head that left the run verified nothing"
    (head,) = plans(instances, "gpu1")
    assert vllm_multinode_unverified([head], failed) == [], "the head's own failure is its verify task's"


def test_the_firewall_example_of_docs_multinode_is_what_the_filter_renders():
    import os
    import re
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
    with open(os.path.join(root, "docs", "multinode-design.md")) as f:
        doc = f.read()
    block = re.search(r"```text\n( *table inet llmops_vllm_cluster \{.*?)```", doc, re.S).group(1)
    instances = resolve([multinode(name="llama405b", nodes=["gpu-01", "gpu-02"], gpus_per_node=8, shape="data")])
    hv = {"gpu-01": {"vllm_server_node_facts": {"interfaces": {"ens5": "10.0.0.11"}, "gpus": 8, "platform": "cuda",
                                                 "instances": vllm_multinode_signatures(instances)}},
          "gpu-02": {"vllm_server_node_facts": {"interfaces": {"ens5": "10.0.0.12"}, "gpus": 8, "platform": "cuda",
                                                 "instances": vllm_multinode_signatures(instances)}}}
    entries = vllm_multinode_plans(instances, hv, "gpu-01", ["gpu-01", "gpu-02"], ["gpu-01", "gpu-02"])
    assert entries[0]["problems"] == [], entries[0]["problems"]
    rendered = vllm_multinode_nftables(entries, {"gateway-01": ["10.0.1.5"]})
    documented = [line.strip() for line in block.splitlines() if line.strip()]
    assert rendered.split("delete table inet llmops_vllm_cluster\n", 1)[1].split() == " ".join(documented).split()


@pytest.mark.parametrize("alive_counts, wait_s, serves", [("1 1 2", 600, True), ("1 1 1 1", 10, False)])
def test_the_ray_head_script_waits_for_every_node_then_serves_or_gives_up(tmp_path, alive_counts, wait_s, serves):
    """The head's shell script under /bin/sh, with test doubles for ray, python3 (Ray's node count), sleep and
    vllm in PATH: Ray does not exist here (vLLM's CPU platform refuses it)."""
    import subprocess
    instances = resolve([multinode(shape="pipeline", executor="ray")])
    (head,) = plans(instances, "gpu1")
    script = vllm_multinode_container(head, SETTINGS, wait_s)["command"][0]
    (tmp_path / "counts").write_text(alive_counts.replace(" ", "\n") + "\n")
    doubles = {
        "ray": 'echo "ray $*" >> "$LOG"',
        "python3": 'head -n 1 "$COUNTS"; sed -i 1d "$COUNTS"',
        "sleep": ":",
        "vllm": 'echo "vllm $*" >> "$LOG"',
    }
    for name, body in doubles.items():
        (tmp_path / name).write_text("#!/bin/sh\n%s\n" % body)
        (tmp_path / name).chmod(0o755)
    env = {"PATH": "%s:/usr/bin:/bin" % tmp_path, "LOG": str(tmp_path / "log"), "COUNTS": str(tmp_path / "counts")}
    run = subprocess.run(["/bin/sh", "-c", script, "vllm-ray-head"], env=env, capture_output=True, text=True, timeout=30)
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0] == "ray start --head --node-ip-address=10.0.0.1 --port=6379"
    if serves:
        assert run.returncode == 0, run.stderr
        assert log[-1].startswith("vllm serve Qwen/Qwen2.5-1.5B-Instruct --config /etc/vllm/big.yaml")
        assert "--distributed-executor-backend ray" in log[-1]
    else:
        assert run.returncode == 1 and not any(line.startswith("vllm") for line in log)
        assert "fewer than 2 Ray nodes joined within 10 s" in run.stderr
        assert log[-1] == "ray status", "it shows Ray's view before it gives up"


class _HostVars(dict):
    """hostvars as ansible-core 2.19 gives them: a host outside the inventory has an undefined value, whose
    attributes fail (found by the bad-input scenario: the role stopped on a templating error, not the plan's
    sentence)."""

    def __getitem__(self, host):
        if host not in self:
            return _Undefined()
        return dict.__getitem__(self, host)


class _Undefined(object):
    def __getattr__(self, name):
        raise RuntimeError("hostvars['%s'] is undefined" % name)


def test_a_node_outside_the_inventory_is_named_not_a_templating_error():
    instances = resolve([multinode(nodes=["gpu1", "gpu9"])])
    hv = _HostVars(hostvars_for(instances, hosts=("gpu1",)))
    (entry,) = plans(instances, "gpu1", hv=hv, play=("gpu1",))
    assert any("lists node gpu9, which is not in the inventory" in p for p in entry["problems"]), entry["problems"]


def test_two_multinode_instances_of_a_host_need_their_own_health_ports():
    instances = resolve([multinode(), multinode(name="other", port=8001, data_parallel_rpc_port=29551)])
    text = " ".join(p for entry in plans(instances, "gpu1") for p in entry["problems"])
    assert "Instance big on gpu1: its health_port 29560 is also the health port of other on this host" in text
    assert "vllm_server_instances[].health_port" in text
    instances = resolve([multinode(), multinode(name="other", port=8001, data_parallel_rpc_port=29551, health_port=29561)])
    assert not any("health_port" in p for entry in plans(instances, "gpu1") for p in entry["problems"])
