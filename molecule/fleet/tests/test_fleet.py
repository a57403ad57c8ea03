"""A fleet converged by one site.yml run: every host serves, the upstream registry served each
image once (through the cache), each model came from the hub once, and verify.yml reports every
host. These tests change nothing."""

import json
import os
import subprocess

import pytest
import testinfra

from llmops_testlib import TEST_API_KEY, cache_read_ahead, image_blob_sizes, model_snapshot_bytes, run_playbook, upstream_blob_bytes, verify

OPS = "llmops-fleet-ops"
GPU_HOSTS = ["llmops-fleet-gpu1", "llmops-fleet-gpu2", "llmops-fleet-gpu3"]
# What each GPU host serves (inventories/local-fleet): port -> served model name.
SERVED = {
    "llmops-fleet-gpu1": {8000: "tiny-chat", 8001: "tiny-chat-b"},
    "llmops-fleet-gpu2": {8000: "tiny-chat-b"},
    "llmops-fleet-gpu3": {8000: "tiny-chat"},
}
# The LoRA adapters the servers list in /v1/models beside their model: (host, port) -> names.
ADAPTERS = {
    ("llmops-fleet-gpu1", 8001): ["tiny-chat-sql"],
    ("llmops-fleet-gpu2", 8000): ["tiny-chat-sql"],
}
UPSTREAM = "llmops-registry"
IMAGE_REPOSITORY, IMAGE_TAG = "vllm/vllm-openai-cpu", "v0.32.0-x86_64"


def fleet_host(name):
    return testinfra.get_host("ansible://" + name, ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def address(name):
    out = subprocess.check_output(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name], text=True)
    return json.loads(out)["llmops-test"]["IPAddress"]


def fleet_created():
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "fleet-created")) as f:
        return f.read().strip()


@pytest.mark.parametrize("name", GPU_HOSTS)
def test_each_gpu_host_serves_its_instances(name):
    host = fleet_host(name)
    for port, model in SERVED[name].items():
        adapters = ADAPTERS.get((name, port), [])
        result = verify(host, url="http://127.0.0.1:%d" % port, model=model, api_key=TEST_API_KEY, timeout=300,
                        adapters=adapters)
        assert result["failed"] is False, result.get("msg")
        assert result["models"] == [model] + adapters
        assert [(a["name"], a["parent"]) for a in result.get("adapters", [])] == [(a, model) for a in adapters]


@pytest.mark.parametrize("name", GPU_HOSTS)
def test_each_gpu_host_pulls_through_the_fleet_cache(name):
    host = fleet_host(name)
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["registry-mirrors"] == ["http://%s:5000" % OPS]


def test_the_cache_runs_from_the_distribution_package_with_metrics():
    host = fleet_host(OPS)
    assert host.package("docker-registry").is_installed
    assert host.service("docker-registry").is_running and host.service("docker-registry").is_enabled
    config = host.file("/etc/docker/registry/config.yml")
    assert config.mode == 0o640 and config.user == "root" and config.group == "docker-registry"
    assert "remoteurl: \"http://llmops-registry:5000\"" in config.content_string
    assert host.file("/data/registry-cache").user == "docker-registry"
    metrics = host.check_output("curl -fsS http://127.0.0.1:5001/metrics")
    assert "registry_http_requests_total" in metrics or "go_goroutines" in metrics


def test_the_upstream_served_the_image_once_for_the_whole_fleet():
    """From the upstream's own request log: the cache host fetched each blob once (plus what
    Distribution 2.8's stopped stream reads ahead, at most 8 MiB a blob: see registry_prefetch),
    and no GPU host fetched anything from upstream."""
    sent = upstream_blob_bytes(fleet_created(), UPSTREAM)
    blobs = image_blob_sizes(IMAGE_REPOSITORY, IMAGE_TAG)
    size = sum(blobs)
    # The read-ahead of the probe stream registry_prefetch hangs up on is what the sockets and
    # Distribution's copy buffer hold when the hang-up arrives: 1.3 MB a blob seen with a 50 MB
    # blob, 10 MB over this image's 6 blobs (1.012x) in one fleet run. Bounded here at 8 MiB a blob
    # (never more than the blob): any blob of this image above 8 MiB fetched a second time fails.
    read_ahead = cache_read_ahead(blobs)
    cache = sent.get(address(OPS), 0)
    assert size <= cache <= size + read_ahead, "the cache host got %d bytes of a %d-byte image (%.3fx, at most %d over): %r" % (
        cache, size, cache / size, read_ahead, sent)
    for name in GPU_HOSTS:
        assert sent.get(address(name), 0) == 0, "%s pulled from upstream directly: %r" % (name, sent)


