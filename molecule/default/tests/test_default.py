"""The default scenario: a bare Debian 12 host turned into a verified vLLM endpoint."""

import json
import re

import openai
import pytest
from llmops_testlib import (CPU_IMAGE, MODEL, TEST_API_KEY, TEST_HF_TOKEN, daemon_json, docker_info, inspect_container, outer_address, recap,
                            registry_digest, run_playbook, verify, VLLM_VERSION)

MIRROR = "http://llmops-registry:5000"
IMAGE = CPU_IMAGE


def test_docker_runs_and_starts_at_boot(host):
    service = host.service("docker")
    assert service.is_running and service.is_enabled
    assert docker_info(host)["ServerVersion"]


def test_daemon_json_has_the_mirror_live_restore_and_log_rotation(host):
    config = daemon_json(host)
    assert config["registry-mirrors"] == [MIRROR]
    assert config["live-restore"] is True
    assert config["log-opts"] == {"max-size": "100m", "max-file": "3"}
    info = docker_info(host)
    assert info["RegistryConfig"]["Mirrors"] == [MIRROR + "/"]
    assert info["LiveRestoreEnabled"] is True


def test_image_came_through_the_mirror(host):
    # The image is a local build that exists nowhere but in the test registry: the digest the
    # host recorded for it is the registry's, so the pull went through the mirror.
    digests = json.loads(host.check_output("docker image inspect --format '{{json .RepoDigests}}' %s", IMAGE))
    assert digests == ["vllm/vllm-openai-cpu@" + registry_digest("vllm/vllm-openai-cpu", "v%s-x86_64" % VLLM_VERSION)]


@pytest.mark.parametrize(
    "path, mode",
    [("/data/vllm", 0o755), ("/data/vllm/models", 0o755), ("/data/vllm/logs", 0o755), ("/data/vllm/configs", 0o750)],
)
def test_directories(host, path, mode):
    f = host.file(path)
    assert f.is_directory and f.user == "root" and f.mode == mode


def test_the_seeded_model_is_kept(host):
    assert host.file("/data/vllm/models/hub/models--llmops-test--tiny-chat/refs/main").is_file


def test_container_runs_with_the_expected_settings(host):
    c = inspect_container(host, "vllm")
    assert c["State"]["Running"] is True
    assert c["Config"]["Image"] == IMAGE
    hc = c["HostConfig"]
    assert hc["IpcMode"] == "host"
    assert hc["RestartPolicy"]["Name"] == "unless-stopped"
    assert hc["PortBindings"] == {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}
    assert not hc.get("DeviceRequests"), "a CPU-only host must not request GPUs"
    mounts = {m["Destination"]: m for m in c["Mounts"]}
    assert mounts["/root/.cache/huggingface"]["Source"] == "/data/vllm/models"
    assert mounts["/var/log/vllm"]["Source"] == "/data/vllm/logs"
    assert mounts["/etc/vllm"]["Source"] == "/data/vllm/configs" and mounts["/etc/vllm"]["RW"] is False
    assert c["Args"][-4:] == ["serve", "llmops-test/tiny-chat", "--config", "/etc/vllm/vllm.yaml"]


def test_vllm_options_are_in_its_config_file(host):
    f = host.file("/data/vllm/configs/vllm.yaml")
    assert f.mode == 0o640
    assert "served-model-name: tiny-chat" in f.content_string


@pytest.mark.parametrize("secret", [TEST_API_KEY, TEST_HF_TOKEN], ids=["API key", "HF token"])
def test_secrets_are_in_a_root_only_file(host, secret):
    secrets = host.file("/data/vllm/configs/vllm.env")
    assert secrets.user == "root" and secrets.mode == 0o600
    assert secret in secrets.content_string


@pytest.mark.parametrize("secret", [TEST_API_KEY, TEST_HF_TOKEN], ids=["API key", "HF token"])
def test_secrets_are_not_in_docker_inspect_or_the_process_list(host, secret):
    assert secret not in host.check_output("docker inspect vllm")
    assert secret not in host.check_output("ps -eww -o args")


def test_the_server_got_its_secrets(host):
    env = host.check_output("cat /proc/%s/environ", str(inspect_container(host, "vllm")["State"]["Pid"]))
    assert "VLLM_API_KEY=%s" % TEST_API_KEY in env.split("\0") and "HF_TOKEN=%s" % TEST_HF_TOKEN in env.split("\0")


def test_secrets_are_not_in_ansible_output_even_verbose(host):
    result = run_playbook("site.yml", verbosity=3)
    assert result.returncode == 0, result.output[-3000:]
    assert TEST_API_KEY not in result.output and TEST_HF_TOKEN not in result.output
    assert recap(result.output, host.backend.get_hostname())["changed"] == 0


def test_a_rotated_key_is_not_in_the_diff_of_a_check_run(host):
    # --check --diff shows what each changed file would look like: the secrets file must stay hidden.
    rotated = "llmops-rotated-key-0123456789"
    result = run_playbook("site.yml", {"vllm_server_api_key": rotated}, check=True, verbosity=3)
    assert result.returncode == 0, result.output[-3000:]
    # the secrets files' task ran and would change the file, with its content and diff hidden
    assert re.search(r"TASK \[llmops\.vllm\.vllm_server : Write the secrets files of the instances\]"
                     r"(?:(?!\nTASK \[).)*\nchanged: \[", result.output, re.S), result.output[-3000:]
    assert rotated not in result.output and TEST_HF_TOKEN not in result.output
    assert TEST_API_KEY in host.file("/data/vllm/configs/vllm.env").content_string, "check mode changed nothing"


def test_vllm_logs_to_the_logs_directory(host):
    log = host.file("/data/vllm/logs/vllm.log")
    assert log.is_file and "vllm" in log.content_string.lower()


def test_module_verifies_the_endpoint(host):
    result = verify(host, model=MODEL, api_key=TEST_API_KEY, container="vllm", timeout=300)
    assert result.get("failed") is not True, result.get("msg")
    assert result["ready"] is True and result["models"] == [MODEL]
    assert result["reply"].strip()
    assert result["chat"]["usage"]["completion_tokens"] >= 1
    assert result["stream"]["content"].strip()
    assert result["version"].startswith(VLLM_VERSION)


def test_module_reports_a_wrong_key(host):
    result = verify(host, model=MODEL, api_key="wrong-key", timeout=30)
    assert result["failed"] is True
    assert "refused the API key" in result["msg"] and "wrong-key" not in result["msg"]


def test_openai_client_gets_a_chat_reply(host):
    client = openai.OpenAI(base_url="http://%s:8000/v1" % outer_address(host), api_key=TEST_API_KEY, timeout=120)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
    assert reply.choices[0].message.content.strip()
    assert reply.usage.completion_tokens >= 1
