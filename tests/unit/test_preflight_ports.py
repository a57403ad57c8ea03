"""The ports the preflight role checks are the ports vllm_server publishes (issue 19): both come from one
resolver (plugins/plugin_utils/_vllm_instances.py). Rendered by Ansible's own templating from the roles'
defaults and vars, as a play holding both roles (site.yml) or the preflight alone sees them."""

import os

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def render(roles, name, inventory):
    """Template one variable with the defaults and vars of roles (in play order) under the inventory's variables."""
    loader = DataLoader()
    variables = {}
    for role in roles:
        for part in ("defaults", "vars"):
            variables.update(loader.load_from_file(os.path.join(ROOT, "roles", role, part, "main.yml"),
                                                   trusted_as_template=True))
    variables.update(inventory, inventory_hostname="h", role_path=os.path.join(ROOT, "roles", roles[0]))
    return Templar(loader=loader, variables=variables).template(variables[name])


def published(inventory):
    """(port, container) of each instance vllm_server publishes on the host."""
    return [(i["port"], i["name"]) for i in render(["vllm_server"], "_vllm_server_served_instances", inventory)
            if not i["multinode"]]


def checked(inventory, roles=("preflight", "vllm_server")):
    return [(p["port"], p["container"]) for p in render(list(roles), "preflight_ports", inventory)]


def test_an_instance_without_a_port_is_checked_on_the_port_it_publishes():
    # issue 19: vllm_server_port is the default instance's port, not every instance's; the preflight checked 9000
    # while vllm_server published 8000
    inventory = {"vllm_server_port": 9000, "vllm_server_instances": [{"name": "a", "model": "m"}]}
    assert published(inventory) == [(8000, "a")]
    assert checked(inventory) == published(inventory)


@pytest.mark.parametrize("inventory", [
    {},
    {"vllm_server_port": 9000, "vllm_server_container_name": "chat"},
    {"vllm_server_port": 9000, "vllm_server_instances": [{"name": "a", "model": "m", "port": "8001"},
                                                         {"name": "b", "model": "m"}]},
    # an instance spanning hosts publishes no port of its own (its head's vLLM listens on the host network)
    {"vllm_server_instances": [{"name": "big", "model": "m", "nodes": ["h", "g"]}, {"name": "one", "model": "m"}]},
])
def test_the_preflight_checks_the_ports_vllm_server_publishes(inventory):
    assert checked(inventory) == published(inventory)


@pytest.mark.parametrize("inventory", [{}, {"vllm_server_port": 9000, "vllm_server_container_name": "chat"}])
def test_without_vllm_server_in_the_play_the_default_instance_is_checked(inventory):
    assert checked(inventory, roles=["preflight"]) == published(inventory)


def test_the_preflight_image_is_the_release_vllm_server_ships():
    version = render(["vllm_server"], "vllm_server_version", {})
    assert render(["preflight"], "preflight_image", {}) == "vllm/vllm-openai:v%s" % version
    assert render(["preflight", "vllm_server"], "preflight_image", {"vllm_server_image": "r/v:1"}) == "r/v:1"
