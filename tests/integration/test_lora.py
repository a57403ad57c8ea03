"""LoRA adapters (docs/lora.md) on the real vLLM 0.32.0 CPU server: the container the role renders.

The instance is resolved and its container built by the role's own code (vllm_resolve_instances,
container_args): its --config file (--enable-lora, --max-lora-rank, --lora-modules in vLLM's JSON form),
the adapter's host directory mounted read-only, the resolver's directory and environment. The tiny
adapters are tests/tooling/tiny-lora's (`make models`): rank 8 on tiny-chat's attention projections.
The server starts while the shared chat server loads (conftest.py), so most of its start overlaps.

Proven: the static adapter answers under its own name, with other words than the base model, and
/v1/models lists it with the served model as parent (verify_endpoint's adapters check); an adapter
dropped into the resolver's directory is served on its first request, without a restart; the
preflight reads the real adapter_config.json files and refuses the wrong-base one; and the facts the
role's refusals rest on: offline, vLLM compares a runtime adapter's base with the model's snapshot
path; its API key guards /v1/load_lora_adapter but not POST /adapters and DELETE /adapters/<name>.
"""

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from vllm_testbed import API_KEY, MODELS, ROOT, ModuleRun, VllmContainer, docker

sys.path.insert(0, os.path.join(ROOT, "collections"))

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances  # noqa: E402
from ansible_collections.llmops.vllm.plugins.filter.vllm_lora import vllm_lora_paths, vllm_lora_problems  # noqa: E402
from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_container import container_args  # noqa: E402
from ansible_collections.llmops.vllm.plugins.modules.serving_host_info import adapter_dir  # noqa: E402

ADAPTERS = os.path.abspath(os.environ.get("LLMOPS_IT_ADAPTERS", os.path.join(ROOT, ".cache", "lora")))
MODEL = "llmops-test/tiny-chat"
DEFAULTS = {"served_model_name": "", "port": 8000, "bind_address": "127.0.0.1", "gpus": "none", "options": {},
            "env": {}, "image": "unused", "download": False, "lora": {}}
SETTINGS = {"models_dir": MODELS, "logs_dir": "/unused", "configs_dir": "/unused", "timezone": "Etc/UTC",
            "log_to_file": False, "hf_endpoint": "", "compile_cache": False, "ipc_mode": "", "shm_size": "",
            "capabilities": [], "security_opts": [], "restart_policy": "no", "entrypoint": ["vllm", "serve"],
            "verify_timeout": 600, "mode": "container", "shutdown_timeout": 0}
CONFIG_DIR = "/etc/llmops-it"


def lora_instance(**lora):
    block = dict({"adapters": [{"name": "sql", "path": os.path.join(ADAPTERS, "tiny-chat-sql")}], "max_lora_rank": 8,
                  "max_loras": 2, "max_cpu_loras": 4, "runtime": True}, **lora)
    return vllm_resolve_instances([{"name": "lora", "model": MODEL, "served_model_name": "tiny-chat", "lora": block}],
                                  DEFAULTS)[0]


