"""What each host serves as the inventory declares it (llmops.vllm.vllm_inventory_instances): the fleet's
desired state, from which the gateway's backends and Prometheus's targets are built on their own hosts,
whichever hosts a run reaches (issue 22: a --limit, llmops_target_hosts or a failed host must not take
another host's servers out of the gateway or its targets out of Prometheus)."""

import os

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

from ansible_collections.llmops.vllm.plugins.filter.gateway import gateway_backends
from ansible_collections.llmops.vllm.plugins.filter.monitoring import monitoring_scrape_configs
from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_inventory_instances, vllm_role_defaults
from ansible_collections.llmops.vllm.plugins.plugin_utils._role_defaults import defaults_file
from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_instances import PLAIN_DEFAULTS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
with open(os.path.join(ROOT, "roles", "vllm_server", "defaults", "main.yml")) as f:
    VLLM_DEFAULTS = yaml.safe_load(f)

# The fleet scenario's inventory (inventories/local-fleet): gpu1 two instances, gpu2 the single-instance
# variables of its host_vars, gpu3 the group's; a multi-node instance whose worker serves nothing.
GROUP = {"vllm_server_model": "llmops-test/tiny-chat", "vllm_server_served_model_name": "tiny-chat",
         "vllm_server_api_key": "k"}
