import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.gateway import (
    gateway_backends, gateway_drain_problems, gateway_drain_refusals, gateway_haproxy_string, gateway_key_problems,
    gateway_models_list, gateway_not_found_body, gateway_problems, gateway_server_name, gateway_stat_rows, gateway_targets)

HOSTVARS = {
    "gpu1": {"ansible_host": "10.0.0.1", "vllm_server_api_key": "k1", "vllm_server_instances": [
        {"name": "a", "model": "/m/tiny", "served_model_name": "tiny-chat", "port": 8000, "bind_address": "0.0.0.0"},
        {"name": "b", "model": "/m/tiny", "served_model_name": "tiny-chat-b", "port": 8001, "bind_address": "0.0.0.0"}]},
    "gpu2": {"vllm_server_api_key": "k1", "vllm_server_instances": [
        {"name": "vllm", "model": "/m/tiny", "served_model_name": "tiny-chat", "port": 8000}]},
    "gpu3": {"gateway_backend_address": "gpu3.internal", "vllm_server_instances": [
        {"name": "vllm", "model": "org/Model-7B", "served_model_name": "", "port": 8000}]},
}
SETTINGS = {"port": 8080, "stats_port": 8404, "models": [], "require_api_key": True, "api_key_set": True,
            "backend_group": "gpu_hosts"}


def test_one_backend_per_served_model_with_every_instance_serving_it():
    backends = gateway_backends(["gpu1", "gpu2", "gpu3"], HOSTVARS)
    assert [b["model"] for b in backends] == ["org/Model-7B", "tiny-chat", "tiny-chat-b"]
    assert [b["name"] for b in backends] == ["model0_org_Model-7B", "model1_tiny-chat", "model2_tiny-chat-b"]
    chat = backends[1]
    assert [(s["name"], s["address"], s["port"]) for s in chat["servers"]] == [
        ("gpu1:a", "10.0.0.1", 8000), ("gpu2:vllm", "gpu2", 8000)]
    assert chat["api_key"] == "k1"
    # the model id when no served name is given; the address the inventory names for the gateway
    assert backends[0]["servers"][0]["address"] == "gpu3.internal" and backends[0]["api_key"] == ""


def test_a_list_of_served_names_puts_the_instance_into_each_backend():
    hostvars = {"h": {"vllm_server_instances": [{"name": "x", "served_model_name": ["a", "b"], "port": 1}]}}
    assert [b["servers"][0]["name"] for b in gateway_backends(["h"], hostvars)] == ["h:x", "h:x"]


def test_hosts_without_instances_give_no_backend_and_a_problem_naming_the_group():
    backends = gateway_backends(["lonely"], {"lonely": {"vllm_server_instances": []}})
    assert backends == [] and gateway_backends([], {}) == []
    (problem,) = gateway_problems(backends, ["gw"], {}, SETTINGS)
    assert "no vLLM instance to route to: the group gpu_hosts" in problem and "gateway_backend_group" in problem


def test_bad_input_is_named():
    hostvars = dict(HOSTVARS, gpu2={"vllm_server_api_key": "other", "vllm_server_instances": [
        {"name": "vllm", "served_model_name": "tiny-chat", "port": 8000, "bind_address": "127.0.0.1"}]})
    backends = gateway_backends(["gpu1", "gpu2"], hostvars)
    problems = " ".join(gateway_problems(backends, ["gw"], hostvars, dict(SETTINGS, models=["tiny-chat", "llama"])))
    assert "the hosts serving tiny-chat (gpu1, gpu2) have different vllm_server_api_key values" in problems
    assert "instance vllm of gpu2 listens on 127.0.0.1 only" in problems and "vllm_server_bind_address" in problems
    assert "gateway_models asks for llama, but no host of gpu_hosts serves it (served: tiny-chat, tiny-chat-b)" in problems


