"""The fleet_firewall role's filters: who is admitted, and the nftables rule set that admits them."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.firewall import (
    fleet_firewall_names, fleet_firewall_nftables, fleet_firewall_problems, fleet_firewall_sources)

RESOLVED = {"llmops-fleet-ops": ["172.18.0.5"], "llmops-fleet-gpu1": ["172.18.0.6", "fd00::6", "fe80::1"],
            "10.0.0.7": ["10.0.0.7"]}


def test_the_names_are_ansible_host_else_the_inventory_name_once_each():
    hostvars = {"a": {"ansible_host": "10.0.0.7"}, "b": {}, "c": {"ansible_host": ""}, "d": {"ansible_host": "10.0.0.7"}}
    assert fleet_firewall_names(hostvars, ["a", "b", "c", "d"]) == ["10.0.0.7", "b", "c"]
    with pytest.raises(AnsibleFilterError, match="x is one of llmops_fleet_hosts but not in the inventory"):
        fleet_firewall_names(hostvars, ["x"])


def test_sources_are_every_resolved_address_and_the_allowed_networks_without_link_local():
    sources = fleet_firewall_sources(RESOLVED, ["192.168.10.0/24", "192.168.10.7", "2001:db8::/64"])
    assert sources == {"ipv4": ["10.0.0.7", "172.18.0.5", "172.18.0.6", "192.168.10.0/24"],
                       "ipv6": ["2001:db8::/64", "fd00::6"]}
    with pytest.raises(AnsibleFilterError, match="'nowhere' is neither an address nor a network"):
        fleet_firewall_sources(RESOLVED, ["nowhere"])


def test_the_rule_set_drops_the_ports_from_anyone_but_the_sources():
    text = fleet_firewall_nftables(fleet_firewall_sources(RESOLVED), "registry_cache", [5000, 5001, 5000])
    lines = [line.strip() for line in text.splitlines()]
    # replaced as a whole when nft reads it, and its own table only
    assert lines[2:5] == ["table inet llmops_registry_cache", "delete table inet llmops_registry_cache",
                          "table inet llmops_registry_cache {"]
    chain = lines[lines.index("chain prerouting {") + 1:lines.index("}")]
    assert chain == [
        # before Docker's DNAT (dstnat is -100): published ports are covered too
        "type filter hook prerouting priority -150; policy accept;",
        'iifname "lo" accept',
        "meta l4proto != tcp accept",
        "fib daddr type != local accept",
        "tcp dport != { 5000, 5001 } accept",
        "ip saddr { 10.0.0.7, 172.18.0.5, 172.18.0.6 } accept",
        "ip6 saddr { fd00::6 } accept",
        "counter drop",
    ]
    # no IPv6 source: no empty set (nft refuses one)
    text = fleet_firewall_nftables({"ipv4": ["10.0.0.1"], "ipv6": []}, "x", [1])
    assert "ip6 saddr" not in text
    with pytest.raises(AnsibleFilterError, match="guards no port"):
        fleet_firewall_nftables({"ipv4": []}, "x", [])
    with pytest.raises(AnsibleFilterError, match="lower-case letters"):
        fleet_firewall_nftables({"ipv4": []}, "x; flush ruleset", [1])


def test_problems_name_the_variable_to_set_and_the_hosts_that_did_not_resolve():
    ok = {"name": "monitoring_exporters", "ports": [9100], "allow_from": ["10.1.0.0/16"],
          "allow_variable": "monitoring_exporters_allow_from", "resolved": RESOLVED}
    assert fleet_firewall_problems(ok) == []
    problems = fleet_firewall_problems(dict(ok, allow_from=["10.1.0.0/16", "admins"], ports=[9100, 70000],
                                            resolved=dict(RESOLVED, gpu9=[], gpu8=[])))
    assert problems == [
        "the ports guarded by the monitoring_exporters firewall must be port numbers (one is 70000).",
        "monitoring_exporters_allow_from holds what is neither an address nor a network: admins.",
        "the monitoring_exporters firewall admits the fleet's hosts by address, and gpu8, gpu9 did not resolve here (their "
        "ansible_host, else their inventory name): set ansible_host to an address the others know them by, or take them "
        "out of llmops_fleet_hosts and admit their addresses with monitoring_exporters_allow_from.",
    ]
    assert fleet_firewall_problems(dict(ok, allow_from="10.1.0.0/16")) == [
        "monitoring_exporters_allow_from must be a list of addresses or networks (it is '10.1.0.0/16')."]
