"""A Ray cluster forms from the commands the role renders for a multi-node instance with executor ray.

vLLM refuses Ray on its CPU platform ("current platform cpu does not support ray", vLLM issue #21602), so
no vLLM here serves over Ray. What can run here, runs for real: Ray from PyPI (tests/images/vllm-ray, the
vLLM test image plus `ray`), two containers on the llmops-test network standing in for two nodes, and on
them exactly what llmops.vllm.vllm_multinode_container renders for the head and the worker (entrypoint
with the role's secrets wrapper, command and environment; the --config and secrets files where the role
writes them; the model cache mounted as the role mounts it):
  - the head's script: `ray start --head`, a wait until every node is alive, then `exec vllm serve`;
  - the worker's `ray start --block --address=HEAD:PORT --node-ip-address=...`.
Checked: while the head is alone its script waits and runs no vLLM; once the worker started, `ray status`
on the head lists both nodes as active; the head's script then runs the rendered `vllm serve`, which
connects to that cluster at the head's address and, being the CPU build, refuses Ray ("current platform
cpu does not support ray": the refusal the role's preflight names before anything starts, in the unit
tests). With no worker, the head's script gives up after its wait, naming the cause and showing
`ray status` with the head alone.

What is not proven here: vLLM serving over Ray on GPUs (docs/multinode.md, "Limits").
"""

import os
import re
import sys
import time

import pytest
import yaml

from vllm_testbed import MODELS, PREFIX, ROOT, docker

sys.path.insert(0, os.path.join(ROOT, "collections"))

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances  # noqa: E402
from ansible_collections.llmops.vllm.plugins.filter.vllm_container import vllm_multinode_container  # noqa: E402
from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import (  # noqa: E402
    vllm_multinode_plans, vllm_multinode_signatures)

RAY_IMAGE = os.environ.get("LLMOPS_IT_RAY_IMAGE", "llmops-test/vllm-openai-cpu:v0.32.0-ray")
NETWORK = os.environ.get("LLMOPS_TEST_NETWORK", "llmops-test")
HEAD = PREFIX + "ray-a"
WORKER = PREFIX + "ray-b"
MODEL = "llmops-test/tiny-chat"
DEFAULTS = {"served_model_name": "tiny-chat", "port": 8000, "bind_address": "0.0.0.0", "gpus": "all",
            "options": {"max_model_len": 512}, "env": {}, "image": RAY_IMAGE, "download": False,
            "shutdown_timeout": 60}
# The role's container settings (roles/vllm_server/vars/main.yml builds the same keys).
SETTINGS = {"models_dir": "/data/vllm/models", "logs_dir": "/data/vllm/logs", "configs_dir": "/data/vllm/configs",
            "timezone": "Etc/UTC", "log_to_file": False, "hf_endpoint": "", "compile_cache": False, "ipc_mode": "host",
            "shm_size": "", "capabilities": [], "security_opts": [], "restart_policy": "unless-stopped",
            "entrypoint": ["vllm", "serve"], "verify_timeout": 600, "mode": "container", "shutdown_timeout": 60}
# tiny-chat's config.json (tests/images/vllm-cpu/make_tiny_model.py): 2 heads, 2 layers
MODEL_INFO = [{"model": MODEL, "config": {"num_attention_heads": 2, "num_key_value_heads": 2,
                                          "num_hidden_layers": 2}}]
WAIT_S = 60


def instance():
    (resolved,) = vllm_resolve_instances([{
        "name": "tiny-ray", "model": MODEL, "nodes": [HEAD, WORKER], "gpus_per_node": 1, "shape": "pipeline",
        "executor": "ray", "cluster_interface": "eth0"}], DEFAULTS, 1)
    return resolved


def rendered(addresses, wait_s=WAIT_S):
    """{host: docker_container arguments} the role renders for a two-node pipeline-parallel Ray instance.

    The nodes publish the facts the role's preflight gathers; their platform is "cuda" on paper, as on the
    GPU servers this renders for (on "cpu" the plan refuses Ray, as vLLM does).
    """
    instances = [instance()]
    hostvars = dict((h, {"vllm_server_node_facts": {"interfaces": {"eth0": addresses[h]}, "gpus": 1, "platform": "cuda",
                                                     "instances": vllm_multinode_signatures(instances)}})
                    for h in (HEAD, WORKER))
    containers = {}
    for host in (HEAD, WORKER):
        (entry,) = vllm_multinode_plans(instances, hostvars, host, [HEAD, WORKER], [HEAD, WORKER], MODEL_INFO)
        assert entry["problems"] == [], entry["problems"]
        containers[host] = vllm_multinode_container(entry, SETTINGS, wait_s)
    return containers