def test_port_clashes_and_missing_key_are_refused():
    backends = gateway_backends(["gpu1"], HOSTVARS)
    assert gateway_problems(backends, ["gw"], HOSTVARS, SETTINGS) == []
    same = gateway_problems(backends, ["gw"], HOSTVARS, dict(SETTINGS, stats_port=8080))
    assert same == ["gateway_port and gateway_stats_port are both 8080: give them different ports."]
    # the gateway on a vLLM host whose instance holds the gateway's port
    clash = gateway_problems(backends, ["gpu1"], HOSTVARS, dict(SETTINGS, port=8001))
    assert clash == ["port 8001 of gpu1 is taken by its vLLM instance b: change gateway_port or gateway_stats_port "
                     "(or the instance's port)."]
    (nokey,) = gateway_problems(backends, ["gw"], HOSTVARS, dict(SETTINGS, api_key_set=False))
    assert "gateway_api_key is empty" in nokey and "gateway_require_api_key: false" in nokey
    assert gateway_problems(backends, ["gw"], HOSTVARS, dict(SETTINGS, api_key_set=False, require_api_key=False)) == []


def test_hosts_must_be_a_list():
    with pytest.raises(AnsibleFilterError):
        gateway_backends("gpu1", HOSTVARS)


def test_models_list_is_openai_shaped():
    assert gateway_models_list(gateway_backends(["gpu1"], HOSTVARS)) == {"object": "list", "data": [
        {"id": "tiny-chat", "object": "model", "created": 0, "owned_by": "vllm"},
        {"id": "tiny-chat-b", "object": "model", "created": 0, "owned_by": "vllm"}]}


def test_not_found_body_is_json_once_haproxy_fills_in_the_model():
    body = gateway_not_found_body([{"model": 'we"ird%'}, {"model": "tiny-chat"}])
    filled = body.replace("%[var(txn.llmops_model),json(utf8s)]", "nope").replace("%%", "%")
    error = json.loads(filled)["error"]
    assert error == {"message": 'The model `nope` does not exist. Models served here: we"ird%, tiny-chat.',
                     "type": "NotFoundError", "param": "model", "code": 404}


def test_haproxy_string_escapes_quotes_and_backslashes():
    assert gateway_haproxy_string('a "b" \\c') == '"a \\"b\\" \\\\c"'


def test_server_names_keep_to_haproxy_characters():
    assert gateway_server_name("gpu 1.example", "vllm/x") == "gpu_1.example:vllm_x"


STATS = """# pxname,svname,qcur,scur,status
model0_tiny-chat,FRONTEND,0,0,OPEN
model0_tiny-chat,gpu1:a,0,2,UP
model0_tiny-chat,gpu2:vllm,0,0,UP
model0_tiny-chat,BACKEND,0,2,UP
model1_tiny-chat-b,gpu1:b,0,0,UP
model1_tiny-chat-b,BACKEND,0,0,UP
"""


def test_stats_rows_and_the_servers_of_a_host():
    rows = gateway_stat_rows(STATS)
    assert rows[1] == {"pxname": "model0_tiny-chat", "svname": "gpu1:a", "qcur": "0", "scur": "2", "status": "UP"}
    targets = gateway_targets([{"item": "gw", "content": STATS}], "gpu1")
    assert [(t["gateway"], t["backend"], t["server"]) for t in targets] == [
        ("gw", "model0_tiny-chat", "gpu1:a"), ("gw", "model1_tiny-chat-b", "gpu1:b")]
    # gpu1 is not a prefix of gpu10's servers
    assert gateway_targets([{"item": "gw", "content": STATS.replace("gpu2:", "gpu10:")}], "gpu1")[0]["server"] == "gpu1:a"


def test_the_last_healthy_server_of_a_model_is_not_drained_unless_allowed():
    rows = gateway_stat_rows(STATS)
    (problem,) = gateway_drain_problems(rows, ["gpu1"], "gw")
    assert problem.startswith("gpu1 is the last healthy server of model tiny-chat-b (backend model1_tiny-chat-b) at "
                              "gateway gw (others: none)"), problem
    assert "gateway_drain_allow_last: true" in problem
    assert gateway_drain_problems(rows, ["gpu1"], "gw", allow_last=True) == []
    # gpu2's model keeps gpu1:a
    assert gateway_drain_problems(rows, ["gpu2"], "gw") == []
    # a server that is down or drained does not count as the other healthy one
    down = gateway_stat_rows(STATS.replace("gpu1:a,0,2,UP", "gpu1:a,0,0,DOWN"))
    (problem,) = gateway_drain_problems(down, ["gpu2"], "gw")
    assert "(others: gpu1:a DOWN)" in problem
    assert gateway_drain_refusals([{"item": "gw", "content": STATS}], ["gpu1"]) == [problem.replace(
        "gpu2", "gpu1").replace("model0_tiny-chat", "model1_tiny-chat-b").replace(
        "model tiny-chat ", "model tiny-chat-b ").replace("gpu1:a DOWN", "none")]


