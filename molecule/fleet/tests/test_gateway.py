"""The gateway of the fleet (llmops-fleet-ops, groups gateway): routing by model across the gpu hosts,
its own answers, health checks under a kill, drains around upgrades, refused input, idempotence.

The tests run in file order and change the fleet as they go (a backend killed and started again,
upgrades); each leaves every server UP at the gateway. Needs in the fleet's inventory:
gateway_api_key = llmops_gateway.TEST_GATEWAY_KEY on the gateway host, vllm_server_api_key =
llmops_testlib.TEST_API_KEY on the gpu hosts, and every served model on at least two hosts.
"""

import json
import os
import subprocess
import time

import pytest
import yaml

from llmops_gateway import PACED_LOAD, PACED_LOAD_MAX_GAP_S, TEST_GATEWAY_KEY, Gateway, Load
from llmops_testlib import TEST_API_KEY, outer_address, recap, run_playbook

GATEWAY_HOST = "llmops-fleet-ops"
GPU_HOSTS = ["llmops-fleet-gpu1", "llmops-fleet-gpu2", "llmops-fleet-gpu3"]
BROKEN = "vllm/vllm-openai-cpu:v0.32.0-broken-x86_64"
# gateway_check_interval 2s, timeout 2s, fall 2 (the role's defaults): out within 8 s.
OUT_WITHIN = 2 * (2 + 2)

testinfra_hosts = [GATEWAY_HOST]


def upgraded_env(marker):
    """The gpu hosts' vllm_server_env with one more variable: a change that makes upgrade.yml
    recreate every server. An extra var replaces the inventory's whole dictionary, so the
    inventory's own entries (HF_HUB_OFFLINE: the servers load the model offline) are kept."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "inventories", "local-fleet", "group_vars",
                        "gpu_hosts.yml")
    with open(path) as f:
        env = dict(yaml.safe_load(f)["vllm_server_env"])
    env["LLMOPS_GATEWAY_UPGRADE"] = marker
    return env


def docker_address(name):
    out = subprocess.check_output(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name], text=True)
    return json.loads(out)["llmops-test"]["IPAddress"]


@pytest.fixture(scope="module")
def gateway():
    gw = Gateway(docker_address(GATEWAY_HOST))
    deadline = time.time() + 120
    while time.time() < deadline and not all(r["status"].startswith("UP") for r in gw.servers().values()):
        time.sleep(1)
    return gw


def model_of(gateway, backend):
    return backend.split("_", 1)[1]


def served(gateway):
    """{model: [server, ...]} from the gateway's backends (backend model<N>_<model>)."""
    return dict((model_of(gateway, b), s) for b, s in gateway.backends().items())


def backend_of(gateway, model):
    return [b for b in gateway.backends() if model_of(gateway, b) == model][0]


def in_gpu_host(server, *command):
    """Run a docker command in the gpu host of a server <host>:<instance>, on the instance's container."""
    host, instance = server.split(":", 1)
    return subprocess.run(["docker", "exec", host, "docker"] + list(command) + [instance],
                          capture_output=True, text=True, timeout=120)


def test_haproxy_from_debian_runs_with_root_only_key_files(host):
    assert host.package("haproxy").is_installed and host.package("haproxy").version.startswith("2.6")
    assert host.service("haproxy").is_running and host.service("haproxy").is_enabled
    for name in ("client-keys.acl", "backend-keys.map"):
        f = host.file("/etc/haproxy/llmops/" + name)
        assert (f.user, f.mode) == ("root", 0o600), name
    config = host.file("/etc/haproxy/haproxy.cfg").content_string
    assert TEST_GATEWAY_KEY not in config and TEST_API_KEY not in config
    assert host.run("haproxy -c -f /etc/haproxy/haproxy.cfg").rc == 0


def test_every_instance_of_the_fleet_is_a_server_of_its_models_backend(gateway):
    servers = served(gateway)
    hosts = set(s.split(":")[0] for names in servers.values() for s in names)
    assert hosts == set(GPU_HOSTS)
    assert {"tiny-chat", "tiny-chat-b"} <= set(servers)
    for model, names in servers.items():
        assert len(set(n.split(":")[0] for n in names)) >= 2, "%s needs two hosts for zero-loss upgrades" % model


def test_models_lists_the_union_of_the_fleet(gateway):
    status, body = gateway.call("/v1/models")
    assert status == 200 and body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == sorted(served(gateway))


