"""Models once per fleet: the real huggingface_hub client against the Hub stand-in.

The stand-in (tests/doubles/hf-hub, a test double: Hugging Face is unreachable here) serves the tiny
models of .cache/models/hub (`make models`). The real `hf download` CLI and the module
llmops.vllm.hf_model_fetch (huggingface_hub 2.4.0, the version vLLM 0.32.0 ships) download from
it; the cache they write must be the tiny model's cache (same blob names, refs and snapshot), a
second fetch must download nothing, the hub's errors must reach the user in its words, and
llmops.vllm.hf_cache_check must pass on the result and fail on a corrupted copy.

No vLLM container is started: no lock needed.
"""

import json
import os
import shutil
import socket
import subprocess
import urllib.request

import pytest

from vllm_testbed import BIN, MODELS, ROOT, ModuleRun

SOURCE = os.path.join(MODELS, "hub")
CHAT = "llmops-test/tiny-chat"
GATED = "llmops-test/tiny-nochat"
GRANTED, DENIED = "hf_llmops_it_granted", "hf_llmops_it_denied"
HF_HUB = os.path.join(ROOT, "tests", "doubles", "hf-hub")


def folder(repo_id):
    return "models--" + repo_id.replace("/", "--")


def layout(storage):
    """What must be equal between two caches of a model: blob names and bytes, refs, snapshot symlinks."""
    blobs = {}
    for name in sorted(os.listdir(os.path.join(storage, "blobs"))):
        with open(os.path.join(storage, "blobs", name), "rb") as f:
            blobs[name] = f.read()
    refs = {}
    for name in sorted(os.listdir(os.path.join(storage, "refs"))):
        with open(os.path.join(storage, "refs", name)) as f:
            refs[name] = f.read()
    snapshots = {}
    for commit in sorted(os.listdir(os.path.join(storage, "snapshots"))):
        base = os.path.join(storage, "snapshots", commit)
        snapshots[commit] = {}
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                path = os.path.join(dirpath, name)
                snapshots[commit][os.path.relpath(path, base)] = os.readlink(path)
    return {"blobs": blobs, "refs": refs, "snapshots": snapshots}


def model_bytes(repo_id):
    return sum(len(b) for b in layout(os.path.join(SOURCE, folder(repo_id)))["blobs"].values())


