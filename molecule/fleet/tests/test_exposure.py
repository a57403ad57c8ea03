"""Secure by default (issue 22, item 5), seen from a machine on the fleet's network that is not one of its
hosts: every TCP port that a converged fleet host listens on beyond loopback is tried from a container of
this test's own on the same Docker network, and what answers is listed. Only the ports a client must
reach answer, each 401 without its credential: the gateway's port and every vLLM port (the API key), and
the gateway's statistics port (gateway_stats_password). Prometheus, the exporters and the registry cache
drop the connection (the fleet_firewall role admits the fleet's hosts only); the registry's debug server
listens on loopback only.

The fleet itself still reaches what it needs: test_fleet.py pulls through the cache, and
test_monitoring.py finds every Prometheus target up, the gateway's exporter scraped with its password.
"""

import json
import os
import subprocess
import uuid

import pytest

OPS = "llmops-fleet-ops"
GPU_HOSTS = ["llmops-fleet-gpu1", "llmops-fleet-gpu2", "llmops-fleet-gpu3"]
NETWORK = "llmops-test"
IMAGE = "llmops-test/debian12-systemd:latest"
# What a client must reach, and the credential each one asks for (inventories/local-fleet).
KEY_PORTS = {OPS: {8080}, "llmops-fleet-gpu1": {8000, 8001}, "llmops-fleet-gpu2": {8000}, "llmops-fleet-gpu3": {8000}}
PASSWORD_PORTS = {OPS: {8404}}
# What the roles run and the firewall must keep from others: present, so the scan cannot pass by finding nothing.
GUARDED = {OPS: {5000, 9090, 9100}, "llmops-fleet-gpu1": {9100}, "llmops-fleet-gpu2": {9100}, "llmops-fleet-gpu3": {9100}}

# Run in the scanner: each (address, port) tried at once; an HTTP request without any credential on what accepts.
PROBE = r"""
import json, socket, sys, concurrent.futures
def probe(target):
    address, port = target
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((address, port))
    except socket.timeout:
        return "no answer (dropped)"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "unreachable (%s)" % e
    try:
        s.sendall(b"GET /v1/models HTTP/1.0\r\nHost: %s\r\n\r\n" % address.encode())
        head = s.recv(200).decode("latin-1")
    except OSError as e:
        return "accepted, then %s" % e
    finally:
        s.close()
    if head.startswith("HTTP/"):
        return head.split()[1]
    return "accepted, not HTTP: %r" % head[:40]
targets = [tuple(t) for t in json.loads(sys.argv[1])]
with concurrent.futures.ThreadPoolExecutor(64) as pool:
    print(json.dumps([[t[0], t[1], r] for t, r in zip(targets, pool.map(probe, targets))]))
"""


def address(name):
    out = subprocess.check_output(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name], text=True)
    return json.loads(out)[NETWORK]["IPAddress"]


def _hex_port(local):
    return int(local.rsplit(":", 1)[1], 16)


def _loopback(local):
    addr = local.rsplit(":", 1)[0]
    # /proc/net/tcp: 127.x.x.x is 0100007F-like (little-endian, so it ends in 7F); tcp6: ::1, and ::ffff:127.x
    return (len(addr) == 8 and addr.endswith("7F")) or addr == "00000000000000000000000001000000" \
        or (len(addr) == 32 and addr[:24] == "0000000000000000FFFF0000" and addr.endswith("7F"))


def listening_ports(host):
    """TCP ports the host listens on beyond loopback (/proc/net/tcp and tcp6, state 0A), and the ports its
    own Docker publishes for containers (a DNAT rule alone listens nowhere)."""
    text = subprocess.check_output(["docker", "exec", host, "cat", "/proc/net/tcp", "/proc/net/tcp6"], text=True)
    ports = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and not _loopback(fields[1]):
            ports.add(_hex_port(fields[1]))
    # a host without Docker (the ops host runs the cache from Debian's package) publishes nothing
    published = subprocess.run(["docker", "exec", host, "sh", "-c", "! command -v docker >/dev/null || docker ps --format '{{.Ports}}'"],
                               capture_output=True, text=True, check=True).stdout
    for entry in published.replace(",", "\n").split():
        if "->" in entry and "/tcp" in entry:
            outside = entry.split("->")[0]
            if not outside.startswith("127.") and not outside.startswith("[::1]"):
                ports.add(int(outside.rsplit(":", 1)[1]))
    return ports


@pytest.fixture(scope="module")
def scan():
    """{host: {port: what answered}} from a container on the fleet's network that no inventory names."""
    listening = dict((host, listening_ports(host)) for host in [OPS] + GPU_HOSTS)
    addresses = dict((host, address(host)) for host in listening)
    targets = [[addresses[h], p] for h in sorted(listening) for p in sorted(listening[h])]
    name = "llmops-secure-scan-%s" % uuid.uuid4().hex[:8]
    try:
        out = subprocess.run(["docker", "run", "--rm", "--name", name, "--network", NETWORK, "--entrypoint", "python3",
                              IMAGE, "-c", PROBE, json.dumps(targets)], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert out.returncode == 0, out.stderr
    host_of = dict((a, h) for h, a in addresses.items())
    found = {}
    for addr, port, answer in json.loads(out.stdout):
        found.setdefault(host_of[addr], {})[port] = answer
    # the list, for the test's output (and the docs)
    for host in sorted(found):
        print("%s: %s" % (host, ", ".join("%d %s" % (p, a) for p, a in sorted(found[host].items()))))
    return {"listening": listening, "found": found}


def test_the_scan_covers_the_guarded_services(scan):
    for host, ports in GUARDED.items():
        assert ports <= scan["listening"][host], (host, sorted(scan["listening"][host]))
    # Distribution's debug server (pprof, expvar, metrics) listens on loopback only
    assert 5001 not in scan["listening"][OPS]


def test_only_the_client_ports_answer_a_stranger_and_each_asks_for_its_credential(scan):
    answered = {}
    for host, ports in scan["found"].items():
        for port, answer in ports.items():
            if not (answer == "refused" or answer.startswith("no answer")):
                answered.setdefault(host, {})[port] = answer
    expected = dict((host, sorted(KEY_PORTS.get(host, set()) | PASSWORD_PORTS.get(host, set())))
                    for host in [OPS] + GPU_HOSTS)
    assert dict((h, sorted(p)) for h, p in answered.items()) == expected, scan["found"]
    for host, ports in answered.items():
        for port, answer in ports.items():
            assert answer == "401", (host, port, answer)
