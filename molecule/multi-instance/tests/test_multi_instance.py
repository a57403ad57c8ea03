"""Several instances on one host, their removal, a rolled-back upgrade and uninstall; and the
collection as an operator installs it (its built artifact and the dependencies galaxy.yml declares,
next to ansible-core alone) running site, verify, upgrade, gateway and uninstall on this host.

The tests run in file order and change the host as they go."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from llmops_gateway import TEST_STATS_PASSWORD, Gateway
from llmops_testlib import (CPU_IMAGE, TEST_API_KEY, VLLM_VERSION, aliased_inventory, containers, outer_address, recap,
                            run_playbook, verify)

HOST = "llmops-multi-instance"
IMAGE = CPU_IMAGE
BROKEN = "vllm/vllm-openai-cpu:v%s-broken-x86_64" % VLLM_VERSION
ROOT = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.join(os.path.dirname(__file__), "..", "..", "..")
GATEWAY_KEY = "llmops-test-gateway-key"  # not a secret: a throwaway test host


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """llmops.vllm installed with `ansible-galaxy collection install --offline` from its built artifact and
    the declared dependencies' artifacts, into a clean collections path next to a virtualenv holding
    ansible-core and requirements.txt only (tests/tooling/collection_artifacts.py)."""
    where = tmp_path_factory.mktemp("installed")
    made = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tooling", "collection_artifacts.py"), "install",
                           str(where)], capture_output=True, text=True)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
    return dict(json.loads(made.stdout), cwd=str(where))


def run_installed(installed, playbook, extra_vars=None, extra_args=None):
    """`ansible-playbook llmops.vllm.<playbook>` of the installed collection against the scenario's
    inventory, from a directory without ansible.cfg, with the clean collections path only."""
    cmd = [os.path.join(installed["bin"], "ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
           "llmops.vllm." + playbook]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    cmd += extra_args or []
    env = dict(installed["env"], PATH=installed["bin"] + os.pathsep + installed["env"].get("PATH", ""))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=installed["cwd"])
    result.output = result.stdout + result.stderr
    return result


def also_in_groups(directory, groups):
    """An inventory file that puts the scenario's host into more groups (with host variables per group)."""
    path = os.path.join(str(directory), "more-groups.yml")
    with open(path, "w") as f:
        json.dump(dict((group, {"hosts": {HOST: host_vars}}) for group, host_vars in groups.items()), f)
    return ["-i", path]


def test_each_instance_runs_in_its_own_container_on_its_own_port(host):
    found = containers(host)
    assert sorted(found) == ["vllm-chat", "vllm-small"]
    ports = dict((n, c["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostPort"]) for n, c in found.items())
    assert ports == {"vllm-chat": "8000", "vllm-small": "8001"}
    for name, c in found.items():
        assert c["Config"]["Labels"]["org.llmops.vllm.instance"] == name
        assert c["Args"][-1] == "/etc/vllm/%s.yaml" % name
        volumes = [m for m in c["Mounts"] if m["Type"] == "volume"]
        assert [(m["Name"], m["Destination"]) for m in volumes] == [(name + "-vllm-cache", "/root/.cache/vllm")]
    assert "max-num-seqs: 4" in host.file("/data/vllm/configs/vllm-small.yaml").content_string
    assert "max-num-seqs" not in host.file("/data/vllm/configs/vllm-chat.yaml").content_string


def test_each_instance_answers_under_its_own_name(host):
    for port, model in ((8000, "chat"), (8001, "chat-small")):
        result = verify(host, url="http://127.0.0.1:%d" % port, model=model, api_key=TEST_API_KEY, timeout=300)
        assert result["failed"] is False, result.get("msg")
        assert result["models"] == [model]


def test_a_model_is_downloaded_once_before_its_server_starts(host):
    stamp = host.file("/data/vllm/models/.downloaded/llmops-test--tiny-chat@main")
    assert stamp.is_file and stamp.content_string.strip() == "llmops-test/tiny-chat main"
    assert "vllm-small-download" not in host.check_output("docker ps -a --format '{{.Names}}'")


