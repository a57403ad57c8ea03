"""The preflight of an instance spanning two hosts, through the vllm_server role, on two network namespaces.

No Docker and no vLLM: two inventory hosts with the local connection, each of whose modules runs inside its
own network namespace (a Python wrapper `ip netns exec NS python3` as its interpreter), joined by a veth pair
named mn0 in both, 10.99.0.1 (head) and 10.99.0.2 (worker). The role's preflight.yml runs on both in one play:
each node publishes its facts through hostvars, each checks the plan, and the reachability probe opens the
head's data parallel RPC port and connects to it from the worker over mn0. Then what it must refuse: the
worker's link down (unreachable head), one node left out of the run (--limit), a node that defines the
instance differently.

Needs root (ip netns); skipped otherwise. About 30 s of CPU. Nothing outside the two namespaces is touched.
"""

import os
import secrets
import subprocess
import sys

import pytest
import yaml

from vllm_testbed import BIN, ROOT

TOKEN = secrets.token_hex(2)
NAMESPACES = {"n1": "llmops-mn-%s-a" % TOKEN, "n2": "llmops-mn-%s-b" % TOKEN}
ADDRESSES = {"n1": "10.99.0.1", "n2": "10.99.0.2"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ip netns needs root")


def ip(*args):
    subprocess.run(["ip"] + list(args), check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multinode-netns")
    veth = ("mnv%s" % TOKEN, "mnw%s" % TOKEN)
    try:
        for ns in NAMESPACES.values():
            ip("netns", "add", ns)
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for (host, ns), end in zip(sorted(NAMESPACES.items()), veth):
            ip("link", "set", end, "netns", ns)
            ip("-n", ns, "link", "set", end, "name", "mn0")
            ip("-n", ns, "addr", "add", ADDRESSES[host] + "/24", "dev", "mn0")
            ip("-n", ns, "link", "set", "mn0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            wrapper = directory / ("python-" + host)
            wrapper.write_text('#!/bin/sh\nexec ip netns exec %s %s "$@"\n' % (ns, sys.executable))
            wrapper.chmod(0o755)
        instance = {"name": "tiny-dp", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8000,
                    "nodes": ["n1", "n2"], "gpus_per_node": 1, "shape": "data", "cluster_interface": "mn0",
                    "options": {"max_model_len": 512}}
        inventory = {"gpu_hosts": {
            "hosts": dict((h, {"ansible_python_interpreter": str(directory / ("python-" + h))}) for h in NAMESPACES),
            "vars": {"ansible_connection": "local", "llmops_cpu_only": True, "vllm_server_api_key": "llmops-key-0123",
                     "vllm_server_base_dir": str(directory / "base"),
                     "vllm_server_image": "vllm/vllm-openai-cpu:v0.32.0-x86_64",
                     "vllm_server_multinode_probe_timeout": 3,
                     "vllm_server_instances": [instance]}}}
        (directory / "hosts.yml").write_text(yaml.safe_dump(inventory))
        different = yaml.safe_load(yaml.safe_dump(inventory))
        different["gpu_hosts"]["hosts"]["n2"]["vllm_server_instances"] = [dict(instance, options={"max_model_len": 1024})]
        (directory / "different.yml").write_text(yaml.safe_dump(different))
        (directory / "preflight.yml").write_text(yaml.safe_dump([{
            "hosts": "gpu_hosts", "gather_facts": True, "gather_subset": ["min"],
            "tasks": [{"ansible.builtin.include_role": {"name": "llmops.vllm.vllm_server", "tasks_from": "preflight.yml"}}]}]))
        yield directory
    finally:
        for ns in NAMESPACES.values():
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def preflight(directory, inventory="hosts.yml", *args):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-v", "-i", str(directory / inventory),
                          str(directory / "preflight.yml")] + list(args),
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return run.returncode, run.stdout + run.stderr


def test_the_worker_reaches_the_head_through_the_probe(nodes):
    rc, output = preflight(nodes)
    assert rc == 0, output[-6000:]
    assert "stdout: '1'" in output, "the head's probe listener counted the worker's connection"


def test_a_worker_that_cannot_reach_the_head_is_refused(nodes):
    ip("-n", NAMESPACES["n2"], "link", "set", "mn0", "down")
    try:
        rc, output = preflight(nodes)
    finally:
        ip("-n", NAMESPACES["n2"], "link", "set", "mn0", "up")
    assert rc != 0
    assert ("Instance tiny-dp on n2: this node cannot reach its head n1 at 10.99.0.1:29550 over mn0 within 3 s"
            in output.replace("\n", " ").replace("  ", " ")), output[-6000:]


def test_a_node_left_out_of_the_run_is_refused(nodes):
    rc, output = preflight(nodes, "hosts.yml", "--limit", "n1")
    assert rc != 0 and "Instance tiny-dp on n1: node n2 of the instance is not in this run" in output, output[-6000:]


def test_a_node_that_defines_the_instance_differently_is_refused(nodes):
    rc, output = preflight(nodes, "different.yml")
    assert rc != 0
    assert "Instance tiny-dp on n1: node n2 defines the instance differently (options)" in output, output[-6000:]
    assert "Instance tiny-dp on n2: node n1 defines the instance differently (options)" in output, output[-6000:]
