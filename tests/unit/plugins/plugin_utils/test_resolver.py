"""The one resolver of vllm_server instances (plugins/plugin_utils/_vllm_instances.py) and the role defaults it and
the roles read (plugins/plugin_utils/_role_defaults.py, llmops.vllm.role_default)."""

import os

import pytest
import yaml
from ansible.errors import AnsibleLookupError

from ansible_collections.llmops.vllm.plugins.lookup.role_default import LookupModule
from ansible_collections.llmops.vllm.plugins.plugin_utils import _vllm_instances as resolver
from ansible_collections.llmops.vllm.plugins.plugin_utils._role_defaults import role_default

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def load(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return yaml.safe_load(f)


def test_the_role_gives_each_instance_field_from_the_variable_the_resolver_names():
    # vllm_server's vars list its variables for the fields; the resolver knows which field is which variable
    settings = load("roles", "vllm_server", "vars", "main.yml")["_vllm_server_instance_defaults"]
    assert sorted(settings) == sorted(resolver.ROLE_VARIABLES)
    for field, variable in resolver.ROLE_VARIABLES.items():
        assert variable in str(settings[field]), field
    # the fields the resolver defaults itself are not given by the role a second time
    assert not set(settings) & set(resolver.FIELD_DEFAULTS)


def test_the_default_instance_is_the_roles_default_list():
    (listed,) = load("roles", "vllm_server", "defaults", "main.yml")["vllm_server_instances"]
    assert listed == dict((field, "{{ %s }}" % variable) for field, variable in resolver.DEFAULT_INSTANCE.items())


def test_an_instance_without_a_port_publishes_8000_whatever_vllm_server_port_says():
    variables = {"vllm_server_port": 9000, "vllm_server_container_name": "chat"}
    assert resolver.published_ports([{"name": "a", "model": "m"}], variables) == [{"port": 8000, "container": "a"}]
    assert resolver.published_ports(None, variables) == [{"port": 9000, "container": "chat"}]
    assert resolver.published_ports(None, None) == [{"port": 8000, "container": "vllm"}]
    (i,) = resolver.inventory_instances(["h"], {"h": {"vllm_server_port": 9000,
                                                      "vllm_server_instances": [{"name": "a", "model": "m"}]}})
    assert i["port"] == 8000


def test_a_port_that_is_not_a_number_is_left_to_vllm_servers_preflight():
    assert resolver.published_ports([{"name": "a", "model": "m", "port": "x"}, {"name": "b", "model": "m", "port": 8001}]) == [
        {"port": 8001, "container": "b"}]


def test_role_defaults_are_plain_values_of_the_roles_files():
    assert role_default("vllm_server_version") == load("roles", "vllm_server", "defaults", "main.yml")["vllm_server_version"]
    assert role_default("gateway_stats_user") == load("roles", "gateway", "defaults", "main.yml")["gateway_stats_user"]
    assert role_default("registry_cache_metrics_bind_address") == load(
        "roles", "registry_cache", "defaults", "main.yml")["registry_cache_metrics_bind_address"]


@pytest.mark.parametrize("term, message", [
    ("vllm_server_image", "the default of vllm_server_image is templated"),
    ("vllm_server_nothing", "vllm_server_nothing is not a default of the role vllm_server"),
    ("nothing_at_all", "nothing_at_all is not a variable of a role of llmops.vllm"),
])
def test_the_lookup_refuses_what_it_cannot_give(term, message):
    assert LookupModule().run(["gateway_stats_user"]) == [role_default("gateway_stats_user")]
    with pytest.raises(AnsibleLookupError, match=message):
        LookupModule().run([term])
