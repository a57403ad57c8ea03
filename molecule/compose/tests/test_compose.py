"""Compose mode, and the way back to container mode. The tests run in file order."""

import yaml

from llmops_testlib import CPU_IMAGE, MODEL, TEST_API_KEY, containers, recap, run_playbook, verify

HOST = "llmops-compose"


def test_the_instances_are_a_compose_project(host):
    f = host.file("/data/vllm/compose/compose.yaml")
    assert f.user == "root" and f.mode == 0o640
    project = yaml.safe_load(f.content_string)
    assert project["name"] == "vllm"
    service = project["services"]["vllm"]
    assert service["image"] == CPU_IMAGE
    assert service["ipc"] == "host" and service["restart"] == "unless-stopped"
    assert service["ports"] == ["0.0.0.0:8000:8000"]
    assert service["command"] == ["llmops-test/tiny-chat", "--config", "/etc/vllm/vllm.yaml"]
    assert "deploy" not in service, "a CPU-only host reserves no GPUs"
    assert TEST_API_KEY not in f.content_string
    assert host.run("docker compose -f /data/vllm/compose/compose.yaml config --quiet").rc == 0


def test_compose_runs_the_container(host):
    c = containers(host)["vllm"]
    labels = c["Config"]["Labels"]
    assert labels["com.docker.compose.project"] == "vllm" and labels["org.llmops.vllm.mode"] == "compose"
    assert c["State"]["Running"] is True
    assert TEST_API_KEY not in host.check_output("docker inspect vllm")


def test_the_endpoint_is_verified_the_same_way(host):
    result = verify(host, model=MODEL, api_key=TEST_API_KEY, container="vllm", timeout=300)
    assert result["failed"] is False, result.get("msg")
    assert result["reply"].strip()


def test_switching_back_to_container_mode_replaces_the_project(host):
    result = run_playbook("site.yml", {"vllm_server_mode": "container"})
    assert result.returncode == 0, result.output[-3000:]
    assert not host.file("/data/vllm/compose").exists
    c = containers(host)["vllm"]
    assert c["Config"]["Labels"]["org.llmops.vllm.mode"] == "container"
    assert "com.docker.compose.project" not in c["Config"]["Labels"]
    assert verify(host, model=MODEL, api_key=TEST_API_KEY, timeout=300)["failed"] is False
    again = run_playbook("site.yml", {"vllm_server_mode": "container"})
    assert recap(again.output, HOST)["changed"] == 0