def start(host, container, log):
    """Run a node's rendered process (entrypoint, with the role's secrets wrapper, and command) with its
    rendered environment in its stand-in, detached, its output in log."""
    env = ["-e%s=%s" % item for item in sorted(container["env"].items())]
    process = list(container["entrypoint"]) + list(container["command"])
    docker("exec", "-d", *env, host, "sh", "-c", 'exec "$@" >%s 2>&1' % log, "node", *process)


def read(host, path):
    return docker("exec", host, "cat", path, check=False)


def serving(host):
    """Whether a `vllm serve` process runs in the stand-in (its /proc; the image has no ps)."""
    script = ("import glob\nfor p in glob.glob('/proc/[0-9]*/cmdline'):\n try: a = open(p, 'rb').read().split(b'\\0')\n"
              " except OSError: continue\n if b'serve' in a and any(x.endswith(b'vllm') for x in a): print('yes')")
    return "yes" in docker("exec", host, "python3", "-c", script, check=False)


def active_nodes(status):
    """The node lines under 'Active:' in `ray status`."""
    match = re.search(r"^Active:\n((?: .*\n?)*)", status, re.M)
    return [line for line in (match.group(1).splitlines() if match else []) if re.match(r"\s+\d+ node_", line)]


@pytest.fixture()
def nodes():
    for name in (HEAD, WORKER):
        docker("rm", "-f", name, check=False)
        # the role's mounts: the model cache (read-only here) and the configs dir, with the files the role
        # writes there: the instance's --config file and its secrets file (no key: none is needed here)
        docker("run", "-d", "--name", name, "--hostname", name, "--network", NETWORK, "--shm-size", "1g",
               "-v", MODELS + ":/root/.cache/huggingface:ro", "--entrypoint", "sleep", RAY_IMAGE, "infinity")
        config = yaml.safe_dump(instance()["config"], sort_keys=True)
        docker("exec", name, "sh", "-c", 'mkdir -p /etc/vllm && printf %s "$1" >/etc/vllm/tiny-ray.yaml && '
               'printf "HF_HUB_OFFLINE=1\\nVLLM_CPU_KVCACHE_SPACE=1\\n" >/etc/vllm/tiny-ray.env', "files", config)
    addresses = dict((h, docker("inspect", "--format",
                                '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % NETWORK, h)) for h in (HEAD, WORKER))
    yield addresses
    for name in (HEAD, WORKER):
        docker("rm", "-f", name, check=False, timeout=120)


def test_both_nodes_join_the_heads_ray_and_only_then_does_the_head_run_vllm(nodes):
    containers = rendered(nodes)
    assert containers[HEAD]["command"][1] == "vllm-ray-head"
    assert containers[WORKER]["command"][:3] == ["ray", "start", "--block"]
    start(HEAD, containers[HEAD], "/tmp/node.log")
    # The head is alone for a while: its script must keep waiting, not run vLLM.
    time.sleep(20)
    assert not serving(HEAD), read(HEAD, "/tmp/node.log")
    start(WORKER, containers[WORKER], "/tmp/node.log")
    deadline, joined, status = time.time() + 120, [], ""
    while time.time() < deadline:
        status = docker("exec", HEAD, "ray", "status", check=False, timeout=60)
        joined = active_nodes(status)
        if len(joined) == 2:
            break
        time.sleep(3)
    print(status)
    assert len(joined) == 2, "ray status on the head must list both nodes as active:\n" + status
    # The head's wait ends and it runs the rendered `vllm serve`: the CPU build refuses Ray.
    deadline, log = time.time() + 240, ""
    while time.time() < deadline:
        log = read(HEAD, "/tmp/node.log")
        if re.search(r"does not support ray|Traceback", log, re.I) and not serving(HEAD):
            break
        time.sleep(5)
    print("\n".join(line for line in log.splitlines() if re.search(r"Ray cluster|does not support", line)))
    assert "fewer than" not in log
    # vLLM found the cluster the nodes formed, at the head's address ...
    assert "Connected to Ray cluster" in log and "Connecting to existing Ray cluster at address: %s:6379" % nodes[HEAD] \
        in log, log[-3000:]
    # ... and then refused it, being the CPU build
    assert "current platform cpu does not support ray" in log, log[-3000:]


def test_a_head_whose_worker_never_joins_gives_up_naming_the_cause(nodes):
    start(HEAD, rendered(nodes, wait_s=15)[HEAD], "/tmp/node.log")
    deadline, log = time.time() + 150, ""
    while time.time() < deadline:
        log = read(HEAD, "/tmp/node.log")
        if "fewer than 2 Ray nodes joined within 15 s" in log and "Active:" in log:
            break
        time.sleep(5)
    print(log[-3000:])
    assert "fewer than 2 Ray nodes joined within 15 s" in log, log[-3000:]
    assert len(active_nodes(log[log.index("fewer than"):])) == 1, "its ray status shows the head alone"
    assert "does not support ray" not in log, "vLLM never ran"
