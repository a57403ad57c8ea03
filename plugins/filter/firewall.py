# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Filters of the fleet_firewall role: the sources admitted to a host's fleet-internal ports and the
# nftables rule set that admits them (docs/fleet.md, "Who reaches which port").

import ipaddress
import re

from ansible.errors import AnsibleFilterError

NAME = re.compile(r"^[a-z0-9_]{1,40}$")


def _network(text):
    """An address or network as ipaddress understands it, or None."""
    try:
        return ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        return None


def fleet_firewall_problems(settings):
    """Sentences naming each fleet_firewall input that cannot be used; [] when all is well.

    settings: name, ports (list of ints), allow_from (addresses or networks), resolved ({host: [address, ...]}
    as the host resolved the fleet's hosts), allow_variable (the variable an operator sets to admit more).
    """
    s = dict(settings)
    problems = []
    name = str(s.get("name") or "")
    if not NAME.match(name):
        problems.append("fleet_firewall_name must be 1 to 40 lower-case letters, digits or underscores (it is %r)." % name)
    for port in s.get("ports") or []:
        if not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535):
            problems.append("the ports guarded by the %s firewall must be port numbers (one is %r)." % (name, port))
    allow = s.get("allow_from") or []
    if isinstance(allow, str) or not isinstance(allow, (list, tuple)):
        problems.append("%s must be a list of addresses or networks (it is %r)." % (s.get("allow_variable"), allow))
    else:
        bad = [str(a) for a in allow if _network(a) is None]
        if bad:
            problems.append("%s holds what is neither an address nor a network: %s." % (s.get("allow_variable"), ", ".join(bad)))
    unresolved = sorted(h for h, addresses in (s.get("resolved") or {}).items() if not addresses)
    if unresolved:
        problems.append(
            "the %s firewall admits the fleet's hosts by address, and %s did not resolve here (their ansible_host, else "
            "their inventory name): set ansible_host to an address the others know them by, or take them out of "
            "llmops_fleet_hosts and admit their addresses with %s." % (name, ", ".join(unresolved), s.get("allow_variable")))
    return problems


def fleet_firewall_names(hostvars, hosts):
    """The name each of hosts is resolved by: its ansible_host, else its inventory name (once each, in order)."""
    names = []
    for host in hosts or []:
        try:
            value = hostvars[host].get("ansible_host")
        except KeyError:
            raise AnsibleFilterError("%s is one of llmops_fleet_hosts but not in the inventory" % host)
        if value is None or type(value).__name__.startswith("AnsibleUndefined") or not str(value).strip():
            value = host
        if str(value) not in names:
            names.append(str(value))
    return names


def fleet_firewall_sources(resolved, allow_from=None):
    """{"ipv4": [...], "ipv6": [...]}: every address the fleet's hosts resolved to plus allow_from, sorted, once each.

    resolved: {host: [address, ...]}; allow_from: addresses or networks (CIDR) admitted as well.
    """
    nets = []
    for addresses in (resolved or {}).values():
        nets.extend(addresses or [])
    nets.extend(allow_from or [])
    found = {4: [], 6: []}
    for text in nets:
        net = _network(text)
        if net is None:
            raise AnsibleFilterError("%r is neither an address nor a network" % (text,))
        if net.version == 6 and net.network_address.is_link_local:
            continue  # fe80::/10 means nothing without its interface; Docker's and the kernel's own
        if net not in found[net.version]:
            found[net.version].append(net)
    return dict(("ipv%d" % v, [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
                               for n in sorted(collapse)])
                for v, collapse in ((4, ipaddress.collapse_addresses(found[4])), (6, ipaddress.collapse_addresses(found[6]))))


def fleet_firewall_nftables(sources, name, ports):
    """The nftables rule set that admits sources ({"ipv4": [...], "ipv6": [...]}) alone to this host's TCP ports.

    Its own table (inet llmops_<name>), replaced as a whole when nft reads the file. The chain hooks prerouting
    before Docker's DNAT (priority -150, dstnat is -100), so a port Docker publishes for a container is covered
    like a port a host process listens on; only packets addressed to this host are matched (fib daddr type local),
    so traffic the host forwards is not. The host itself (loopback) is always admitted.
    """
    if not NAME.match(str(name)):
        raise AnsibleFilterError("fleet_firewall_name %r: 1 to 40 lower-case letters, digits or underscores" % (name,))
    ports = sorted(set(int(p) for p in ports or []))
    if not ports:
        raise AnsibleFilterError("the %s firewall guards no port" % name)
    table = "llmops_%s" % name
    rules = ['    iifname "lo" accept',
             "    meta l4proto != tcp accept",
             "    fib daddr type != local accept",
             "    tcp dport != { %s } accept" % ", ".join(str(p) for p in ports)]
    for family, key in (("ip", "ipv4"), ("ip6", "ipv6")):
        if (sources or {}).get(key):
            rules.append("    %s saddr { %s } accept" % (family, ", ".join(sources[key])))
    rules.append("    counter drop")
    lines = ["# Managed by Ansible (llmops.vllm.fleet_firewall): TCP ports %s of this host admit the fleet's hosts"
             % ", ".join(str(p) for p in ports),
             "# and the addresses the inventory allows, nobody else (docs/fleet.md, \"Who reaches which port\").",
             "table inet %s" % table,
             "delete table inet %s" % table,
             "table inet %s {" % table,
             "  chain prerouting {",
             "    type filter hook prerouting priority -150; policy accept;"] + rules + ["  }", "}"]
    return "\n".join(lines) + "\n"


class FilterModule(object):
    def filters(self):
        return {
            "fleet_firewall_problems": fleet_firewall_problems,
            "fleet_firewall_names": fleet_firewall_names,
            "fleet_firewall_sources": fleet_firewall_sources,
            "fleet_firewall_nftables": fleet_firewall_nftables,
        }