# Each test takes testinfra's `host`, even where it does not use it: pytest runs the tests of the
# parametrized fixture together, in file order, and any without it after them (after uninstall).
def test_the_artifact_installs_with_the_declared_dependencies_only(host, installed):
    clean = os.path.join(installed["collections"], "ansible_collections")
    found = installed["installed"]
    # ansible-core's own collections (inside its package) aside, only what the clean path holds
    venv = os.path.dirname(installed["bin"])
    elsewhere = dict((name, c["path"]) for name, c in found.items() if c["path"] != clean)
    assert all(path.startswith(venv + os.sep) for path in elsewhere.values()), elsewhere
    assert set(found) - set(elsewhere) == {"llmops.vllm"} | set(installed["closure"])
    assert {"community.docker", "community.general", "ansible.posix"} <= set(installed["declared"])
    assert "grafana.grafana" not in found


def test_the_installed_collection_serves_verifies_and_upgrades_the_converged_host(host, installed):
    site = run_installed(installed, "site")
    assert site.returncode == 0, site.output[-3000:]
    assert recap(site.output, HOST)["changed"] == 0
    checked = run_installed(installed, "verify")
    assert checked.returncode == 0, checked.output[-3000:]
    with open(os.path.join(installed["cwd"], "reports", "verify.json")) as f:
        rows = json.load(f)["endpoints"]
    assert sorted((r["url"], r["model"], r["ok"]) for r in rows) == [
        ("http://127.0.0.1:8000", "chat", True), ("http://127.0.0.1:8001", "chat-small", True)]
    # issue 22: with no gateway group, this failed at once: couldn't resolve module/action 'community.general.haproxy'
    upgraded = run_installed(installed, "upgrade")
    assert upgraded.returncode == 0, upgraded.output[-3000:]
    assert "couldn't resolve" not in upgraded.output
    for port, model in ((8000, "chat"), (8001, "chat-small")):
        assert "http://127.0.0.1:%d serves %s " % (port, model) in upgraded.output
    assert recap(upgraded.output, HOST)["failed"] == 0


def test_the_installed_collection_runs_a_gateway_and_upgrades_through_it(installed, host, tmp_path):
    """This host is also the gateway: HAProxy routes to its two instances, and the upgrade drains and
    enables them through community.general.haproxy."""
    groups = also_in_groups(tmp_path, {"gateway": {}, "gpu_hosts": {"gateway_backend_address": "127.0.0.1"}})
    made = run_installed(installed, "gateway", {"gateway_api_key": GATEWAY_KEY,
                                                "gateway_stats_password": TEST_STATS_PASSWORD}, groups)
    assert made.returncode == 0, made.output[-3000:]
    gateway = Gateway(outer_address(host), key=GATEWAY_KEY)
    for model in ("chat", "chat-small"):
        status, body = gateway.chat(model)
        assert status == 200 and body["model"] == model, body
    # one server per model here: draining it is that model's outage, accepted on purpose
    upgraded = run_installed(installed, "upgrade", {"gateway_api_key": GATEWAY_KEY, "gateway_drain_allow_last": True,
                                                   "gateway_stats_password": TEST_STATS_PASSWORD}, groups)
    assert upgraded.returncode == 0, upgraded.output[-3000:]
    text = " ".join(upgraded.output.split())
    assert "Drain this host's servers and wait for their requests to finish" in text
    assert "Enable this host's servers and wait until their health checks pass" in text
    servers = gateway.servers()
    assert len(servers) == 2
    for backend, server in servers:
        # each label twice: drained (pre_tasks), then enabled (post_tasks)
        assert text.count("%s: %s/%s" % (HOST, backend, server)) >= 2, "not drained and enabled: %s/%s" % (backend, server)
        assert gateway.status(backend, server).startswith("UP")
    assert gateway.chat("chat")[0] == 200


