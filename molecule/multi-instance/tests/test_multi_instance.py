"""Several instances on one host, their removal, a rolled-back upgrade and uninstall.

The tests run in file order and change the host as they go."""

import json
import os
import shlex

import yaml

from llmops_testlib import CPU_IMAGE, TEST_API_KEY, VLLM_VERSION, aliased_inventory, containers, recap, run_playbook, verify

HOST = "llmops-multi-instance"
IMAGE = CPU_IMAGE
BROKEN = "vllm/vllm-openai-cpu:v%s-broken-x86_64" % VLLM_VERSION


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


def test_uninstall_keeps_models_and_logs(host):
    result = run_playbook("playbooks/uninstall.yml")
    assert result.returncode == 0, result.output[-3000:]
    assert containers(host) == {}
    assert not host.file("/data/vllm/configs").exists
    assert host.file("/data/vllm/models/hub/models--llmops-test--tiny-chat/refs/main").exists
    assert host.file("/data/vllm/logs/vllm-chat.log").exists
    assert "vllm-chat-vllm-cache" not in host.check_output("docker volume ls --format '{{.Name}}'")
    second = run_playbook("playbooks/uninstall.yml")
    assert recap(second.output, HOST)["changed"] == 0


def test_uninstall_purges_models_and_logs_when_asked(host):
    result = run_playbook("playbooks/uninstall.yml", {"vllm_server_purge_models": True, "vllm_server_purge_logs": True})
    assert result.returncode == 0, result.output[-3000:]
    assert not host.file("/data/vllm/models").exists and not host.file("/data/vllm/logs").exists