# A batch of upgrade.yml drains its hosts at once (issue 22): tiny-chat is served by gpu1 and gpu2 only.
BATCH_STATS = """# pxname,svname,qcur,scur,status
model0_tiny-chat,FRONTEND,0,0,OPEN
model0_tiny-chat,gpu1:a,0,2,UP
model0_tiny-chat,gpu2:vllm,0,0,UP
model0_tiny-chat,BACKEND,0,2,UP
model1_tiny-chat-b,gpu1:b,0,0,UP
model1_tiny-chat-b,gpu3:vllm,0,0,UP
model1_tiny-chat-b,BACKEND,0,0,UP
model2_org_Other-7B,gpu3:o,0,0,UP
model2_org_Other-7B,gpu4:o,0,0,UP
model2_org_Other-7B,gpu5:o,0,0,MAINT
model2_org_Other-7B,BACKEND,0,0,UP
"""
MODELS = {"model0_tiny-chat": "tiny-chat", "model1_tiny-chat-b": "tiny-chat-b", "model2_org_Other-7B": "org/Other-7B"}


def test_a_batch_that_holds_every_server_of_a_model_is_refused_naming_the_model_and_hosts():
    rows = gateway_stat_rows(BATCH_STATS)
    # alone, each may go: the other keeps the model
    assert gateway_drain_problems(rows, ["gpu1"], "gw") == [] and gateway_drain_problems(rows, ["gpu2"], "gw") == []
    # together (llmops_upgrade_serial: 2), neither may: the batch is refused, whichever of its hosts asks
    (problem,) = gateway_drain_problems(rows, ["gpu1", "gpu2"], "gw", models=MODELS)
    assert problem.startswith("The batch gpu1, gpu2 would drain every healthy server of model tiny-chat (backend "
                              "model0_tiny-chat) at gateway gw: gpu1 and gpu2 all serve it (others: none)."), problem
    assert "llmops_upgrade_serial" in problem and "gateway_drain_allow_last: true" in problem
    assert gateway_drain_problems(rows, ["gpu2", "gpu1"], "gw", models=MODELS) == [problem.replace("gpu1, gpu2", "gpu2, gpu1")]
    assert gateway_drain_problems(rows, ["gpu1", "gpu2"], "gw", allow_last=True) == []
    assert gateway_drain_refusals([{"item": "gw", "content": BATCH_STATS}], ["gpu1", "gpu2"], models=MODELS) == [problem]
    # a server in maintenance is no healthy one: gpu3 and gpu4 take the last of org/Other-7B (named from the map)
    (problem,) = gateway_drain_problems(rows, ["gpu3", "gpu4"], "gw", models=MODELS)
    assert "model org/Other-7B (backend model2_org_Other-7B)" in problem and "gpu3 and gpu4 all serve it" in problem
    assert "(others: gpu5:o MAINT)" in problem
    # without the map the model is read from the backend's name
    assert "model org_Other-7B (backend" in gateway_drain_problems(rows, ["gpu3", "gpu4"], "gw")[0]