def test_verify_playbook_reports_every_host(tmp_path):
    result = run_playbook("verify.yml", {"llmops_verify_report_dir": str(tmp_path)})
    assert result.returncode == 0, result.output[-3000:]
    reports = [f for f in os.listdir(str(tmp_path)) if f.endswith(".json")]
    assert reports, os.listdir(str(tmp_path))
    with open(os.path.join(str(tmp_path), reports[0])) as f:
        report = json.load(f)
    rows = report["endpoints"] if isinstance(report, dict) and "endpoints" in report else report
    seen = sorted((row["host"], row["model"]) for row in rows)
    expected = sorted((name, model) for name, ports in SERVED.items() for model in ports.values())
    assert seen == expected
    assert all(row["ready"] for row in rows), rows
    for name in GPU_HOSTS:
        assert name in result.output


def test_each_model_came_from_the_hub_once_for_the_whole_fleet():
    """tiny-chat is served by three hosts; the hub stand-in served its files once (to the control
    node), and each host holds a checked copy in its Hugging Face cache."""
    root = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    stats = json.loads(subprocess.check_output([os.path.join(root, "tests", "doubles", "hf-hub"), "stats"], text=True))
    hub = os.path.join(root, ".cache", "models", "hub")
    revision, model_bytes = model_snapshot_bytes(hub, "llmops-test/tiny-chat")
    # Every file once, to the control node, with one exception: the bare fleet's --check run (molecule's
    # check step) also read config.json and generation_config.json to judge the model before any change
    # (hf_model_config; check mode keeps nothing). The converge's own reading of them went into the control
    # node's cache, from which the download took them: no second copy.
    snapshot = os.path.join(hub, "models--llmops-test--tiny-chat", "snapshots", revision)
    small = dict((name, os.path.getsize(os.path.join(snapshot, name))) for name in ("config.json", "generation_config.json"))
    chat_bytes = sum(f["bytes"] for name, f in stats["files"].items() if name.startswith("llmops-test/tiny-chat/"))
    assert chat_bytes == model_bytes + sum(small.values()), stats
    for name in os.listdir(snapshot):
        served = stats["files"]["llmops-test/tiny-chat/" + name]
        assert served["downloads"] == (2 if name in small else 1), (name, served)
    # The LoRA adapter gpu1 and gpu2 serve (tests/tooling/tiny-lora's, in .cache/lora/hub): its weights once,
    # its adapter_config.json at most twice (read by the preflight of the check run and of the converge).
    lora_hub = os.path.join(root, ".cache", "lora", "hub")
    adapter_revision, dummy = model_snapshot_bytes(lora_hub, "llmops-test/tiny-chat-sql")
    adapter = os.path.join(lora_hub, "models--llmops-test--tiny-chat-sql", "snapshots", adapter_revision)
    weights = stats["files"]["llmops-test/tiny-chat-sql/adapter_model.safetensors"]
    assert weights == {"downloads": 1, "bytes": os.path.getsize(os.path.join(adapter, "adapter_model.safetensors"))}
    assert stats["files"]["llmops-test/tiny-chat-sql/adapter_config.json"]["downloads"] in (1, 2), stats
    # nothing else came from the hub
    assert sorted(set(name.rsplit("/", 1)[0] for name in stats["files"])) == [
        "llmops-test/tiny-chat", "llmops-test/tiny-chat-sql"], stats
    assert stats["bytes_served"] == sum(f["bytes"] for f in stats["files"].values()), stats
    for name in GPU_HOSTS:
        host = fleet_host(name)
        result = host.ansible("llmops.vllm.hf_cache_check", "cache_dir=/data/vllm/models/hub repo_id=llmops-test/tiny-chat",
                              check=False)
        assert not result.get("failed") and "msg" not in result, (name, result)
        assert host.file("/data/vllm/models/hub/models--llmops-test--tiny-chat/refs/main").content_string == revision