class Hub(object):
    def __init__(self, port, config, source=SOURCE):
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.env = dict(os.environ, LLMOPS_HF_HUB_PORT=str(port), LLMOPS_HF_HUB_MODELS=source,
                        LLMOPS_HF_HUB_CONFIG=config)

    def control(self, command):
        result = subprocess.run([HF_HUB, command], env=self.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        return result.stdout

    def stats(self):
        return json.loads(self.control("stats"))

    def reset(self):
        self.control("reset")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if not os.path.isdir(os.path.join(SOURCE, folder(CHAT))):
        pytest.fail("the tiny models are missing in %s: run make models" % SOURCE)
    config = tmp_path_factory.mktemp("hf-hub") / "config.json"
    # page_size 2: the tree of a tiny model takes several pages, so the client's pagination is used.
    config.write_text(json.dumps({"tokens": [GRANTED, DENIED], "gated": {GATED: [GRANTED]}, "page_size": 2}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = Hub(port, str(config))
    hub.control("up")
    yield hub
    hub.control("down")


@pytest.fixture(autouse=True)
def clean_client_env(monkeypatch, tmp_path):
    """No token, endpoint or offline mode of the machine reaches the client."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def hf_download(hub, repo_id, cache_dir, *args):
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               NO_COLOR="1")
    return subprocess.run([os.path.join(BIN, "hf"), "download", repo_id, "--cache-dir", str(cache_dir)] + list(args),
                          env=env, capture_output=True, text=True, timeout=120)


def fetch(hub, cache_dir, check_mode=False, **args):
    run = ModuleRun(dict({"repo_id": CHAT, "cache_dir": str(cache_dir), "endpoint": hub.url}, **args),
                    check_mode=check_mode, module="llmops.vllm.hf_model_fetch")
    return run.result(timeout=300)


def check(cache_dir, repo_id=CHAT, **args):
    run = ModuleRun(dict({"repo_id": repo_id, "cache_dir": str(cache_dir)}, **args), module="llmops.vllm.hf_cache_check")
    return run.result(timeout=120)


def test_hf_download_writes_the_tiny_models_cache(hub, tmp_path):
    hub.reset()
    result = hf_download(hub, CHAT, tmp_path)
    assert result.returncode == 0, result.stderr
    assert layout(str(tmp_path / folder(CHAT))) == layout(os.path.join(SOURCE, folder(CHAT)))
    stats = hub.stats()
    # Each file once: the LFS file through the redirect to the "CDN", the others from /resolve.
    assert stats["bytes_served"] == model_bytes(CHAT)
    assert stats["requests_by_kind"]["cdn_get"] == 1
    assert stats["requests_by_kind"]["api_tree"] == 3  # 6 files, 2 a page
    # huggingface_hub 2.4 also records the commit's file list; make_tiny_model does not write it.
    commit = open(os.path.join(SOURCE, folder(CHAT), "refs", "main")).read()
    with open(str(tmp_path / folder(CHAT) / "trees" / (commit + ".json"))) as f:
        trees = json.load(f)["files"]
    assert sorted(trees) == sorted(layout(os.path.join(SOURCE, folder(CHAT)))["snapshots"][commit])
    assert trees["model.safetensors"]["lfs_sha256"] == os.path.basename(
        os.readlink(os.path.join(SOURCE, folder(CHAT), "snapshots", commit, "model.safetensors")))

    hub.reset()
    again = hf_download(hub, CHAT, tmp_path)
    assert again.returncode == 0, again.stderr
    assert hub.stats()["bytes_served"] == 0


def test_the_module_fetches_once_then_changes_nothing(hub, tmp_path):
    cache = tmp_path / "hub"
    hub.reset()
    planned = fetch(hub, cache, check_mode=True)
    assert planned["changed"] is True, planned
    assert planned["downloaded_bytes"] == model_bytes(CHAT)
    assert not cache.exists(), "check mode wrote to the cache"
    assert hub.stats()["bytes_served"] == 0

    first = fetch(hub, cache)
    assert first["changed"] is True, first
    assert first["bytes"] == first["downloaded_bytes"] == model_bytes(CHAT)
    assert first["source"] == "hub" and first["endpoint"] == hub.url
    assert layout(str(cache / folder(CHAT))) == layout(os.path.join(SOURCE, folder(CHAT)))
    assert hub.stats()["bytes_served"] == model_bytes(CHAT)
    assert first["files"] == sorted(layout(str(cache / folder(CHAT)))["snapshots"][first["commit"]])

    hub.reset()
    second = fetch(hub, cache)
    assert second["changed"] is False, second
    assert second["downloaded"] == [] and second["commit"] == first["commit"]
    stats = hub.stats()
    assert stats["bytes_served"] == 0
    assert stats["requests"] == 1, stats  # the revision, nothing else

    hub.reset()
    assert fetch(hub, cache, check_mode=True)["changed"] is False
    assert fetch(hub, cache, offline=True)["changed"] is False
    assert hub.stats()["requests"] == 1  # the check-mode run's revision; offline asks nothing


def test_a_cache_made_elsewhere_is_complete_without_a_download(hub, tmp_path):
    """The tiny models' own cache (make_tiny_model, no trees/ record) needs no byte from the hub."""
    shutil.copytree(os.path.join(SOURCE, folder(CHAT)), str(tmp_path / folder(CHAT)), symlinks=True)
    hub.reset()
    result = fetch(hub, tmp_path)
    assert result["changed"] is False and result["downloaded"] == [], result
    assert result["bytes"] == model_bytes(CHAT)
    stats = hub.stats()
    assert stats["bytes_served"] == 0
    assert set(stats["requests_by_kind"]) == {"api_revision", "api_tree"}, stats  # the client lists the tree once


def test_the_module_and_hf_download_write_the_same_cache(hub, tmp_path):
    assert fetch(hub, tmp_path / "module")["changed"] is True
    assert hf_download(hub, CHAT, tmp_path / "cli").returncode == 0
    module, cli = (tmp_path / "module" / folder(CHAT)), (tmp_path / "cli" / folder(CHAT))
    assert layout(str(module)) == layout(str(cli))
    assert sorted(os.listdir(str(module / "trees"))) == sorted(os.listdir(str(cli / "trees")))


def test_a_missing_model_is_named(hub, tmp_path):
    result = fetch(hub, tmp_path, repo_id="llmops-test/no-such-model")
    assert result["failed"]
    assert "model llmops-test/no-such-model (revision main) was not found on %s" % hub.url in result["msg"]
    assert '"Repository not found"' in result["msg"]
    cli = hf_download(hub, "llmops-test/no-such-model", tmp_path)
    assert cli.returncode != 0 and "Model 'llmops-test/no-such-model' not found" in cli.stderr + cli.stdout


def test_an_unknown_revision_is_named(hub, tmp_path):
    result = fetch(hub, tmp_path, revision="v9.9")
    assert result["failed"] and "the revision was not found" in result["msg"] and "Invalid rev id: v9.9" in result["msg"]


def test_a_gated_model_needs_a_granted_token(hub, tmp_path):
    anonymous = fetch(hub, tmp_path, repo_id=GATED)
    assert anonymous["failed"]
    assert "is gated" in anonymous["msg"] and "(HTTP 401)" in anonymous["msg"] and "Please log in" in anonymous["msg"]
    assert "vllm_server_hf_token" in anonymous["msg"]

    denied = fetch(hub, tmp_path, repo_id=GATED, token=DENIED)
    assert denied["failed"]
    assert "(HTTP 403)" in denied["msg"] and "not in the authorized list" in denied["msg"]
    assert DENIED not in json.dumps(denied)

    invalid = fetch(hub, tmp_path, repo_id=GATED, token="hf_not_a_token")
    assert invalid["failed"] and "rejected the token" in invalid["msg"]
    assert "hf_not_a_token" not in json.dumps(invalid)

    cli = hf_download(hub, GATED, tmp_path / "cli")
    assert cli.returncode != 0 and "requires approval" in cli.stderr + cli.stdout

    granted = fetch(hub, tmp_path, repo_id=GATED, token=GRANTED)
    assert granted["changed"] is True, granted
    assert layout(str(tmp_path / folder(GATED))) == layout(os.path.join(SOURCE, folder(GATED)))


def test_an_unreachable_hub_is_named_and_a_complete_cache_still_serves(hub, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = "http://127.0.0.1:%d" % s.getsockname()[1]
    result = fetch(hub, tmp_path / "empty", endpoint=closed)
    assert result["failed"] and "could not reach %s" % closed in result["msg"]
    assert "vllm_server_hf_endpoint" in result["msg"]

    assert fetch(hub, tmp_path / "full")["changed"] is True
    cached = fetch(hub, tmp_path / "full", endpoint=closed)
    assert cached["changed"] is False and cached["source"] == "cache"
    assert any("could not reach" in w for w in cached.get("warnings", []))


def test_hf_cache_check_passes_on_a_fetch_and_fails_on_a_corrupt_copy(hub, tmp_path):
    fetched = fetch(hub, tmp_path / "control")
    good = check(tmp_path / "control", expected_files=fetched["files"])
    assert not good.get("failed"), good
    assert good["changed"] is False and good["files"] == fetched["files"] and good["bytes"] == fetched["bytes"]
    assert good["manifest"] == "trees+expected_files"

    # The tiny model as make_tiny_model wrote it (no trees/ record) passes too.
    assert not check(SOURCE).get("failed")

    # A copy as rsync -a makes it (symlinks kept), then one blob corrupted and one symlink lost.
    shutil.copytree(str(tmp_path / "control"), str(tmp_path / "gpu"), symlinks=True)
    storage = tmp_path / "gpu" / folder(CHAT)
    snapshot = storage / "snapshots" / fetched["commit"]
    with open(os.path.realpath(str(snapshot / "model.safetensors")), "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.unlink(str(snapshot / "tokenizer.json"))
    bad = check(tmp_path / "gpu", expected_files=fetched["files"])
    assert bad["failed"]
    assert [b["file"] for b in bad["bad_files"]] == ["model.safetensors", "tokenizer.json"]
    assert "does not match its sha256" in bad["msg"] and "is missing from the snapshot" in bad["msg"]
    assert "Delete %s and run again" % storage in bad["msg"]


# ---- llmops.vllm.hf_model_config: what a model is, before any host downloads it ----------------------

def describe(hub, *models, **args):
    run = ModuleRun(dict({"models": [dict(model=m, revision="main") if isinstance(m, str) else m for m in models],
                          "endpoint": hub.url}, **args), module="llmops.vllm.hf_model_config")
    return run.result(timeout=300)


def small_files_bytes(repo_id):
    """The bytes of config.json and generation_config.json: all hf_model_config may download of a model."""
    commit = open(os.path.join(SOURCE, folder(repo_id), "refs", "main")).read()
    snapshot = os.path.join(SOURCE, folder(repo_id), "snapshots", commit)
    return sum(os.path.getsize(os.path.join(snapshot, n)) for n in ("config.json", "generation_config.json")
               if os.path.exists(os.path.join(snapshot, n)))


def test_hf_model_config_describes_a_model_without_downloading_its_weights(hub, tmp_path):
    hub.reset()
    result = describe(hub, CHAT)
    assert result["changed"] is False
    entry = result["models"][0]
    commit = open(os.path.join(SOURCE, folder(CHAT), "refs", "main")).read()
    assert entry["problem"] == "" and entry["commit"] == commit, entry
    config = entry["config"]
    # make_tiny_model's LlamaConfig
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["num_hidden_layers"], config["head_dim"],
            config["hidden_size"], config["max_position_embeddings"]) == (2, 2, 2, 64, 128, 2048), config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["auto_map"] is False
    weights = os.path.getsize(os.path.join(SOURCE, folder(CHAT), "snapshots", commit, "model.safetensors"))
    assert entry["weights_bytes"] == weights
    assert entry["generation_config"].get("eos_token_id") is not None
    stats = hub.stats()
    assert stats["bytes_served"] == small_files_bytes(CHAT), stats
    assert "cdn_get" not in stats["requests_by_kind"], "a weight file was downloaded"


def test_hf_model_config_says_what_the_hub_refused(hub, tmp_path):
    result = describe(hub, "llmops-test/no-such-model", dict(model=CHAT, revision="v9"), GATED)
    missing, revision, gated = result["models"]
    assert (missing["problem"], missing["status"]) == ("not_found", 401), missing  # no token: the Hub hides it as private
    assert (revision["problem"], revision["status"]) == ("revision", 404), revision
    assert (gated["problem"], gated["status"], gated["token"]) == ("gated", 401, False), gated
    assert gated["config"] == {}


def test_hf_model_config_tells_a_token_without_access_from_a_granted_one(hub, tmp_path):
    denied = describe(hub, GATED, token=DENIED)
    assert (denied["models"][0]["problem"], denied["models"][0]["status"]) == ("gated", 403), denied
    assert DENIED not in json.dumps(denied)
    granted = describe(hub, GATED, token=GRANTED)["models"][0]
    assert granted["problem"] == "" and granted["config"]["num_attention_heads"] == 2, granted
    rejected = describe(hub, CHAT, token="hf_not_a_token")["models"][0]
    assert rejected["problem"] == "token_rejected" and rejected["status"] == 401, rejected


def test_hf_model_config_skips_with_a_warning_when_the_hub_does_not_answer(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    run = ModuleRun({"models": [{"model": CHAT}], "endpoint": "http://127.0.0.1:%d" % port}, module="llmops.vllm.hf_model_config")
    result = run.result(timeout=300)
    assert not result.get("failed"), result
    assert result["models"][0]["problem"] == "unreachable", result
    assert any("could not ask http://127.0.0.1:%d about it" % port in w for w in result.get("warnings", [])), result


def test_hf_model_config_reads_a_lora_adapters_config(tmp_path):
    """A LoRA adapter's repository (tests/tooling/tiny-lora's, in the cache layout): no config.json, its
    adapter_config.json read instead, for the vllm_server preflight's checks (docs/lora.md)."""
    source = os.path.join(ROOT, ".cache", "lora", "hub")
    repo = "llmops-test/tiny-chat-sql"
    if not os.path.isdir(os.path.join(source, folder(repo))):
        pytest.fail("the tiny adapters are missing in %s: run make models" % source)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"tokens": []}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapters = Hub(port, str(config), source=source)
    adapters.control("up")
    try:
        commit = open(os.path.join(source, folder(repo), "refs", "main")).read().strip()
        entry = describe(adapters, {"model": repo, "revision": commit})["models"][0]
    finally:
        adapters.control("down")
    assert entry["problem"] == "" and entry["commit"] == commit, entry
    assert entry["adapter_config"] == {"peft_type": "LORA", "base_model_name_or_path": "llmops-test/tiny-chat", "r": 8,
                                       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert entry["weights_bytes"] == os.path.getsize(os.path.join(source, folder(repo), "snapshots", commit,
                                                                  "adapter_model.safetensors"))