def test_requests_go_to_the_servers_of_their_model_only(gateway):
    before = dict((k, int(r["stot"])) for k, r in gateway.servers().items())
    for model in served(gateway):
        for _ in range(6):
            status, body = gateway.chat(model)
            assert status == 200 and body["model"] == model, body
    after = dict((k, int(r["stot"])) for k, r in gateway.servers().items())
    for model, names in served(gateway).items():
        backend = backend_of(gateway, model)
        got = dict((s, after[(backend, s)] - before[(backend, s)]) for s in names)
        assert sum(got.values()) == 6, got
        # leastconn with sequential requests spreads them over the model's hosts
        assert len([s for s, n in got.items() if n]) >= 2, got


def test_a_lora_adapter_of_two_hosts_is_served_through_the_gateway(gateway):
    """Issue 20: the adapter tiny-chat-sql (tests/tooling/tiny-lora's, fetched once for the fleet from the hub
    stand-in at its commit) is served on top of tiny-chat-b by gpu1 (its instance's lora block) and gpu2
    (vllm_server_lora). The gateway lists it with its base as parent, routes its name to those two servers
    only, both answer under the adapter's name, and the adapter's weights are applied (greedy decoding of one
    prompt says other words than the base model)."""
    status, body = gateway.call("/v1/models")
    assert status == 200
    listed = dict((m["id"], m) for m in body["data"])
    assert listed["tiny-chat-sql"].get("parent") == "tiny-chat-b", listed
    assert listed["tiny-chat-b"].get("parent") is None, listed
    backend = backend_of(gateway, "tiny-chat-sql")
    servers = sorted(gateway.backends()[backend])
    assert servers == ["llmops-fleet-gpu1:vllm-chat-b", "llmops-fleet-gpu2:vllm"], servers
    before = dict((s, int(gateway.servers()[(backend, s)]["stot"])) for s in servers)
    prompt = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0}
    replies = set()
    for _ in range(8):
        status, answer = gateway.call("/v1/chat/completions", dict(prompt, model="tiny-chat-sql"))
        assert status == 200 and answer["model"] == "tiny-chat-sql", answer
        assert answer["choices"][0]["finish_reason"] in ("stop", "length"), answer
        replies.add(answer["choices"][0]["message"]["content"])
    got = dict((s, int(gateway.servers()[(backend, s)]["stot"]) - before[s]) for s in servers)
    assert sum(got.values()) == 8 and all(got.values()), got
    # both hosts load the same adapter (one commit): one prompt, one greedy reply
    assert len(replies) == 1, replies
    status, base = gateway.call("/v1/chat/completions", dict(prompt, model="tiny-chat-b"))
    assert status == 200 and base["model"] == "tiny-chat-b", base
    assert base["choices"][0]["message"]["content"] not in replies, (base, replies)
    # the adapter's name is not a way around the gateway's key
    assert gateway.call("/v1/chat/completions", dict(prompt, model="tiny-chat-sql"), key="wrong")[0] == 401


def test_an_unknown_model_gets_a_404_naming_the_served_models(gateway):
    status, body = gateway.chat("no-such-model")
    assert status == 404
    assert body["error"]["type"] == "NotFoundError" and body["error"]["code"] == 404
    assert body["error"]["message"] == "The model `no-such-model` does not exist. Models served here: %s." % (
        ", ".join(sorted(served(gateway))))


def test_clients_need_the_gateway_key_and_the_servers_keys_stay_behind(gateway):
    assert gateway.chat("tiny-chat", key="wrong")[0] == 401
    assert gateway.chat("tiny-chat", key=TEST_API_KEY)[0] == 401
    # the gateway's key does not open a server directly
    direct = Gateway(docker_address(GPU_HOSTS[1]), port=8000, key=TEST_GATEWAY_KEY)
    assert direct.chat("tiny-chat")[0] == 401


def test_the_prometheus_exporter_reports_each_server(gateway):
    text = gateway.metrics()
    for (backend, server) in gateway.servers():
        assert 'haproxy_server_status{proxy="%s",server="%s",state="UP"} 1' % (backend, server) in text


