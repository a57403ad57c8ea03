"""LoRA adapters of an instance (docs/lora.md): the vLLM options and the container they become, the
downloads of hub adapters, and the preflight's refusals from the lora block and each adapter's
adapter_config.json, each naming the host, the instance and the variable."""

import json

import pytest

from ansible_collections.llmops.vllm.plugins.filter.vllm_downloads import vllm_downloads
from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances
from ansible_collections.llmops.vllm.plugins.filter.vllm_state import vllm_instance_state
from ansible_collections.llmops.vllm.plugins.filter.vllm_container import FilterModule as ContainerFilters
from ansible_collections.llmops.vllm.plugins.filter.vllm_lora import (
    vllm_lora_paths, vllm_lora_problems, vllm_lora_runtime_dirs)
from ansible_collections.llmops.vllm.plugins.modules import serving_host_info

DEFAULTS = {"served_model_name": "", "port": 8000, "bind_address": "0.0.0.0", "gpus": "none", "options": {},
            "env": {}, "image": "vllm/vllm-openai:v0.32.0", "download": False, "lora": {}}
SETTINGS = {"models_dir": "/data/vllm/models", "logs_dir": "/data/vllm/logs", "configs_dir": "/data/vllm/configs",
            "timezone": "Etc/UTC", "log_to_file": False, "hf_endpoint": "", "compile_cache": False, "ipc_mode": "host",
            "shm_size": "", "capabilities": [], "security_opts": [], "restart_policy": "unless-stopped",
            "entrypoint": ["vllm", "serve"], "verify_timeout": 1800, "mode": "container", "shutdown_timeout": 0,
            "lora_dir": "/data/vllm/lora"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODELS = "/data/vllm/models"
SQL = {"name": "sql", "path": "/srv/adapters/sql"}
HUB = {"name": "chat", "source": "org/chat-lora", "revision": COMMIT}
HUB_DIR = MODELS + "/hub/models--org--chat-lora/snapshots/" + COMMIT
CONTAINERS = ContainerFilters().filters()


def instance(lora, **fields):
    fields.setdefault("name", "vllm")
    fields.setdefault("model", "org/base")
    fields.setdefault("served_model_name", "base")
    return vllm_resolve_instances([dict(fields, lora=lora)], DEFAULTS)[0]


def found(path, base="org/base", r=8, peft_type="LORA", weights=True, exists=True, error=""):
    config = {"peft_type": peft_type, "base_model_name_or_path": base, "r": r, "target_modules": ["q_proj"]}
    return {"path": path, "exists": exists, "config": config if exists else {}, "weights": weights and exists, "error": error}


def problems(i, adapters=(), delivered=(), ranks=None):
    return " ".join(vllm_lora_problems([i], list(adapters), "gpu-1", MODELS, list(delivered), ranks))


# ---- what the lora block becomes ----------------------------------------------------------------

def test_static_adapters_become_vllm_options_in_its_json_form_with_the_served_name_as_base():
    i = instance({"adapters": [SQL, HUB], "max_loras": 2, "max_lora_rank": 16, "max_cpu_loras": 4})
    assert i["config"]["enable-lora"] is True
    assert (i["config"]["max-loras"], i["config"]["max-lora-rank"], i["config"]["max-cpu-loras"]) == (2, 16, 4)
    modules = [json.loads(m) for m in i["config"]["lora-modules"]]
    assert modules == [
        {"name": "sql", "path": "/var/lib/llmops-lora/static/sql", "base_model_name": "base"},
        # a hub adapter is read from its pinned snapshot in the models directory (the container's HF home)
        {"name": "chat", "path": "/root/.cache/huggingface/hub/models--org--chat-lora/snapshots/" + COMMIT,
         "base_model_name": "base"}]
    # the lora options stay out of the instance's own options: the preflight tells the two apart
    assert "enable_lora" not in i["options"] and i["lora_options"]["enable_lora"] is True


def test_no_lora_block_changes_nothing():
    i = instance({})
    assert i["lora_options"] == {} and list(i["config"]) == ["served-model-name"]
    args = CONTAINERS["vllm_container"](i, SETTINGS)
    assert [m["target"] for m in args["mounts"]] == ["/root/.cache/huggingface", "/var/log/vllm", "/etc/vllm"]
    assert not [k for k in args["env"] if k.startswith("VLLM_")]
    # the state file of an instance without adapters is the one it had before lora existed
    assert "lora" not in vllm_instance_state([i])[0]


def test_runtime_adapters_enable_lora_without_static_ones():
    i = instance({"runtime": True})
    assert i["lora_options"] == {"enable_lora": True}
    assert "lora-modules" not in i["config"]


def test_the_container_mounts_host_adapters_and_the_resolver_directory_read_only():
    i = instance({"adapters": [SQL, HUB], "runtime": True})
    args = CONTAINERS["vllm_container"](i, SETTINGS)
    lora_mounts = [m for m in args["mounts"] if m["target"].startswith("/var/lib/llmops-lora")]
    assert lora_mounts == [
        {"type": "bind", "source": "/srv/adapters/sql", "target": "/var/lib/llmops-lora/static/sql", "read_only": True},
        {"type": "bind", "source": "/data/vllm/lora/vllm", "target": "/var/lib/llmops-lora/runtime", "read_only": True}]
    # vLLM's filesystem resolver (vllm/envs.py, the lora_filesystem_resolver plugin)
    assert args["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert args["env"]["VLLM_PLUGINS"] == "lora_filesystem_resolver"
    assert args["env"]["VLLM_LORA_RESOLVER_CACHE_DIR"] == "/var/lib/llmops-lora/runtime"
    # compose mode gets the same
    service = CONTAINERS["vllm_compose_service"](i, SETTINGS)
    assert service["volumes"] == args["mounts"] and service["environment"]["VLLM_PLUGINS"] == "lora_filesystem_resolver"


def test_static_adapters_alone_open_no_runtime_loading():
    args = CONTAINERS["vllm_container"](instance({"adapters": [SQL]}), SETTINGS)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in args["env"]


def test_the_instance_env_still_wins_over_the_resolver_env():
    args = CONTAINERS["vllm_container"](instance({"runtime": True}, env={"VLLM_PLUGINS": "lora_filesystem_resolver,mine"}),
                                        SETTINGS)
    assert args["env"]["VLLM_PLUGINS"] == "lora_filesystem_resolver,mine"


def test_hub_adapters_download_like_models_at_their_pinned_revision():
    i = instance({"adapters": [SQL, HUB]}, download=True)
    downloads = vllm_downloads([i], MODELS)
    assert [(d["model"], d.get("revision", "main")) for d in downloads] == [("org/base", "main"), ("org/chat-lora", COMMIT)]
    assert downloads[1]["download_stamp"] == "%s/.downloaded/org--chat-lora@%s" % (MODELS, COMMIT)
    assert downloads[1]["name"] == "vllm" and downloads[1]["adapter"] == "chat"
    # an instance that does not download fetches no adapter either
    assert vllm_downloads([instance({"adapters": [HUB]})], MODELS) == []


def test_the_paths_to_read_and_the_directories_to_make():
    i = instance({"adapters": [SQL, HUB], "runtime": True})
    assert vllm_lora_paths([i], MODELS) == ["/srv/adapters/sql", HUB_DIR]
    assert vllm_lora_runtime_dirs([i, instance({}, name="other")], "/data/vllm/lora") == ["/data/vllm/lora", "/data/vllm/lora/vllm"]
    assert vllm_lora_runtime_dirs([instance({"adapters": [SQL]})], "/data/vllm/lora") == []


# ---- the preflight --------------------------------------------------------------------------------

def test_adapters_that_fit_pass():
    i = instance({"adapters": [SQL, HUB], "max_lora_rank": 16})
    assert problems(i, [found("/srv/adapters/sql"), found(HUB_DIR, r=16)]) == ""


def test_an_adapter_of_another_base_model_is_refused_naming_both():
    text = problems(instance({"adapters": [SQL]}), [found("/srv/adapters/sql", base="org/other")])
    assert text.startswith("Instance vllm on gpu-1: adapter sql (lora.adapters, /srv/adapters/sql) was trained for org/other "
                           "(base_model_name_or_path in its adapter_config.json), but the instance serves org/base")


def test_a_rank_above_max_lora_rank_is_refused_with_the_rank_to_set():
    text = problems(instance({"adapters": [SQL], "max_lora_rank": 8}), [found("/srv/adapters/sql", r=32)])
    assert "has rank 32 (r in its adapter_config.json), above lora.max_lora_rank 8, which vLLM refuses. Set " \
           "lora.max_lora_rank to 32 or more." in text
    # without max_lora_rank, vLLM's default 16 counts
    text = problems(instance({"adapters": [SQL]}), [found("/srv/adapters/sql", r=64)])
    assert "above lora.max_lora_rank 16 (vLLM's default)" in text and "Set lora.max_lora_rank to 64 or more." in text
    text = problems(instance({"adapters": [SQL], "max_lora_rank": 512}), [found("/srv/adapters/sql", r=1024)])
    assert "vLLM takes ranks up to 512 only." in text


def test_a_rank_vllm_does_not_take_is_refused():
    text = problems(instance({"adapters": [SQL], "max_lora_rank": 12}), [found("/srv/adapters/sql")],
                    ranks=["1", "8", "16", "32", "64", "128", "256", "320", "512"])
    assert "Instance vllm on gpu-1: lora.max_lora_rank 12 is not a rank vLLM takes: 1, 8, 16, 32, 64, 128, 256, 320, 512." in text


def test_duplicate_names_and_the_base_models_name_are_refused():
    text = problems(instance({"adapters": [SQL, dict(SQL, path="/srv/b")]}))
    assert "Instance vllm on gpu-1: lora.adapters names sql more than once" in text
    text = problems(instance({"adapters": [dict(SQL, name="base")]}))
    assert "the adapter name base is the served model name of the instance, which vLLM refuses" in text


@pytest.mark.parametrize("entry, expected", [
    ({"name": "x", "source": "org/x", "revision": "main"},
     "lora.adapters[0] (x): revision must be the 40-character commit hash the adapter is pinned to (it is 'main')"),
    ({"name": "x", "source": "org/x"}, "revision must be the 40-character commit hash"),
    ({"name": "x"}, "lora.adapters[0] (x) must have either a source (a Hugging Face repository, with a revision) or a path"),
    ({"name": "x", "path": "/a", "source": "org/x", "revision": COMMIT}, "not both"),
    ({"name": "x", "path": "relative"}, "path must be an absolute directory on the host, not 'relative'"),
    ({"name": "has space", "path": "/a"}, "the name 'has space' must start with a letter or digit"),
    ({"name": "x", "path": "/a", "rank": 8}, "lora.adapters[0] has keys the role does not know: rank"),
    ("x", "lora.adapters[0] must be a dictionary"),
])
def test_malformed_adapters_are_named(entry, expected):
    text = problems(instance({"adapters": [entry]}))
    assert text.startswith("Instance vllm on gpu-1: ") and expected in text


def test_limits_vllm_refuses_are_named():
    assert "lora.max_cpu_loras 1 is below lora.max_loras 2, which vLLM refuses" in problems(
        instance({"adapters": [SQL], "max_loras": 2, "max_cpu_loras": 1}))
    assert "lora.max_loras must be a whole number of at least 1, not 0." in problems(instance({"adapters": [SQL], "max_loras": 0}))
    assert "lora.runtime must be true or false, not 'sometimes'." in problems(instance({"runtime": "sometimes"}))
    assert "lora has keys the role does not know: adapter" in problems(instance({"adapter": [SQL]}))
    assert "lora must be a dictionary" in problems(instance(["sql"]))


def test_runtime_adapters_on_a_port_beyond_loopback_need_the_operators_word():
    text = problems(instance({"runtime": True}))
    assert ("Instance vllm on gpu-1: lora.runtime opens vLLM's adapter loading, and vLLM 0.32.0 then serves POST /adapters "
            "and DELETE /adapters/<name> without asking for its API key, on the instance's port, published on 0.0.0.0") in text
    assert problems(instance({"runtime": True}, bind_address="127.0.0.1")) == ""
    assert problems(instance({"runtime": True, "runtime_open_port": True})) == ""


def test_options_that_say_what_the_lora_block_says_are_refused():
    text = problems(instance({"adapters": [SQL]}, options={"max_loras": 4, "enable_lora": True}), [found("/srv/adapters/sql")])
    assert "options enable-lora, max-loras say what its lora block says" in text


def test_missing_adapters_and_files_are_named():
    assert "adapter sql (lora.adapters, /srv/adapters/sql): the directory does not exist on the host" in problems(
        instance({"adapters": [SQL]}), [found("/srv/adapters/sql", exists=False)])
    assert "has no adapter_config.json" in problems(
        instance({"adapters": [SQL]}), [dict(found("/srv/adapters/sql"), config={})])
    assert "has no adapter_model.safetensors" in problems(instance({"adapters": [SQL]}), [found("/srv/adapters/sql", weights=False)])
    assert "is a PREFIX_TUNING adapter (peft_type in its adapter_config.json), not LORA" in problems(
        instance({"adapters": [SQL]}), [found("/srv/adapters/sql", peft_type="PREFIX_TUNING")])
    # a hub adapter not cached yet: fine when the instance downloads it, named when it does not
    assert problems(instance({"adapters": [HUB]}), [found(HUB_DIR, exists=False)], delivered=["vllm"]) == ""
    assert "adapter chat (lora.adapters, org/chat-lora@%s) is not in the host's model cache" % COMMIT in problems(
        instance({"adapters": [HUB]}), [found(HUB_DIR, exists=False)])


def test_serving_host_info_reads_an_adapter_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "org/base", "r": 8, "target_modules": ["q_proj", "v_proj"],
         "lora_alpha": 16}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    entry = serving_host_info.adapter_dir(str(tmp_path))
    assert entry == {"path": str(tmp_path), "exists": True, "weights": True, "error": "",
                     "config": {"peft_type": "LORA", "base_model_name_or_path": "org/base", "r": 8,
                                "target_modules": ["q_proj", "v_proj"]}}
    assert serving_host_info.adapter_dir(str(tmp_path / "missing"))["exists"] is False
    (tmp_path / "adapter_config.json").write_text("[1]")
    assert "is not a JSON object" in serving_host_info.adapter_dir(str(tmp_path))["error"]


def test_the_verify_playbook_checks_each_static_adapter():
    from ansible_collections.llmops.vllm.plugins.filter.vllm_verify import vllm_endpoints

    with_adapters, without = vllm_endpoints([instance({"adapters": [SQL, HUB], "runtime": True}), instance({}, name="b", port=8001)])
    assert with_adapters["adapters"] == ["sql", "chat"] and with_adapters["model"] == "base"
    assert "adapters" not in without


def answer(problem="", config=None, status=0, error=""):
    return {"model": "org/chat-lora", "revision": COMMIT, "problem": problem, "status": status, "error": error,
            "endpoint": "http://hub.test", "adapter_config": config if config is not None else {
                "peft_type": "LORA", "base_model_name_or_path": "org/base", "r": 8, "target_modules": ["q_proj"]},
            "weights_bytes": 1024}


def test_a_hub_adapter_no_cache_holds_is_asked_about_and_judged_from_the_hubs_answer():
    from ansible_collections.llmops.vllm.plugins.filter.vllm_lora import vllm_lora_hub_questions

    i = instance({"adapters": [SQL, HUB]}, download=True)
    missing = [found("/srv/adapters/sql"), found(HUB_DIR, exists=False)]
    assert vllm_lora_hub_questions([i], missing, MODELS) == [{"model": "org/chat-lora", "revision": COMMIT}]
    assert vllm_lora_hub_questions([i], [found("/srv/adapters/sql"), found(HUB_DIR)], MODELS) == []

    def judged(hub_answer):
        return " ".join(vllm_lora_problems([i], missing, "gpu-1", MODELS, ["vllm"], None, [hub_answer]))

    assert judged(answer()) == ""
    assert "adapter chat (lora.adapters, org/chat-lora@%s) was trained for org/other" % COMMIT in judged(
        answer(config={"peft_type": "LORA", "base_model_name_or_path": "org/other", "r": 8}))
    assert "has rank 64" in judged(answer(config={"peft_type": "LORA", "base_model_name_or_path": "org/base", "r": 64}))
    text = judged(answer(problem="revision", status=404, error="Invalid rev id"))
    assert text.startswith("Instance vllm on gpu-1: adapter chat (lora.adapters, org/chat-lora@%s): http://hub.test answered "
                           "HTTP 404: \"Invalid rev id\" (revision). Check the adapter's source and revision." % COMMIT)
    assert "vllm_server_hf_token for a gated or private one" in judged(answer(problem="gated", status=403, error="no"))
    # a hub that could not be asked leaves the check to the download
    assert judged(answer(problem="unreachable")) == ""