def test_the_installed_collection_refuses_grafana_without_its_collection(installed, host, tmp_path):
    """grafana.grafana is optional (not in galaxy.yml): with Grafana on, the monitoring role names it and
    its install command before anything on any host changes."""
    result = run_installed(installed, "monitoring", {"monitoring_grafana_enabled": True,
                                                     "monitoring_grafana_admin_password": "llmops-test-admin"},
                           also_in_groups(tmp_path, {"monitoring": {}}))
    assert result.returncode != 0
    text = " ".join(result.output.split())
    assert ("%s: Grafana is on (monitoring_grafana_enabled), but the grafana.grafana collection that installs it is "
            "not installed on the control node. Install it there with `ansible-galaxy collection install "
            "grafana.grafana`" % HOST) in text, result.output[-3000:]
    assert recap(result.output, HOST)["changed"] == 0
    assert not host.package("prometheus").is_installed


def test_a_failed_download_is_reported_as_one_and_starts_nothing(host):
    before = dict((n, (c["Id"], c["State"]["StartedAt"])) for n, c in containers(host).items())
    listed = [{"name": "vllm-chat", "model": "llmops-test/tiny-chat", "served_model_name": "chat", "port": 8000},
              {"name": "vllm-missing", "model": "llmops-test/not-there", "port": 8002, "download": True}]
    result = run_playbook("site.yml", {"vllm_server_instances": listed})
    assert result.returncode != 0
    text = " ".join(result.output.split())
    assert "Downloading llmops-test/not-there for instance vllm-missing on %s failed" % HOST in text
    assert "offline mode is enabled" in text and "Nothing was started." in text
    after = dict((n, (c["Id"], c["State"]["StartedAt"])) for n, c in containers(host).items())
    assert after == before


def test_a_failed_upgrade_is_rolled_back_and_stops_the_rollout(host, tmp_path):
    before = containers(host)
    state_before = host.file("/data/vllm/configs/state.json").content_string
    # Two inventory names for this one container: the rollout's first and second host.
    inventory = aliased_inventory(str(tmp_path), HOST, ["gpu-first", "gpu-second"],
                                  os.path.join(os.path.dirname(__file__), "..", "host_vars", HOST + ".yml"))
    result = run_playbook("playbooks/upgrade.yml", {"vllm_server_image": BROKEN}, inventory=inventory)
    assert result.returncode != 0
    text = " ".join(result.output.split())
    assert "The upgrade stopped at gpu-first:" in text
    assert "crashes at start" in text and "broken on purpose" in text
    assert "previous instances (%s) were put back" % IMAGE in text
    assert "Hosts after it in the rollout were not touched." in text
    assert recap(result.output, "gpu-first")["rescued"] == 1
    assert "[gpu-second]" not in result.output, "the rollout must stop at the first failed host"
    after = containers(host)
    assert sorted(after) == sorted(before)
    assert all(c["Config"]["Image"] == IMAGE for c in after.values())
    assert host.file("/data/vllm/configs/state.json").content_string == state_before
    for port, model in ((8000, "chat"), (8001, "chat-small")):
        result = verify(host, url="http://127.0.0.1:%d" % port, model=model, api_key=TEST_API_KEY, timeout=300)
        assert result["failed"] is False, result.get("msg")


def test_an_upgrade_verifies_and_records_even_when_the_inventory_turns_verification_off(host, tmp_path):
    host_vars = tmp_path / "host_vars.yml"
    with open(os.path.join(os.path.dirname(__file__), "..", "host_vars", HOST + ".yml")) as f:
        listed = yaml.safe_load(f)
    listed["vllm_server_instances"][1]["options"]["max_num_seqs"] = 3
    listed["vllm_server_verify"] = False
    host_vars.write_text(yaml.safe_dump(listed))
    inventory = aliased_inventory(str(tmp_path / "inventory"), HOST, ["gpu-first"], str(host_vars))
    result = run_playbook("playbooks/upgrade.yml", inventory=inventory)
    assert result.returncode == 0, result.output[-3000:]
    # both instances answered a chat completion in this run, and what passed is what upgrade.yml rolls back to
    for port, model in ((8000, "chat"), (8001, "chat-small")):
        assert "http://127.0.0.1:%d serves %s " % (port, model) in result.output
    state = json.loads(host.file("/data/vllm/configs/state.json").content_string)
    assert state["instances"][1]["options"]["max_num_seqs"] == 3


