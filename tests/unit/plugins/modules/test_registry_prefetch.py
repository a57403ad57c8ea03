"""registry_prefetch against a small in-process registry API (the real cache is used in molecule/fleet)."""

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.llmops.vllm.plugins.modules import registry_prefetch

BLOBS = {}


def blob(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    BLOBS[digest] = data
    return {"digest": digest, "size": len(data)}


CONFIG, LAYER = blob(b"{}"), blob(b"layer" * 1000)
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": CONFIG, "layers": [LAYER]}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
INDEX = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"digest": "sha256:" + "0" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
    {"digest": MANIFEST_DIGEST, "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()


class Registry(BaseHTTPRequestHandler):
    """Answers like a pull-through cache: a blob it is asked for lands in its storage."""
    requests = []
    storage = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        Registry.requests.append(self.path)
        if self.path == "/v2/library/vllm/manifests/v1":
            body, kind = INDEX, "application/vnd.oci.image.index.v1+json"
        elif self.path == "/v2/library/vllm/manifests/" + MANIFEST_DIGEST:
            body, kind = MANIFEST, "application/vnd.oci.image.manifest.v1+json"
        elif self.path.startswith("/v2/library/vllm/blobs/") and self.path.rsplit("/", 1)[1] in BLOBS:
            body, kind = BLOBS[self.path.rsplit("/", 1)[1]], "application/octet-stream"
            if Registry.storage:
                cache(Registry.storage, self.path.rsplit("/", 1)[1])
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Registry.requests = []
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


def cache(storage, digest):
    hexdigest = digest.split(":")[1]
    path = os.path.join(storage, "docker", "registry", "v2", "blobs", "sha256", hexdigest[:2], hexdigest)
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, "data"), "wb").close()


@pytest.mark.parametrize(
    "image, parsed",
    [
        ("vllm/vllm-openai:v0.32.0", ("vllm/vllm-openai", "v0.32.0")),
        ("registry:2.8.3", ("library/registry", "2.8.3")),
        ("docker.io/library/ubuntu", ("library/ubuntu", "latest")),
        ("vllm/vllm-openai@sha256:" + "a" * 64, ("vllm/vllm-openai", "sha256:" + "a" * 64)),
        ("nvcr.io/nvidia/k8s/dcgm-exporter:4", None),
        ("localhost:5000/x:1", None),
    ],
)
def test_parse_reference(image, parsed):
    assert registry_prefetch.parse_reference(image) == parsed


def test_fetches_the_platforms_blobs_that_are_not_cached(run_module, registry, tmp_path):
    Registry.storage = str(tmp_path)
    cache(str(tmp_path), CONFIG["digest"])
    args = {"url": registry, "images": ["vllm:v1"], "storage_dir": str(tmp_path)}
    outcome, result = run_module(registry_prefetch.main, args)
    assert outcome == "exit" and result["changed"] is True
    assert result["images"][0]["manifest"] == MANIFEST_DIGEST
    assert result["fetched_bytes"] == LAYER["size"]
    assert "/v2/library/vllm/blobs/" + LAYER["digest"] in Registry.requests
    assert "/v2/library/vllm/blobs/" + CONFIG["digest"] not in Registry.requests
    Registry.storage = None


def test_a_blob_the_cache_does_not_store_times_out(run_module, registry, tmp_path):
    args = {"url": registry, "images": ["vllm:v1"], "storage_dir": str(tmp_path), "timeout": 1}
    outcome, result = run_module(registry_prefetch.main, args)
    assert outcome == "fail" and "did not store" in result["msg"] and CONFIG["digest"] in result["msg"]


def test_check_mode_fetches_nothing_and_a_cached_image_is_not_changed(run_module, registry, tmp_path):
    args = {"url": registry, "images": ["vllm:v1"], "storage_dir": str(tmp_path)}
    outcome, result = run_module(registry_prefetch.main, args, check_mode=True)
    assert outcome == "exit" and result["changed"] is True and result["fetched_bytes"] == CONFIG["size"] + LAYER["size"]
    assert not [r for r in Registry.requests if "/blobs/" in r]
    cache(str(tmp_path), CONFIG["digest"])
    cache(str(tmp_path), LAYER["digest"])
    outcome, result = run_module(registry_prefetch.main, args)
    assert outcome == "exit" and result["changed"] is False and result["fetched_bytes"] == 0


def test_another_registry_and_a_missing_platform_are_refused(run_module, registry, tmp_path):
    outcome, result = run_module(registry_prefetch.main, {"url": registry, "images": ["ghcr.io/x/y:1"], "storage_dir": str(tmp_path)})
    assert outcome == "fail" and "other than Docker Hub" in result["msg"]
    outcome, result = run_module(registry_prefetch.main, {"url": registry, "images": ["vllm:v1"], "storage_dir": str(tmp_path),
                                                          "platform": "linux/s390x"})
    assert outcome == "fail" and "no image for platform linux/s390x (it has linux/amd64, linux/arm64)" in result["msg"]


def test_an_upstream_failure_names_the_image_and_what_to_check(run_module, registry, tmp_path):
    outcome, result = run_module(registry_prefetch.main, {"url": registry, "images": ["vllm:v2"], "storage_dir": str(tmp_path)})
    assert outcome == "fail"
    assert result["msg"].startswith("Pulling vllm:v2 through the cache at %s failed" % registry)
    assert "registry_cache_remote_url" in result["msg"]