def test_a_batch_that_leaves_each_model_a_healthy_server_is_allowed():
    rows = gateway_stat_rows(BATCH_STATS)
    # gpu1 and gpu4: tiny-chat keeps gpu2, tiny-chat-b keeps gpu3, org/Other-7B keeps gpu3
    assert gateway_drain_problems(rows, ["gpu1", "gpu4"], "gw", models=MODELS) == []
    # gpu2 and gpu3: tiny-chat keeps gpu1:a, tiny-chat-b keeps gpu1:b, org/Other-7B keeps gpu4
    assert gateway_drain_problems(rows, ["gpu2", "gpu3"], "gw", models=MODELS) == []
    # three at once may still leave one: gpu2, gpu3, gpu5 (gpu1 keeps both chat models, gpu4 the other)
    assert gateway_drain_problems(rows, ["gpu2", "gpu3", "gpu5"], "gw", models=MODELS) == []
    # a host with no server at this gateway drains nothing here
    assert gateway_drain_problems(rows, ["gpu9"], "gw") == []
    # each gateway is judged on its own: the batch is refused where it would empty a model
    refusals = gateway_drain_refusals([{"item": "gw1", "content": BATCH_STATS},
                                       {"item": "gw2", "content": BATCH_STATS.replace("gpu2:vllm,0,0,UP", "gpu2:vllm,0,0,DOWN")}],
                                      ["gpu1"], models=MODELS)
    assert len(refusals) == 1 and "gpu1 is the last healthy server of model tiny-chat" in refusals[0] and "gateway gw2" in refusals[0]


# ---- keys written into HAProxy's one-entry-a-line files (issue 22) ----------------------------------

@pytest.mark.parametrize("key", ["gw-key-0123\nBearer second-credential", "gw-key-0123\rrest", "gw-ключ-0123", "gw\x00key-0123"])
def test_a_gateway_key_that_would_split_or_cannot_be_sent_is_refused_by_name(key):
    found = gateway_key_problems(gateway_backends(["gpu1", "gpu2"], HOSTVARS), key)
    assert len(found) == 1
    assert found[0].startswith("gateway_api_key holds a line break, another control character or a non-ASCII character")
    assert "0123" not in found[0] and "second-credential" not in found[0]


@pytest.mark.parametrize("key", ["gw-key-0123\n", " gw-key-0123", "gw-key-0123\r\n"])
def test_a_gateway_key_with_a_files_trailing_newline_is_refused_by_name(key):
    found = gateway_key_problems([], key)
    assert len(found) == 1 and found[0].startswith("gateway_api_key has whitespace at its start or end")
    assert "0123" not in found[0]


def test_a_servers_key_that_would_split_the_key_map_names_its_hosts():
    hostvars = dict(HOSTVARS, gpu1=dict(HOSTVARS["gpu1"], vllm_server_api_key="k1\nmodel9_x Bearer injected"),
                    gpu2=dict(HOSTVARS["gpu2"], vllm_server_api_key="k1\nmodel9_x Bearer injected"))
    found = gateway_key_problems(gateway_backends(["gpu1", "gpu2", "gpu3"], hostvars), "gw-key")
    # gpu1 serves two models, with gpu2 and alone: each set of hosts once
    assert [f.split(" holds")[0] for f in found] == ["vllm_server_api_key of gpu1", "vllm_server_api_key of gpu1, gpu2"]
    assert not any("injected" in f for f in found)


@pytest.mark.parametrize("key", ["gw-key-0123", 'gw-"quoted"-$(id)', ""])
def test_keys_any_client_can_send_pass(key):
    assert gateway_key_problems(gateway_backends(["gpu1", "gpu2", "gpu3"], HOSTVARS), key) == []


# ---- LoRA adapters (docs/lora.md) --------------------------------------------------------------------

def lora_hostvars(second_base="tiny-chat", second_adapter="sql"):
    def served(name, base, adapter):
        return {"name": name, "model": "llmops-test/" + base, "served_model_name": base, "port": 8000,
                "lora": {"adapters": [{"name": adapter, "path": "/srv/lora/" + adapter}]}}
    return {"gpu1": {"vllm_server_api_key": "k", "vllm_server_instances": [served("vllm", "tiny-chat", "sql")]},
            "gpu2": {"vllm_server_api_key": "k", "vllm_server_instances": [served("vllm", second_base, second_adapter)]},
            "gpu3": {"vllm_server_api_key": "k", "vllm_server_instances": [
                {"name": "vllm", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8000}]}}