def test_a_killed_backend_under_load_loses_at_most_its_in_flight_requests(gateway):
    backend = backend_of(gateway, "tiny-chat")
    victim = sorted(gateway.backends()[backend])[-1]
    load = Load(gateway.base_url, TEST_GATEWAY_KEY, list(served(gateway)), concurrency=6, count=400, seconds=60,
                max_tokens=32).start()
    time.sleep(8)
    before = gateway.servers()[(backend, victim)]
    kill_started = time.monotonic()
    killed = in_gpu_host(victim, "kill")
    assert killed.returncode == 0, killed.stderr
    gateway.wait_status(backend, victim, "DOWN", OUT_WITHIN + 2)
    out_after = time.monotonic() - kill_started
    sent_to_victim = int(gateway.servers()[(backend, victim)]["stot"])
    # in flight on it when it died: those open at the last sample before the kill, plus those it was
    # given between that sample and being marked down (requests last about a second here)
    in_flight = int(before["scur"]) + sent_to_victim - int(before["stot"])
    summary = load.wait()
    print("kill under load: %s; %d in flight on %s; out after %.1f s" % (summary, in_flight, victim, out_after))
    assert out_after <= OUT_WITHIN
    assert summary["failed"] <= in_flight, summary
    assert summary["ok"] > 0
    # nothing more was sent to it once the checks took it out
    assert int(gateway.servers()[(backend, victim)]["stot"]) == sent_to_victim
    started = in_gpu_host(victim, "start")
    assert started.returncode == 0, started.stderr
    back_after = gateway.wait_status(backend, victim, "UP", 600)
    print("back %.1f s after docker start" % back_after)


# The bad tag under load: gpu1's servers are stopped for a release that never becomes ready and
# rolled back (two restarts of gpu1 with the load running). The rollback puts back the instances that
# passed their last verification, which are the inventory's own: the fleet is left as site.yml leaves
# it, so the tests after this one need no restore run. The rolling upgrade of every host (which does
# change the fleet's settings) runs last of all, in test_upgrade.py.
def test_a_bad_tag_is_rolled_back_under_load_and_loses_no_request(gateway):
    load = Load(gateway.base_url, TEST_GATEWAY_KEY, list(served(gateway)), max_tokens=32, **PACED_LOAD).start()
    result = run_playbook("playbooks/upgrade.yml", {"vllm_server_image": BROKEN})
    summary = load.wait(stop=True)
    print("bad tag under load: %s" % summary)
    assert result.returncode != 0
    text = " ".join(result.output.split())
    assert "The upgrade stopped at %s:" % GPU_HOSTS[0] in text and "were put back" in text
    assert summary["failed"] == 0, summary["failures"]
    assert summary["ok"] > 0
    assert summary["max_gap_s"] <= PACED_LOAD_MAX_GAP_S, summary
    # the rolled-back host is back in the gateway once its checks pass
    for backend, server in gateway.servers():
        gateway.wait_status(backend, server, "UP", 60)
    # (that it runs the inventory's own settings again, test_site_failures.py's site.yml run shows:
    # changed=0 on gpu1)


def test_the_last_healthy_server_of_a_model_is_not_drained(gateway, host):
    backend = backend_of(gateway, "tiny-chat-b")
    servers = sorted(gateway.backends()[backend])
    keep, others = servers[0], servers[1:]
    socket = "/run/haproxy/admin.sock"
    for server in others:
        host.check_output("echo 'disable server %s/%s' | python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); "
                          "s.connect('%s'); s.sendall(sys.stdin.read().encode()); print(s.recv(4096).decode())\"",
                          backend, server, socket)
    try:
        target = keep.split(":")[0]
        result = run_playbook("playbooks/upgrade.yml", {"vllm_server_env": upgraded_env("2"),
                                                       "llmops_target_hosts": target})
        assert result.returncode != 0
        text = " ".join(result.output.split())
        assert "%s is the last healthy server of model tiny-chat-b (backend %s)" % (target, backend) in text
        assert "gateway_drain_allow_last: true" in text
        assert gateway.status(backend, keep) == "UP"
    finally:
        for server in others:
            host.run("echo 'enable server %s/%s' | python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); "
                     "s.connect('%s'); s.sendall(sys.stdin.read().encode()); print(s.recv(4096).decode())\"",
                     backend, server, socket)
        for server in others:
            gateway.wait_status(backend, server, "UP", 60)