HOSTVARS = {
    "gpu1": dict(GROUP, vllm_server_instances=[
        {"name": "vllm-chat", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8000},
        {"name": "vllm-chat-b", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat-b", "port": 8001}]),
    "gpu2": dict(GROUP, vllm_server_served_model_name="tiny-chat-b"),
    "gpu3": dict(GROUP),
}


def served(hostvars, hosts=("gpu1", "gpu2", "gpu3")):
    return [(i["host"], i["name"], i["served_model_name"], i["port"]) for i in vllm_inventory_instances(list(hosts), hostvars)]


def test_every_host_serves_what_its_inventory_declares():
    assert served(HOSTVARS) == [("gpu1", "vllm-chat", "tiny-chat", 8000), ("gpu1", "vllm-chat-b", "tiny-chat-b", 8001),
                                ("gpu2", "vllm", "tiny-chat-b", 8000), ("gpu3", "vllm", "tiny-chat", 8000)]


def test_what_a_run_published_does_not_count():
    # a host of this run published nothing (it failed, or --limit left it out) or something else: the inventory wins
    hostvars = dict(HOSTVARS, gpu2=dict(HOSTVARS["gpu2"], vllm_server_served_instances=[]),
                    gpu3=dict(HOSTVARS["gpu3"], vllm_server_served_instances=[{"name": "x", "port": 1}]))
    assert served(hostvars) == served(HOSTVARS)
    names = [s["name"] for b in gateway_backends(["gpu1", "gpu2", "gpu3"], hostvars) for s in b["servers"]]
    assert sorted(names) == ["gpu1:vllm-chat", "gpu1:vllm-chat-b", "gpu2:vllm", "gpu3:vllm"]


def test_role_defaults_fill_in_what_the_inventory_leaves_unset():
    # role defaults are not in another host's hostvars: they come from vllm_server's defaults file
    (i,) = vllm_inventory_instances(["bare"], {"bare": {}})
    assert (i["name"], i["model"], i["served_model_name"], i["port"], i["bind_address"]) == (
        VLLM_DEFAULTS["vllm_server_container_name"], VLLM_DEFAULTS["vllm_server_model"], VLLM_DEFAULTS["vllm_server_model"],
        VLLM_DEFAULTS["vllm_server_port"], VLLM_DEFAULTS["vllm_server_bind_address"])
    # an instance list without ports or addresses: the role's instance defaults and the host's bind address
    (i,) = vllm_inventory_instances(["h"], {"h": {"vllm_server_bind_address": "10.0.0.9",
                                                  "vllm_server_instances": [{"name": "a", "model": "m"}]}})
    assert (i["port"], i["bind_address"], i["served_model_name"], i["loopback_only"]) == (8000, "10.0.0.9", "m", False)
    assert vllm_inventory_instances(["h"], {"h": {}}, {"vllm_server_container_name": "c", "vllm_server_model": "x",
                                                       "vllm_server_port": 9})[0]["port"] == 9


def test_the_defaults_it_reads_are_plain_values_of_the_roles_defaults_file():
    # no Ansible templating happens on this path: a templated default would reach the gateway as text
    assert os.path.samefile(defaults_file("vllm_server"), os.path.join(ROOT, "roles", "vllm_server", "defaults", "main.yml"))
    assert vllm_role_defaults() == VLLM_DEFAULTS
    for key in PLAIN_DEFAULTS:
        assert key in VLLM_DEFAULTS and "{{" not in str(VLLM_DEFAULTS[key]), key


def test_a_multi_node_instance_is_served_by_its_head_only():
    big = {"name": "big", "model": "m", "port": 8100, "nodes": ["gpu2", "gpu3"]}
    hostvars = dict(HOSTVARS, gpu2=dict(GROUP, vllm_server_instances=[big]), gpu3=dict(GROUP, vllm_server_instances=[big]))
    assert served(hostvars, ["gpu2", "gpu3"]) == [("gpu2", "big", "m", 8100)]


def test_unknown_hosts_and_bad_instance_lists_are_named():
    with pytest.raises(AnsibleFilterError, match="nothere is listed as a vLLM host but is not in the inventory"):
        vllm_inventory_instances(["nothere"], HOSTVARS)
    with pytest.raises(AnsibleFilterError, match="^bad: vllm_server_instances must be a list"):
        vllm_inventory_instances(["bad"], {"bad": {"vllm_server_instances": "x"}})
    with pytest.raises(AnsibleFilterError, match="wants a list of hosts"):
        vllm_inventory_instances("gpu1", HOSTVARS)


def test_prometheus_and_the_gateway_list_the_same_instances():
    configs = monitoring_scrape_configs(HOSTVARS, {
        "vllm_hosts": ["gpu1", "gpu2", "gpu3"], "node_hosts": [], "gateway_hosts": [], "registry_cache_hosts": [],
        "node_exporter_port": 9100, "dcgm_exporter": False, "dcgm_exporter_port": 9400, "gateway_stats_port": 8404,
        "registry_cache_metrics_port": 5001, "prometheus_port": 9090, "prometheus_host": "ops"})
    (vllm,) = [c for c in configs if c["job_name"] == "vllm"]
    scraped = sorted("%s:%s" % (s["labels"]["host"], s["labels"]["vllm_instance"]) for s in vllm["static_configs"])
    routed = sorted(set(s["name"] for b in gateway_backends(["gpu1", "gpu2", "gpu3"], HOSTVARS) for s in b["servers"]))
    assert scraped == routed


def role_served_instances(host, inventory):
    """_vllm_server_served_instances as the vllm_server role computes it on the host itself: its defaults and
    vars files under the inventory's variables, templated by Ansible."""
    loader = DataLoader()
    variables = {}
    for name in ("defaults", "vars"):
        variables.update(loader.load_from_file(os.path.join(ROOT, "roles", "vllm_server", name, "main.yml"),
                                               trusted_as_template=True))
    variables.update(inventory, inventory_hostname=host, role_path=os.path.join(ROOT, "roles", "vllm_server"))
    return Templar(loader=loader, variables=variables).template(variables["_vllm_server_served_instances"])


@pytest.mark.parametrize("host, inventory", [
    ("gpu1", HOSTVARS["gpu1"]),
    ("gpu2", HOSTVARS["gpu2"]),
    ("bare", {}),
    ("h", {"vllm_server_bind_address": "10.0.0.9", "vllm_server_port": 8200,
           "vllm_server_instances": [{"name": "a", "model": "m", "served_model_name": ["x", "y"]},
                                     {"name": "b", "model": "m2", "port": "8300", "bind_address": "127.0.0.1"}]}),
    ("gpu3", {"vllm_server_instances": [{"name": "big", "model": "m", "nodes": ["gpu2", "gpu3"]},
                                        {"name": "one", "model": "m", "port": 8001}]}),
])
def test_it_agrees_with_what_the_role_serves_on_the_host(host, inventory):
    keys = ("name", "model", "served_model_name", "port", "bind_address", "loopback_only", "multinode", "multinode_head")
    role = [dict((k, i[k]) for k in keys) for i in role_served_instances(host, inventory)]
    inventory_side = [dict((k, i[k]) for k in keys) for i in vllm_inventory_instances([host], {host: inventory})]
    assert inventory_side == role
