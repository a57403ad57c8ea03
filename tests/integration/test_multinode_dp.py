"""One vLLM instance spanning two hosts, through the vllm_server role: data parallel across two host stand-ins.

What the CPU build of vLLM serves across hosts (issue 13's measurement): data parallel, one engine per node,
Ray-free. Two Debian 12 systemd containers on the llmops-test network stand in for two GPU servers (as
tests/tooling/demo and the molecule scenarios do), each with its own Docker; site.yml converges both with one
instance whose nodes are both hosts (group_vars of a group holding exactly them). The vLLM containers run
with host networking inside the stand-ins, so each node's eth0 address on llmops-test is its cluster address.

Checked, in order (one module-scoped converge, so the steps share it):
  1. site.yml converges both hosts; the head answers chat completions and both engines served requests
     (vLLM's own metrics on the head: vllm:request_success_total per engine);
  2. each node's container: host network, restart policy "no", its cluster environment, its role label, and
     the same image at the same digest on both (repository@sha256, the head's);
  3. the firewall (vllm_server_multinode_firewall, on by default): the data parallel RPC port of the head drops a
     connection from this machine (not a node) and lets the worker through;
  4. a second run changes nothing;
  4b. upgrade.yml with a changed instance env: one batch of both nodes, both restarted with it, both engines serve;
  4c. the head's node health agent (the port the gateway checks) answers the worker and the gateway's host and
     drops a container that is neither (one of this test's on the same network, which the head's API answers);
  5. the worker's container killed under a load through the gateway (on the head's stand-in, beside a
     single-node instance of the same model on the worker's): the head's node health agent takes the instance
     out within the gateway's check interval, no request started after that hangs or fails, and the next run
     stops and starts both nodes (new start times on both), the head answers again with both engines and the
     gateway takes it back;
  6. uninstall on the worker alone is refused before anything is removed; on both, every container goes.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from vllm_testbed import BIN, PREFIX, ROOT, docker

sys.path.insert(0, os.path.join(ROOT, "molecule", "resources", "tests"))
from llmops_gateway import TEST_GATEWAY_KEY, TEST_STATS_PASSWORD, Gateway, Load  # noqa: E402

# About 11 minutes before the gateway joined, 35 beside the fleet scenario since (two host stand-ins converged
# by site.yml, three vLLM engines, four converges): `make test` would pass CI's 90 minutes with it (issue 23),
# so it runs in `make integration-multinode`, which .ci/run calls after `make test` while the run has the time (docs/testing.md).
pytestmark = pytest.mark.skipif(os.environ.get("LLMOPS_IT_MULTINODE") != "1",
                                reason="the multi-node end-to-end test runs in make integration-multinode")

SYSTEMD_IMAGE = os.environ.get("LLMOPS_IT_SYSTEMD_IMAGE", "llmops-test/debian12-systemd:latest")
NETWORK = os.environ.get("LLMOPS_TEST_NETWORK", "llmops-test")
# The capability list of molecule/*/molecule.yml and tests/tooling/demo (--privileged does not work here).
CAPS = ["SYS_ADMIN", "NET_ADMIN", "NET_RAW", "SYS_PTRACE", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SYS_CHROOT",
        "DAC_READ_SEARCH", "IPC_LOCK", "SYS_MODULE", "SYS_NICE"]
HEAD = PREFIX + "mn-a"
WORKER = PREFIX + "mn-b"
INSTANCE = "tiny-dp"
API_KEY = "llmops-test-key"  # inventories/local's, not a secret
DP_RPC_PORT = 29550
HEALTH_PORT = 29560  # the node health agents' (the instance's health_port default)
SOLO = {"name": "tiny-solo", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8001}
# gateway_check_interval 2s, timeout 2s, fall 2 (the role's defaults): out within 8 s.
OUT_WITHIN = 2 * (2 + 2)
# A converge pulls the vLLM image through the registry and starts two vLLM engines on this machine's cores.
PLAYBOOK_TIMEOUT = 3600


def host_docker(host, *args, check=True, timeout=120):
    """docker inside a stand-in host (its own daemon)."""
    return docker("exec", host, "docker", *args, check=check, timeout=timeout)


def kill_container(host, name):
    """docker kill in a stand-in. Docker sends SIGKILL, then waits for the container's exit and, when every process of
    it has not ended within 10 s, answers "PID ... is zombie and can not be killed" (its main process is dead) or
    "tried to kill container, but did not receive an exit event": a vLLM worker killed while serving took 11-30 s
    to end here (2026-12-08). The kill has happened then; wait for Docker to see the container end."""
    try:
        host_docker(host, "kill", name)
    except RuntimeError as e:
        if "is zombie" not in str(e) and "did not receive an exit event" not in str(e):
            raise
        print("docker kill: %s; waiting for the container to end" % e)
    deadline = time.monotonic() + 120
    while host_docker(host, "inspect", "--format", "{{.State.Running}}", name) == "true":
        assert time.monotonic() < deadline, "container %s on %s still runs 120 s after docker kill" % (name, host)
        time.sleep(1)


def address(host):
    return docker("inspect", "--format", '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % NETWORK, host)


def write_instance(directory, **extra):
    """The instance spanning both stand-ins, in the group_vars of their group (extra: more instance keys); the
    worker's stand-in also serves the model alone (SOLO), so that the gateway has a server left when the
    instance is out."""
    instance = {"name": INSTANCE, "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8000,
                "nodes": [HEAD, WORKER], "gpus_per_node": 1, "shape": "data", "executor": "mp",
                "cluster_interface": "eth0", "data_parallel_rpc_port": DP_RPC_PORT}
    instance.update(extra)
    with open(os.path.join(str(directory), "group_vars", "tiny_dp.yml"), "w") as f:
        # vllm_server_multinode_firewall left at its default (true): the firewall step proves the default
        yaml.safe_dump({"vllm_server_instances": [instance]}, f)
    os.makedirs(os.path.join(str(directory), "host_vars"), exist_ok=True)
    with open(os.path.join(str(directory), "host_vars", WORKER + ".yml"), "w") as f:
        yaml.safe_dump({"vllm_server_instances": [instance, SOLO]}, f)


def local_env(**extra):
    """inventories/local's vllm_server_env without VLLM_ENABLE_V1_MULTIPROCESSING (plus extra): the multi-node
    instance runs vLLM's default process layout, the one its nodes get on a user's hosts (the other tests' setting,
    docs/testing.md, changes how vLLM's processes start and end, which is what this file watches)."""
    path = os.path.join(ROOT, "inventories", "local", "group_vars", "gpu_hosts", "main.yml")
    env = dict(yaml.safe_load(open(path)).get("vllm_server_env") or {}, **extra)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    return env


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    """inventories/local's group_vars for both stand-ins, and the instance spanning them in their group's."""
    directory = tmp_path_factory.mktemp("multinode-inventory")
    shutil.copytree(os.path.join(ROOT, "inventories", "local", "group_vars"), str(directory / "group_vars"))
    gpu_vars = directory / "group_vars" / "gpu_hosts" / "main.yml"
    gpu_vars.write_text(yaml.safe_dump(dict(yaml.safe_load(gpu_vars.read_text()), vllm_server_env=local_env())))
    hosts = {"gpu_hosts": {"hosts": {HEAD: {"ansible_connection": "community.docker.docker"},
                                     WORKER: {"ansible_connection": "community.docker.docker"}}},
             "tiny_dp": {"hosts": {HEAD: {}, WORKER: {}}},
             # the gateway on the head's stand-in (site.yml's gateway play): it checks the instance at the head's
             # node health agent
             "gateway": {"hosts": {HEAD: {}}}}
    (directory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (directory / "group_vars" / "gateway.yml").write_text(yaml.safe_dump(
        {"gateway_api_key": TEST_GATEWAY_KEY, "gateway_stats_password": TEST_STATS_PASSWORD}))
    write_instance(directory)
    return str(directory)


@pytest.fixture(scope="module")
def standins():
    """The two host stand-ins, removed with their volumes at the end."""
    for name in (HEAD, WORKER):
        docker("rm", "-f", "-v", name, check=False)
        docker("run", "-d", "--name", name, "--hostname", name, "--network", NETWORK,
               *["--cap-add=%s" % c for c in CAPS],
               "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
               "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "-v", "/var/lib/docker",
               "--tmpfs", "/run", "--tmpfs", "/run/lock", "--shm-size", "1g", SYSTEMD_IMAGE, "/lib/systemd/systemd")
    # systemd's boot cleans /tmp, where Ansible puts its modules: a play that starts before the boot ends can lose one
    for name in (HEAD, WORKER):
        docker("exec", name, "systemctl", "is-system-running", "--wait", check=False, timeout=300)
    yield {"head": HEAD, "worker": WORKER}
    if os.environ.get("LLMOPS_IT_KEEP") == "1":  # to look at them after a failure; remove them by hand
        return
    for name in (HEAD, WORKER):
        docker("rm", "-f", "-v", name, check=False, timeout=300)


def playbook(inventory, path, *args, timeout=PLAYBOOK_TIMEOUT):
    """ansible-playbook from this checkout; returns (rc, output, {host: recap counts})."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", inventory, path] + list(args),
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = run.stdout + run.stderr
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        recap[host] = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", counts))
    return run.returncode, output, recap


def chat(host, n=1, timeout=120):
    """n chat completions through the head's API, from this machine; the replies' texts."""
    replies = []
    for _ in range(n):
        body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "Say hello."}],
                           "max_tokens": 8}).encode()
        request = urllib.request.Request("http://%s:8000/v1/chat/completions" % address(host), data=body,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer " + API_KEY})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            replies.append(json.load(response)["choices"][0]["message"]["content"])
    return replies


def engines_served(host):
    """{engine: requests that succeeded} from vLLM's /metrics on the head."""
    with urllib.request.urlopen("http://%s:8000/metrics" % address(host), timeout=30) as response:
        text = response.read().decode()
    served = {}
    for labels, value in re.findall(r'^vllm:request_success_total\{([^}]*)\} (\S+)$', text, re.M):
        engine = re.search(r'engine="(\d+)"', labels)
        if engine:
            served[engine.group(1)] = served.get(engine.group(1), 0) + float(value)
    return served


def inspect(host):
    return json.loads(host_docker(host, "inspect", INSTANCE))[0]


@pytest.fixture(scope="module")
def converged(standins, inventory):
    rc, output, _ = playbook(inventory, os.path.join(ROOT, "molecule", "resources", "prepare.yml"))
    assert rc == 0, output[-5000:]
    rc, output, recap = playbook(inventory, os.path.join(ROOT, "playbooks", "site.yml"))
    assert rc == 0, output[-8000:]
    return {"output": output, "recap": recap}


def test_the_head_answers_and_both_engines_serve(converged):
    assert len(chat(HEAD, 40)) == 40
    served = engines_served(HEAD)
    assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served


def test_each_node_runs_its_part_with_the_same_image(converged):
    head, worker = inspect(HEAD), inspect(WORKER)
    for node, container in ((HEAD, head), (WORKER, worker)):
        assert container["HostConfig"]["NetworkMode"] == "host"
        assert container["HostConfig"]["RestartPolicy"]["Name"] == "no"
        env = dict(e.split("=", 1) for e in container["Config"]["Env"])
        assert env["VLLM_HOST_IP"] == address(node)
        assert env["NCCL_SOCKET_IFNAME"] == "=eth0" and env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert container["Config"]["Labels"]["org.llmops.vllm.nodes"] == "%s,%s" % (HEAD, WORKER)
    assert head["Config"]["Labels"]["org.llmops.vllm.node-role"] == "head"
    assert worker["Config"]["Labels"]["org.llmops.vllm.node-role"] == "worker"
    assert "--headless" in worker["Args"] and "--headless" not in head["Args"]
    assert "@sha256:" in head["Config"]["Image"] and head["Config"]["Image"] == worker["Config"]["Image"]
    assert head["Image"] == worker["Image"], "the same image id on both nodes"


def _connect(source_host, target, port, timeout=5):
    """'open', 'refused' or 'timeout' for a TCP connection from source_host (None: this machine)."""
    if source_host is None:
        try:
            socket.create_connection((target, port), timeout=timeout).close()
            return "open"
        except ConnectionRefusedError:
            return "refused"
        except (socket.timeout, OSError):
            return "timeout"
    script = ("import socket\ntry:\n socket.create_connection(('%s', %d), timeout=%d).close(); print('open')\n"
              "except ConnectionRefusedError: print('refused')\nexcept OSError: print('timeout')" % (target, port, timeout))
    return docker("exec", source_host, "python3", "-c", script)


def test_the_cluster_port_takes_the_worker_and_drops_anyone_else(converged):
    head = address(HEAD)
    assert "tcp dport %d drop" % DP_RPC_PORT in docker("exec", HEAD, "nft", "list", "table", "inet", "llmops_vllm_cluster")
    assert _connect(WORKER, head, DP_RPC_PORT) in ("open", "refused"), "the worker must get an answer (SYN-ACK or RST)"
    assert _connect(None, head, DP_RPC_PORT) == "timeout", "a host that is no node must get nothing back"


def test_a_second_run_changes_nothing(converged, inventory):
    rc, output, recap = playbook(inventory, os.path.join(ROOT, "playbooks", "site.yml"))
    assert rc == 0, output[-8000:]
    assert recap[HEAD]["changed"] == 0 and recap[WORKER]["changed"] == 0, output[-8000:]


def test_an_upgrade_changes_both_nodes_in_one_batch(converged, inventory):
    """upgrade.yml with a changed instance: one batch holds both nodes, both restart with the change, and the
    head serves with both engines again. The instance's env grows by one variable (its own env keeps the
    inventory's HF_HUB_OFFLINE: docs/gateway.md's warning)."""
    before = {h: inspect(h)["State"]["StartedAt"] for h in (HEAD, WORKER)}
    env = local_env(LLMOPS_MN_UPGRADE="1")
    write_instance(inventory, env=env)
    # the batch holds both stand-ins, and so every server of tiny-chat at the gateway (the instance's head and
    # SOLO): the drain guard would refuse it, so this test allows it
    rc, output, recap = playbook(inventory, os.path.join(ROOT, "playbooks", "upgrade.yml"),
                                 "-e", "gateway_drain_allow_last=true")
    assert rc == 0, output[-8000:]
    assert "Batches of 2 host(s), in this order: %s, %s." % (HEAD, WORKER) in " ".join(output.split()), output[-8000:]
    after = {h: inspect(h)["State"]["StartedAt"] for h in (HEAD, WORKER)}
    assert all(after[h] != before[h] for h in (HEAD, WORKER)), (before, after)
    for host in (HEAD, WORKER):
        assert "LLMOPS_MN_UPGRADE=1" in inspect(host)["Config"]["Env"], host
    assert len(chat(HEAD, 20)) == 20
    served = engines_served(HEAD)
    assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served


def health_agent(host, address_of=None):
    """(status, body) of GET /health at a node's health agent, asked from inside the head's stand-in."""
    script = ("import urllib.request, urllib.error\ntry:\n r = urllib.request.urlopen('http://%s:%d/health', timeout=5); "
              "print(r.status, r.read().decode().strip())\nexcept urllib.error.HTTPError as e: print(e.code, e.read().decode().strip())"
              % (address_of or address(host), HEALTH_PORT))
    status, _, body = docker("exec", HEAD, "python3", "-c", script).partition(" ")
    return int(status), body


def test_each_node_runs_a_health_agent_and_the_gateway_checks_the_head_s(converged):
    for host in (HEAD, WORKER):
        assert docker("exec", host, "systemctl", "is-active", "llmops-vllm-health@%s.service" % INSTANCE) == "active"
    assert health_agent(HEAD) == (200, "ok") and health_agent(WORKER) == (200, "ok")
    # the worker's agent answers the head only (the cluster firewall), nobody else
    assert _connect(None, address(WORKER), HEALTH_PORT) == "timeout"
    config = docker("exec", HEAD, "cat", "/etc/haproxy/haproxy.cfg")
    assert re.search(r"server %s:%s \S+:8000 port %d$" % (HEAD, INSTANCE, HEALTH_PORT), config, re.M), config
    assert re.search(r"server %s:tiny-solo \S+:8001$" % WORKER, config, re.M), config


@pytest.fixture
def stranger():
    """A container on the stand-ins' network that is neither a node nor a gateway host."""
    name = PREFIX + "mn-stranger"
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--network", NETWORK, "--entrypoint", "sleep", SYSTEMD_IMAGE, "600")
    yield name
    docker("rm", "-f", name, check=False)


def test_the_head_s_health_agent_answers_the_nodes_and_the_gateway_only(converged, stranger):
    """Issue 22, item 5: the head's agent listens on the head's bind address (0.0.0.0 here), and the cluster
    firewall admits the instance's nodes and the gateway hosts (the gateway group, resolved on the head) only."""
    head = address(HEAD)
    rules = docker("exec", HEAD, "nft", "list", "table", "inet", "llmops_vllm_cluster")
    # the gateway's host (the head's stand-in) as the head resolved its inventory name, on any interface
    assert re.search(r"^\s*ip saddr (\{ )?%s( \})? tcp dport %d accept$" % (re.escape(head), HEALTH_PORT), rules, re.M), rules
    assert re.search(r"^\s*tcp dport %d drop$" % HEALTH_PORT, rules, re.M), rules
    assert health_agent(HEAD) == (200, "ok"), "the gateway's host must get an answer"
    assert _connect(WORKER, head, HEALTH_PORT) == "open", "a node of the instance must get an answer"
    # the stranger reaches the head's key-protected API, and nothing back from its agent
    assert _connect(stranger, head, 8000) == "open"
    assert _connect(stranger, head, HEALTH_PORT) == "timeout"
    assert _connect(None, head, HEALTH_PORT) == "timeout", "a host that is neither a node nor a gateway gets nothing back"


def test_a_killed_worker_takes_the_instance_out_of_the_gateway_and_the_next_run_brings_it_back(converged, inventory):
    """Issue 22, item 6: a data parallel head whose worker died keeps answering /health and sends some requests to
    the dead engine, where they hang (docs/multinode-design.md, "Restart semantics"). Its node health agent fails
    once the worker's container is gone, so the gateway takes the instance out within its check interval: under a
    load through the gateway, no request started after that hangs or fails (SOLO serves them); the next run restarts
    the instance and the gateway takes it back."""
    gateway = Gateway(address(HEAD))
    backend = [b for b in gateway.backends() if b.endswith("_tiny-chat")][0]
    head_server, solo_server = "%s:%s" % (HEAD, INSTANCE), "%s:tiny-solo" % WORKER
    for server in (head_server, solo_server):
        gateway.wait_status(backend, server, "UP", 120)
    before = {h: inspect(h)["State"]["StartedAt"] for h in (HEAD, WORKER)}
    load = Load(gateway.base_url, TEST_GATEWAY_KEY, ["tiny-chat"], concurrency=2, count=100000, seconds=600,
                max_tokens=8, timeout=30).start()
    time.sleep(15)
    state = inspect(WORKER)["State"]
    assert state["Running"], "the worker died before the test killed it: %s; its log ends: %s" % (
        state, docker("exec", WORKER, "sh", "-c", "docker logs --tail 30 %s 2>&1" % INSTANCE, check=False))
    killed = time.monotonic() - load.started
    kill_container(WORKER, INSTANCE)
    out_after = gateway.wait_status(backend, head_server, "DOWN", 60)
    time.sleep(40)
    summary = load.wait(stop=True)
    events = list(load.events)
    # What vLLM does by itself is recorded, not asserted (docs/multinode-design.md, "Restart semantics").
    head_state = inspect(HEAD)["State"]
    print("the instance was out of the gateway %.1f s after the worker was killed; the head is %s (health %s)"
          % (out_after, head_state["Status"], (head_state.get("Health") or {}).get("Status")))
    print("load: %s" % summary)
    print("requests started before it was out: %s" % [
        (round(start - killed, 1), round(end - start, 1), ok) for start, end, ok, _, _ in events
        if killed - 5 < start < killed + out_after])
    assert out_after <= OUT_WITHIN + 2, "out %.1f s after the kill, more than the check interval" % out_after
    after_out = [(start, end, ok) for start, end, ok, _, _ in events if start > killed + out_after]
    assert len(after_out) >= 10, (summary, len(after_out))
    assert all(ok for _, _, ok in after_out), summary["failures"]
    assert max(end - start for start, end, _ in after_out) < 20, "a request hung after the instance was out"
    assert health_agent(HEAD)[0] == 503 and health_agent(WORKER)[0] == 503
    rc, output, recap = playbook(inventory, os.path.join(ROOT, "playbooks", "site.yml"))
    assert rc == 0, output[-8000:]
    after = {h: inspect(h)["State"]["StartedAt"] for h in (HEAD, WORKER)}
    assert all(after[h] != before[h] for h in (HEAD, WORKER)), (before, after)
    assert recap[HEAD]["changed"] > 0 and recap[WORKER]["changed"] > 0
    assert len(chat(HEAD, 20)) == 20
    served = engines_served(HEAD)
    assert served.get("0", 0) > 0 and served.get("1", 0) > 0, served
    gateway.wait_status(backend, head_server, "UP", 60)


def test_uninstall_takes_whole_instances_only(converged, inventory):
    uninstall = os.path.join(ROOT, "playbooks", "uninstall.yml")
    rc, output, _ = playbook(inventory, uninstall, "-e", "llmops_target_hosts=%s" % WORKER, timeout=600)
    assert rc != 0 and "whose nodes %s are not in this run" % HEAD in output, output[-5000:]
    assert inspect(WORKER)["State"]["Running"], "nothing was removed"
    rc, output, _ = playbook(inventory, uninstall, timeout=600)
    assert rc == 0, output[-5000:]
    for host in (HEAD, WORKER):
        assert host_docker(host, "ps", "-a", "--filter", "label=org.llmops.vllm.instance", "--format", "{{.Names}}") == ""
        unit = subprocess.run(["docker", "exec", host, "test", "-e", "/etc/systemd/system/llmops-vllm-cluster-firewall.service"])
        assert unit.returncode == 1, "the cluster firewall's unit is gone"
        agent = subprocess.run(["docker", "exec", host, "test", "-e", "/etc/systemd/system/llmops-vllm-health@.service"])
        assert agent.returncode == 1, "the node health agent's unit is gone"
        assert docker("exec", host, "systemctl", "is-active", "llmops-vllm-health@%s.service" % INSTANCE,
                      check=False) != "active"
        assert subprocess.run(["docker", "exec", host, "nft", "list", "table", "inet", "llmops_vllm_cluster"],
                              capture_output=True).returncode != 0, "and its table"