def test_an_instance_without_its_secrets_file_refuses_to_start(host):
    """The container's entrypoint wrapper, run as the instance's container runs it, with the secrets file gone."""
    chat = containers(host)["vllm-chat"]
    entrypoint, command = chat["Config"]["Entrypoint"], chat["Config"]["Cmd"]
    host.check_output("mkdir -p /tmp/configs-without-secrets && cp /data/vllm/configs/vllm-chat.yaml /tmp/configs-without-secrets/")
    # a wrapper that failed open would start vLLM: the timeout ends that case, and the container is removed
    run = host.run("timeout 120 docker run --rm --name llmops-secrets-probe --entrypoint %s -v /tmp/configs-without-secrets:/etc/vllm:ro %s %s" % (
        shlex.quote(entrypoint[0]), shlex.quote(chat["Config"]["Image"]),
        " ".join(shlex.quote(a) for a in entrypoint[1:] + command)))
    host.run("docker rm -f llmops-secrets-probe; rm -rf /tmp/configs-without-secrets")
    assert run.rc != 0, run.stdout + run.stderr
    assert "cannot read its secrets file /etc/vllm/vllm-chat.env" in run.stderr and run.rc == 78
    assert "refusing to start" in run.stderr
    assert "vLLM API server" not in run.stdout + run.stderr, "vLLM must not start at all"


def test_dropping_an_instance_removes_its_container_and_only_that(host):
    before = containers(host)["vllm-chat"]
    keep = [{"name": "vllm-chat", "model": "llmops-test/tiny-chat", "served_model_name": "chat", "port": 8000}]
    result = run_playbook("site.yml", {"vllm_server_instances": keep})
    assert result.returncode == 0, result.output[-3000:]
    after = containers(host)
    assert sorted(after) == ["vllm-chat"]
    assert (after["vllm-chat"]["Id"], after["vllm-chat"]["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    for suffix in (".yaml", ".env", ".logging.json"):
        assert not host.file("/data/vllm/configs/vllm-small" + suffix).exists
        assert host.file("/data/vllm/configs/vllm-chat" + suffix).exists
    assert host.file("/data/vllm/logs/vllm-small.log").exists, "logs of a removed instance are kept"
    state = json.loads(host.file("/data/vllm/configs/state.json").content_string)
    assert [i["name"] for i in state["instances"]] == ["vllm-chat"]


def test_uninstall_keeps_models_and_logs(host, installed):
    # llmops.vllm.uninstall as installed (the same playbook as the checkout's playbooks/uninstall.yml)
    result = run_installed(installed, "uninstall")
    assert result.returncode == 0, result.output[-3000:]
    assert containers(host) == {}
    assert not host.file("/data/vllm/configs").exists
    assert host.file("/data/vllm/models/hub/models--llmops-test--tiny-chat/refs/main").exists
    assert host.file("/data/vllm/logs/vllm-chat.log").exists
    assert "vllm-chat-vllm-cache" not in host.check_output("docker volume ls --format '{{.Name}}'")
    second = run_installed(installed, "uninstall")
    assert recap(second.output, HOST)["changed"] == 0


def test_uninstall_purges_models_and_logs_when_asked(host):
    result = run_playbook("playbooks/uninstall.yml", {"vllm_server_purge_models": True, "vllm_server_purge_logs": True})
    assert result.returncode == 0, result.output[-3000:]
    assert not host.file("/data/vllm/models").exists and not host.file("/data/vllm/logs").exists