def request(server, method, path, body=None, key=API_KEY):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(server.url + path, data=data, headers=headers, method=method),
                                    timeout=120) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        text, status = error.read().decode(), error.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def chat(server, model):
    return request(server, "POST", "/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0})


def listed(server):
    status, body = request(server, "GET", "/v1/models")
    assert status == 200, body
    return dict((m["id"], m.get("parent")) for m in body["data"])


def copy_adapter(source, target, base=None):
    shutil.copytree(source, target)
    if base is not None:
        path = os.path.join(target, "adapter_config.json")
        with open(path) as f:
            config = json.load(f)
        config["base_model_name_or_path"] = base
        with open(path, "w") as f:
            json.dump(config, f)


@pytest.fixture(scope="module")
def lora_server(request, containers, tmp_path_factory):
    if not os.path.isfile(os.path.join(ADAPTERS, "tiny-chat-sql", "adapter_config.json")):
        pytest.fail("the tiny adapters are missing in %s: run make models" % ADAPTERS)
    directory = tmp_path_factory.mktemp("lora")
    instance = lora_instance()
    args = container_args(instance, dict(SETTINGS, lora_dir=str(directory / "runtime")))
    os.makedirs(str(directory / "runtime" / "lora"))
    with open(str(directory / "lora.yaml"), "w") as f:
        yaml.safe_dump(instance["config"], f)
    docker_args = ["-v", "%s:%s:ro" % (directory, CONFIG_DIR)]
    for mount in args["mounts"]:
        if mount["target"].startswith("/var/lib/llmops-lora"):
            docker_args += ["-v", "%s:%s%s" % (mount["source"], mount["target"], ":ro" if mount.get("read_only") else "")]
    for name, value in args["env"].items():
        if name.startswith("VLLM_"):
            docker_args += ["-e", "%s=%s" % (name, value)]
    server = VllmContainer("lora", MODEL, api_key=API_KEY, args=["--config", CONFIG_DIR + "/lora.yaml"], docker_args=docker_args)
    server.runtime_dir = str(directory / "runtime" / "lora")
    server.instance = instance
    containers.append(server)
    server.start()
    # the shared chat server loads beside it, when the session needs it: two starts side by side end sooner
    if any("chat_server" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("chat_server")
    run = ModuleRun({"url": server.url, "model": "tiny-chat", "api_key": API_KEY, "container": server.name,
                     "timeout": 600, "adapters": ["sql"], "stream": False})
    server.verification = run.result()
    if server.verification.get("failed"):
        pytest.fail("the LoRA server did not pass verify_endpoint: " + server.verification["msg"])
    server.started = docker("inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", server.name)
    return server


def test_the_rendered_options_are_vllm_s(lora_server):
    config = lora_server.instance["config"]
    assert config["enable-lora"] is True and config["max-lora-rank"] == 8
    assert [json.loads(m) for m in config["lora-modules"]] == [
        {"name": "sql", "path": "/var/lib/llmops-lora/static/sql", "base_model_name": "tiny-chat"}]


def test_a_static_adapter_answers_under_its_own_name_listed_under_its_base(lora_server):
    result = lora_server.verification
    assert result["adapters"][0]["name"] == "sql" and result["adapters"][0]["parent"] == "tiny-chat"
    assert listed(lora_server) == {"tiny-chat": None, "sql": "tiny-chat"}
    status, body = chat(lora_server, "sql")
    assert status == 200 and body["model"] == "sql"
    # the adapter's weights are applied: greedy decoding of the same prompt says other words than the base model
    assert body["choices"][0]["message"]["content"] != chat(lora_server, "tiny-chat")[1]["choices"][0]["message"]["content"]


def test_an_adapter_dropped_into_the_resolver_directory_is_served_without_a_restart(lora_server):
    # Offline (HF_HUB_OFFLINE), vLLM 0.32.0 replaces the model id by its snapshot's path (engine/arg_utils.py), and
    # its filesystem resolver serves an adapter whose base_model_name_or_path is that path.
    with open(os.path.join(MODELS, "hub", "models--llmops-test--tiny-chat", "refs", "main")) as f:
        snapshot = "/root/.cache/huggingface/hub/models--llmops-test--tiny-chat/snapshots/" + f.read().strip()
    assert chat(lora_server, "dropped")[0] == 404
    copy_adapter(os.path.join(ADAPTERS, "tiny-chat-runtime"), os.path.join(lora_server.runtime_dir, "dropped"), base=snapshot)
    status, body = chat(lora_server, "dropped")
    assert status == 200 and body["model"] == "dropped", body
    assert listed(lora_server)["dropped"] == "tiny-chat"
    # the same container, never restarted
    assert docker("inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", lora_server.name) == lora_server.started


def test_offline_a_dropped_adapter_naming_the_hub_id_is_not_served(lora_server):
    """The fact docs/lora.md states: an offline server never matches an adapter that names its base by hub id."""
    copy_adapter(os.path.join(ADAPTERS, "tiny-chat-runtime"), os.path.join(lora_server.runtime_dir, "by-id"))
    status, body = chat(lora_server, "by-id")
    assert status == 404 and "does not exist" in body["error"]["message"], body


def test_the_api_key_guards_v1_adapter_loading_but_not_the_adapters_routes(lora_server):
    """The facts the role's runtime_open_port refusal and the gateway's 403 rest on (vLLM 0.32.0)."""
    path = "/var/lib/llmops-lora/static/sql"
    status, dummy = request(lora_server, "POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path}, key=None)
    assert status == 401
    status, dummy = request(lora_server, "POST", "/adapters", {"name": "intruder", "src": path}, key=None)
    assert status == 200 and "intruder" in listed(lora_server)
    status, dummy = request(lora_server, "DELETE", "/adapters/intruder", key=None)
    assert status == 200 and "intruder" not in listed(lora_server)


def test_the_preflight_reads_the_real_adapters_and_refuses_the_wrong_base():
    good = lora_instance(runtime=False)
    wrong = lora_instance(runtime=False, adapters=[{"name": "sql", "path": os.path.join(ADAPTERS, "tiny-nochat-sql")}])
    found = [adapter_dir(p) for p in vllm_lora_paths([good, wrong], MODELS)]
    assert vllm_lora_problems([good], found, "it-host", MODELS) == []
    (problem,) = vllm_lora_problems([wrong], found, "it-host", MODELS)
    assert problem.startswith("Instance lora on it-host: adapter sql (lora.adapters, %s/tiny-nochat-sql) was trained for "
                              "llmops-test/tiny-nochat" % ADAPTERS)