def test_a_batch_holding_every_server_of_a_model_is_not_drained(gateway):
    """llmops_upgrade_serial: 2 makes gpu1 and gpu2 the first batch, and tiny-chat-b has no server elsewhere: the
    batch is refused, naming the model and both hosts, before any server is drained or any container changed (issue 22)."""
    backend = backend_of(gateway, "tiny-chat-b")
    servers = sorted(gateway.backends()[backend])
    assert sorted(set(s.split(":")[0] for s in servers)) == ["llmops-fleet-gpu1", "llmops-fleet-gpu2"], servers
    started = dict((s, in_gpu_host(s, "inspect", "--format", "{{.State.StartedAt}}").stdout) for s in servers)
    result = run_playbook("playbooks/upgrade.yml", {"vllm_server_env": upgraded_env("3"), "llmops_upgrade_serial": 2})
    assert result.returncode != 0
    text = " ".join(result.output.split())
    assert "Batches of 2, 1 host(s)" in text, result.output[-3000:]
    assert ("The batch llmops-fleet-gpu1, llmops-fleet-gpu2 would drain every healthy server of model tiny-chat-b "
            "(backend %s) at gateway %s: llmops-fleet-gpu1 and llmops-fleet-gpu2 all serve it" % (backend, GATEWAY_HOST)
            in text), result.output[-3000:]
    assert "Use a smaller batch (llmops_upgrade_serial)" in text
    # both hosts of the batch refuse it, and no host drained anything
    for gpu in ("llmops-fleet-gpu1", "llmops-fleet-gpu2"):
        assert recap(result.output, gpu)["failed"] == 1 and recap(result.output, gpu)["changed"] == 0, gpu
    for server in servers:
        assert gateway.status(backend, server) == "UP", server
        assert in_gpu_host(server, "inspect", "--format", "{{.State.StartedAt}}").stdout == started[server], server


def test_a_batch_spread_over_the_models_is_drained_and_taken_back(gateway):
    """gpu2 and gpu3 in one batch: tiny-chat-b keeps gpu1's server, tiny-chat gpu1's too. The batch's drain is
    allowed: both hosts' servers are drained together and taken back (--tags gateway: the drain and the enable
    steps of the upgrade only, as an operator drains hosts for maintenance)."""
    drained = []
    result = run_playbook("playbooks/upgrade.yml", {"llmops_upgrade_serial": 2,
                                                   "llmops_target_hosts": "llmops-fleet-gpu2,llmops-fleet-gpu3"},
                          extra_args=["--tags", "gateway"])
    assert result.returncode == 0, result.output[-3000:]
    assert "Batches of 2 host(s)" in " ".join(result.output.split())
    for gpu in ("llmops-fleet-gpu2", "llmops-fleet-gpu3"):
        counts = recap(result.output, gpu)
        assert counts["failed"] == 0 and counts["changed"] >= 2, (gpu, counts)
    batch = ("llmops-fleet-gpu2:vllm", "llmops-fleet-gpu3:vllm")
    for server in batch:
        drained += [line for line in result.output.splitlines() if line.startswith("changed:") and server in line]
    # each server drained, then enabled, in every backend it is a server of (gpu2's also serves the LoRA adapter
    # tiny-chat-sql: three backend servers in all)
    pairs = [(backend, server) for backend, server in gateway.servers() if server in batch]
    assert len(pairs) == 3, pairs
    assert len(drained) == 2 * len(pairs), drained
    for backend, server in gateway.servers():
        gateway.wait_status(backend, server, "UP", 120)


@pytest.mark.parametrize("extra, message", [
    ({"gateway_models": ["tiny-chat", "llama-3"]}, "gateway_models asks for llama-3, but no host of gpu_hosts serves it"),
    ({"gateway_stats_port": 8080}, "gateway_port and gateway_stats_port are both 8080"),
    ({"gateway_backend_group": "gpu-hosts"}, "no vLLM instance to route to: the group gpu-hosts"),
])
def test_bad_input_is_refused_before_any_change(host, extra, message):
    before = host.file("/etc/haproxy/haproxy.cfg").content_string
    result = run_playbook("playbooks/gateway.yml", extra)
    assert result.returncode != 0
    assert message in " ".join(result.output.split())
    assert "The gateway on %s cannot be set up" % GATEWAY_HOST in result.output
    assert host.file("/etc/haproxy/haproxy.cfg").content_string == before


def test_the_gateway_playbook_is_idempotent_and_check_mode_safe(gateway):
    result = run_playbook("playbooks/gateway.yml")
    assert result.returncode == 0 and recap(result.output, GATEWAY_HOST)["changed"] == 0, result.output[-3000:]
    result = run_playbook("playbooks/gateway.yml", check=True)
    assert result.returncode == 0 and recap(result.output, GATEWAY_HOST)["changed"] == 0, result.output[-3000:]
    assert TEST_GATEWAY_KEY not in result.output and TEST_API_KEY not in result.output