def test_an_adapter_is_routed_to_the_servers_that_have_it_and_listed_with_its_base():
    backends = gateway_backends(["gpu1", "gpu2", "gpu3"], lora_hostvars())
    by_model = dict((b["model"], b) for b in backends)
    assert sorted(by_model) == ["sql", "tiny-chat"]
    assert [s["name"] for s in by_model["sql"]["servers"]] == ["gpu1:vllm", "gpu2:vllm"]
    assert [s["name"] for s in by_model["tiny-chat"]["servers"]] == ["gpu1:vllm", "gpu2:vllm", "gpu3:vllm"]
    assert gateway_models_list(backends)["data"] == [
        {"id": "sql", "object": "model", "created": 0, "owned_by": "vllm", "parent": "tiny-chat"},
        {"id": "tiny-chat", "object": "model", "created": 0, "owned_by": "vllm"}]
    assert gateway_problems(backends, [], {}, SETTINGS) == []


def test_one_adapter_name_on_two_bases_or_as_a_model_name_is_refused():
    backends = gateway_backends(["gpu1", "gpu2"], lora_hostvars(second_base="tiny-other"))
    assert ("the LoRA adapter sql is served on different base models (tiny-chat, tiny-other, by gpu1, gpu2)"
            in " ".join(gateway_problems(backends, [], {}, SETTINGS)))
    backends = gateway_backends(["gpu1", "gpu2"], lora_hostvars(second_base="sql", second_adapter="other"))
    assert ("sql is a LoRA adapter's name on some hosts and a served model name on others"
            in " ".join(gateway_problems(backends, [], {}, SETTINGS)))


def test_a_multinode_instance_is_checked_at_its_head_s_node_health_agent():
    """docs/multinode-design.md: a data parallel head keeps answering /health with a worker down, so the gateway checks the
    head's node health agent (health_port, default 29560), which answers 200 only while every node is up."""
    instance = {"name": "dp", "model": "/m/tiny", "served_model_name": "tiny-chat", "port": 8000,
                "nodes": ["gpu1", "gpu2"], "gpus_per_node": 1, "shape": "data"}
    hostvars = {"gpu1": {"vllm_server_instances": [instance]}, "gpu2": {"vllm_server_instances": [instance]},
                "gpu3": {"vllm_server_instances": [{"name": "one", "model": "/m/tiny", "served_model_name": "tiny-chat",
                                                    "port": 8001}]}}
    servers = gateway_backends(["gpu1", "gpu2", "gpu3"], hostvars)[0]["servers"]
    assert [(s["name"], s["port"], s["check_port"]) for s in servers] == [("gpu1:dp", 8000, 29560), ("gpu3:one", 8001, None)]
    hostvars["gpu1"] = hostvars["gpu2"] = {"vllm_server_instances": [dict(instance, health_port=30001)]}
    assert gateway_backends(["gpu1", "gpu2"], hostvars)[0]["servers"][0]["check_port"] == 30001


def test_the_adapters_of_vllm_server_lora_are_routed_like_an_instance_s_own():
    """The fleet's inventory (inventories/local-fleet): gpu1 gives its instance a lora block, gpu2 (one instance, the
    single-instance variables) sets vllm_server_lora; the adapter's backend has both servers (it had gpu1's only
    when the gateway read the instances without vllm_server_lora)."""
    adapter = {"adapters": [{"name": "sql", "source": "org/sql", "revision": "a" * 40}]}
    hostvars = {
        "gpu1": {"vllm_server_instances": [{"name": "b", "model": "/m/tiny", "served_model_name": "tiny-chat-b",
                                            "port": 8001, "lora": adapter}]},
        "gpu2": {"vllm_server_model": "/m/tiny", "vllm_server_served_model_name": "tiny-chat-b",
                 "vllm_server_lora": adapter},
        "gpu3": {"vllm_server_model": "/m/tiny", "vllm_server_served_model_name": "tiny-chat"},
    }
    by_model = dict((b["model"], b) for b in gateway_backends(["gpu1", "gpu2", "gpu3"], hostvars))
    assert [s["name"] for s in by_model["sql"]["servers"]] == ["gpu1:b", "gpu2:vllm"]
    assert by_model["sql"]["parents"] == ["tiny-chat-b"]
