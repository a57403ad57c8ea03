# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

# PRIVATE to the collection: not a public API, may change without notice.
#
# The LoRA adapters of one vLLM instance (its `lora` block, docs/lora.md), specified once: the vLLM
# options they become, where each adapter is found on the host and inside the container, the mounts
# and the environment of vLLM's filesystem resolver. The instance resolver
# (plugins/plugin_utils/_vllm_instances.py) resolves the block, container_args()
# (plugins/plugin_utils/_vllm_container.py) mounts and exports what it says, and the preflight
# (plugins/filter/vllm_lora.py) judges it against each adapter's adapter_config.json.
# Standard library only.

from __future__ import annotations

import json
import re

# Inside the container: a host directory adapter is mounted read-only under STATIC_DIR/<name>; the
# instance's resolver directory (runtime adapters) at RUNTIME_DIR.
CONTAINER_LORA_DIR = "/var/lib/llmops-lora"
CONTAINER_STATIC_DIR = CONTAINER_LORA_DIR + "/static"
CONTAINER_RUNTIME_DIR = CONTAINER_LORA_DIR + "/runtime"
# The Hugging Face home inside the container (CONTAINER_HF_HOME of plugin_utils/_vllm_container.py):
# a hub adapter fetched like a model lands in its hub/ cache.
CONTAINER_HF_HOME = "/root/.cache/huggingface"

# vLLM 0.32.0's vllm/config/lora.py: MaxLoRARanks, and max_lora_rank's default.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_DEFAULT_MAX_LORAS = 1

# The keys of an instance's lora block, and the vLLM options the role derives from them (an instance
# with a lora block must not also set these in its options: one place says what the server loads).
LORA_KEYS = ("adapters", "max_loras", "max_lora_rank", "max_cpu_loras", "runtime", "runtime_open_port")
ADAPTER_KEYS = ("name", "source", "revision", "path")
DERIVED_OPTIONS = ("enable-lora", "lora-modules", "max-loras", "max-lora-rank", "max-cpu-loras")

# The environment of vLLM's runtime loading through its filesystem resolver (vllm/envs.py; the plugin
# is the entry point lora_filesystem_resolver of vLLM's vllm.general_plugins).
RUNTIME_ENV = {
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
    "VLLM_PLUGINS": "lora_filesystem_resolver",
    "VLLM_LORA_RESOLVER_CACHE_DIR": CONTAINER_RUNTIME_DIR,
}

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# vLLM takes any name; the gateway's model map and the mount path take these characters only.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def _bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def hf_cache_folder(repo_id):
    """huggingface_hub's folder of a model repository in its cache: models--org--name."""
    return "models--" + str(repo_id).replace("/", "--")


def lora_block(instance):
    """The instance's lora block as given ({} when it has none or an empty one)."""
    lora = instance.get("lora")
    return lora if isinstance(lora, dict) else {}


def lora_enabled(instance):
    """Whether the instance serves LoRA adapters: static ones, or runtime ones through the resolver."""
    lora = lora_block(instance)
    return bool(lora.get("adapters")) or _bool(lora.get("runtime", False))


def adapters(instance, models_dir=""):
    """The instance's adapters, each {name, kind (path or hub), source, revision, path, host_path, container_path}.

    host_path is where the adapter's files are on the host (its directory, or its snapshot in the models
    directory's hub cache, models_dir/hub/models--org--name/snapshots/<revision>); container_path where
    vLLM reads them. Entries that are not dictionaries are left out (the preflight names them).
    """
    result = []
    for entry in lora_block(instance).get("adapters") or []:
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("name") or "")
        if entry.get("source"):
            source, revision = str(entry["source"]), str(entry.get("revision") or "")
            snapshot = "hub/%s/snapshots/%s" % (hf_cache_folder(source), revision)
            result.append({"name": name, "kind": "hub", "source": source, "revision": revision, "path": "",
                           "host_path": "%s/%s" % (models_dir, snapshot) if models_dir else "",
                           "container_path": "%s/%s" % (CONTAINER_HF_HOME, snapshot)})
        else:
            path = str(entry.get("path") or "")
            result.append({"name": name, "kind": "path", "source": "", "revision": "", "path": path,
                           "host_path": path, "container_path": "%s/%s" % (CONTAINER_STATIC_DIR, name)})
    return result


def base_model_name(instance):
    """The name vLLM reports as an adapter's parent in /v1/models: the instance's first served name."""
    served = instance.get("served_model_name") or instance.get("model")
    if isinstance(served, (list, tuple)):
        return str(served[0]) if served else str(instance.get("model"))
    return str(served)


def lora_options(instance):
    """The vLLM options the instance's lora block becomes ({} without one).

    --lora-modules takes each static adapter in vLLM's JSON form (vllm/entrypoints/launchers/cli_args.py,
    LoRAParserAction), with base_model_name so that /v1/models names the instance's served model as its parent.
    """
    if not lora_enabled(instance):
        return {}
    lora = lora_block(instance)
    options = {"enable_lora": True}
    for key in ("max_loras", "max_lora_rank", "max_cpu_loras"):
        if lora.get(key) not in (None, ""):
            options[key] = lora[key]
    static = adapters(instance)
    if static:
        base = base_model_name(instance)
        options["lora_modules"] = [
            json.dumps({"name": a["name"], "path": a["container_path"], "base_model_name": base}, sort_keys=True)
            for a in static]
    return options


def runtime_host_dir(instance, lora_dir):
    """The host directory of the instance's runtime adapters: lora_dir/<instance name>."""
    return "%s/%s" % (lora_dir, instance["name"])


def lora_mounts(instance, lora_dir):
    """Bind mounts of the instance's adapters: each host directory adapter, and the resolver's directory, read-only."""
    if not lora_enabled(instance):
        return []
    mounts = [{"type": "bind", "source": a["host_path"], "target": a["container_path"], "read_only": True}
              for a in adapters(instance) if a["kind"] == "path"]
    if _bool(lora_block(instance).get("runtime", False)):
        if not lora_dir:
            raise ValueError("the container settings lack lora_dir, which runtime adapters need")
        mounts.append({"type": "bind", "source": runtime_host_dir(instance, lora_dir), "target": CONTAINER_RUNTIME_DIR,
                       "read_only": True})
    return mounts


def lora_env(instance):
    """The environment of the filesystem resolver when the instance takes runtime adapters ({} otherwise)."""
    if not _bool(lora_block(instance).get("runtime", False)):
        return {}
    return dict(RUNTIME_ENV)


def adapter_config_summary(config):
    """The fields of an adapter_config.json that the preflight reads."""
    if not isinstance(config, dict):
        raise ValueError("not a JSON object")
    modules = config.get("target_modules")
    return {
        "peft_type": str(config.get("peft_type") or ""),
        "base_model_name_or_path": str(config.get("base_model_name_or_path") or ""),
        "r": config.get("r"),
        "target_modules": modules if isinstance(modules, (list, str)) else None,
    }
