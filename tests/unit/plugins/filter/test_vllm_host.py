"""What the vllm_server role reads from the host: its GPUs, the instances it finds, the models to fetch."""

from ansible_collections.llmops.vllm.plugins.filter.vllm_downloads import vllm_downloads
from ansible_collections.llmops.vllm.plugins.filter.vllm_state import (
    vllm_dropped_instances, vllm_found_instances, vllm_host_gpus, vllm_stale_containers)


def test_host_gpus_from_nvidia_gpu_info():
    info = {"gpus": [{"index": 0, "uuid": "GPU-a", "memory_total_mib": "81920", "name": "A100"}]}
    assert vllm_host_gpus(info) == [{"index": "0", "uuid": "GPU-a", "memory_mib": 81920}]
    assert vllm_host_gpus({}) == [] and vllm_host_gpus(None) == []


def test_found_dropped_and_stale_instances():
    host_info = {"containers": [
        {"Labels": {"org.llmops.vllm.instance": "chat", "org.llmops.vllm.mode": "container"}},
        {"Labels": {"org.llmops.vllm.instance": "old"}},
        {"Labels": {"org.llmops.vllm.instance": "small", "org.llmops.vllm.mode": "compose"}}]}
    found = vllm_found_instances(host_info, "container")
    assert found == [{"name": "chat", "mode": "container", "node_role": "", "nodes": []},
                     {"name": "old", "mode": "container", "node_role": "", "nodes": []},
                     {"name": "small", "mode": "compose", "node_role": "", "nodes": []}]
    listed = [{"name": "chat"}, {"name": "small"}]
    assert vllm_dropped_instances(found, listed) == ["old"]
    # dropped ones first, then those running in the other mode
    assert vllm_stale_containers(found, listed, "container") == ["old", "small"]
    assert vllm_stale_containers(found, listed, "compose") == ["old", "chat"]
    assert vllm_found_instances({}, "container") == []


def test_downloads_are_hub_models_with_their_stamp():
    instances = [{"name": "a", "model": "org/m", "download": True},
                 {"name": "b", "model": "org/m", "download": True, "revision": "v2"},
                 {"name": "c", "model": "/models/local", "download": True},
                 {"name": "d", "model": "org/n", "download": False}]
    downloads = vllm_downloads(instances, "/data/vllm/models")
    assert [d["name"] for d in downloads] == ["a", "b"]
    assert downloads[0]["download_stamp"] == "/data/vllm/models/.downloaded/org--m@main"
    assert downloads[1]["download_stamp"] == "/data/vllm/models/.downloaded/org--m@v2"
