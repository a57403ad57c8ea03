# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# The vllm_server role's checks of each instance's LoRA adapters (docs/lora.md), before anything on the
# host changes: the lora block itself, and what each adapter's adapter_config.json says against the
# instance (its base model, its rank). Each returns sentences naming the host, the instance and the
# variable to change; empty when all is well.

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.llmops.vllm.plugins.module_utils._hf_config import model_entries
from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import (
    ADAPTER_KEYS, ADAPTER_NAME, COMMIT, DERIVED_OPTIONS, LORA_KEYS, VLLM_DEFAULT_MAX_LORA_RANK, VLLM_DEFAULT_MAX_LORAS,
    VLLM_LORA_RANKS, adapters, lora_block, runtime_host_dir)


def _int(value):
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _served_names(instance):
    served = instance.get("served_model_name") or instance.get("model")
    return [str(s) for s in served] if isinstance(served, (list, tuple)) else [str(served)]


def vllm_lora_names(instance):
    """The names of an instance's static adapters, which clients send as the model (verify_endpoint's adapters)."""
    return [a["name"] for a in adapters(instance)]


def vllm_lora_hub_questions(instances, found, models_dir):
    """{model, revision} of each hub adapter that its host's cache does not hold, to ask the hub about (hf_model_config)."""
    exists = set(f.get("path") for f in found or [] if f.get("exists"))
    questions = []
    for instance in instances or []:
        for adapter in adapters(instance, models_dir):
            question = {"model": adapter["source"], "revision": adapter["revision"]}
            if adapter["kind"] == "hub" and COMMIT.match(adapter["revision"]) and adapter["host_path"] not in exists \
                    and question not in questions:
                questions.append(question)
    return questions


def vllm_lora_paths(instances, models_dir):
    """The host directories of every adapter of the instances, for serving_host_info's adapters."""
    paths = []
    for instance in instances or []:
        for adapter in adapters(instance, models_dir):
            if adapter["host_path"].startswith("/") and adapter["host_path"] not in paths:
                paths.append(adapter["host_path"])
    return paths


def vllm_lora_runtime_dirs(instances, lora_dir):
    """The host directories of runtime adapters to create: lora_dir and lora_dir/<instance> of each instance that takes
    them ([] when none does)."""
    wanted = [runtime_host_dir(i, lora_dir) for i in instances or []
              if boolean(lora_block(i).get("runtime", False), strict=False)]
    return [lora_dir] + wanted if wanted else []


def _block_problems(where, instance, ranks):
    """What is wrong with the lora block itself, before any adapter is read."""
    lora = instance.get("lora")
    if lora in (None, "", {}):
        return []
    if not isinstance(lora, dict):
        return ["%s: lora must be a dictionary (adapters, max_loras, max_lora_rank, max_cpu_loras, runtime), not %r."
                % (where, lora)]
    problems = []
    unknown = sorted(str(k) for k in lora if k not in LORA_KEYS)
    if unknown:
        problems.append("%s: lora has keys the role does not know: %s (it takes %s)." % (where, ", ".join(unknown), ", ".join(LORA_KEYS)))
    entries = lora.get("adapters") or []
    if not isinstance(entries, list):
        problems.append("%s: lora.adapters must be a list of adapters, each a dictionary with a name and a source "
                        "(and revision) or a path." % where)
        entries = []
    for index, entry in enumerate(entries):
        what = "%s: lora.adapters[%d]" % (where, index)
        if not isinstance(entry, dict):
            problems.append("%s must be a dictionary with a name and a source (and revision) or a path, not %r." % (what, entry))
            continue
        unknown = sorted(str(k) for k in entry if k not in ADAPTER_KEYS)
        if unknown:
            problems.append("%s has keys the role does not know: %s (it takes %s)." % (what, ", ".join(unknown), ", ".join(ADAPTER_KEYS)))
        name = str(entry.get("name") or "")
        if not ADAPTER_NAME.match(name):
            problems.append("%s: the name %r must start with a letter or digit and hold only letters, digits and _ . : - "
                            "(clients send it as the request's model)." % (what, name))
        if bool(entry.get("source")) == bool(entry.get("path")):
            problems.append("%s (%s) must have either a source (a Hugging Face repository, with a revision) or a path "
                            "(a directory on the host), not %s." % (what, name, "both" if entry.get("source") else "neither"))
        elif entry.get("source") and not COMMIT.match(str(entry.get("revision") or "")):
            problems.append("%s (%s): revision must be the 40-character commit hash the adapter is pinned to (it is %r), so "
                            "that every host serves the same adapter; the hub shows it on the repository's commit history."
                            % (what, name, entry.get("revision")))
        elif entry.get("path") and not str(entry["path"]).startswith("/"):
            problems.append("%s (%s): path must be an absolute directory on the host, not %r." % (what, name, entry["path"]))
    names = [str(e.get("name")) for e in entries if isinstance(e, dict)]
    twice = sorted(set(n for n in names if names.count(n) > 1))
    if twice:
        problems.append("%s: lora.adapters names %s more than once: each adapter needs its own name." % (where, ", ".join(twice)))
    clash = sorted(set(names) & set(_served_names(instance)))
    if clash:
        problems.append("%s: the adapter name %s is the served model name of the instance, which vLLM refuses (\"conflicts "
                        "with a served base model\"): rename the adapter in lora.adapters." % (where, ", ".join(clash)))
    rank = lora.get("max_lora_rank")
    if rank not in (None, "") and _int(rank) not in ranks:
        problems.append("%s: lora.max_lora_rank %r is not a rank vLLM takes: %s." % (where, rank, ", ".join(str(r) for r in ranks)))
    max_loras, cpu = lora.get("max_loras"), lora.get("max_cpu_loras")
    for key, value in (("max_loras", max_loras), ("max_cpu_loras", cpu)):
        if value not in (None, "") and (_int(value) is None or _int(value) < 1):
            problems.append("%s: lora.%s must be a whole number of at least 1, not %r." % (where, key, value))
    if _int(cpu) is not None and _int(cpu) < (_int(max_loras) or VLLM_DEFAULT_MAX_LORAS):
        problems.append("%s: lora.max_cpu_loras %s is below lora.max_loras %s, which vLLM refuses (the adapters on the GPU "
                        "are a subset of those kept in CPU memory): raise max_cpu_loras or lower max_loras."
                        % (where, cpu, _int(max_loras) or VLLM_DEFAULT_MAX_LORAS))
    try:
        boolean(lora.get("runtime", False), strict=True)
    except TypeError:
        problems.append("%s: lora.runtime must be true or false, not %r." % (where, lora.get("runtime")))
    # vLLM 0.32.0 with runtime LoRA updating serves POST /adapters and DELETE /adapters/{name} (its SageMaker routes)
    # outside the /v1 paths its --api-key guards: anyone who reaches the port could load or unload adapters.
    if boolean(lora.get("runtime", False), strict=False) and not instance.get("loopback_only") \
            and not boolean(lora.get("runtime_open_port", False), strict=False):
        problems.append(
            "%s: lora.runtime opens vLLM's adapter loading, and vLLM 0.32.0 then serves POST /adapters and DELETE "
            "/adapters/<name> without asking for its API key, on the instance's port, published on %s: anyone who reaches "
            "that port could load adapters or unload the served ones. Publish the port on 127.0.0.1 only (bind_address), "
            "or, when only the gateway (which refuses those paths) reaches it, set lora.runtime_open_port: true to "
            "accept this (docs/lora.md)." % (where, instance.get("bind_address")))
    options = dict((str(k).strip().lstrip("-").replace("_", "-"), v) for k, v in (instance.get("options") or {}).items())
    doubled = sorted(k for k in options if k in DERIVED_OPTIONS)
    if doubled:
        problems.append("%s: options %s say what its lora block says: the role derives them from lora, so remove them "
                        "from the options (vllm_server_options or the instance's options)." % (where, ", ".join(doubled)))
    return problems


def _adapter_problems(where, instance, adapter, found, delivered, ranks, hub):
    """What the adapter's own files say against the instance, or that they are missing."""
    lora = lora_block(instance)
    what = "%s: adapter %s (lora.adapters, %s)" % (
        where, adapter["name"], "%s@%s" % (adapter["source"], adapter["revision"]) if adapter["kind"] == "hub" else adapter["path"])
    info = found.get(adapter["host_path"])
    if (info is None or not info.get("exists")) and adapter["kind"] == "hub" and delivered:
        # fetched before the server starts: judged from what the hub says of it (hf_model_config), when it was asked
        answer = (model_entries(hub, adapter["source"], adapter["revision"]) or [None])[0]
        if answer is None or answer.get("problem") in ("unreachable", "unavailable", "other"):
            return []
        if answer.get("problem"):
            return ["%s: %s answered%s: \"%s\" (%s). Check the adapter's source and revision%s. Nothing was changed on "
                    "the host." % (what, answer.get("endpoint") or "the hub", " HTTP %s" % answer["status"] if answer.get("status")
                                   else "", answer.get("error") or "", answer["problem"],
                                   ", and vllm_server_hf_token for a gated or private one" if answer["problem"] in
                                   ("gated", "not_found", "token_rejected") else "")]
        info = {"exists": True, "config": answer.get("adapter_config") or {}, "weights": bool(answer.get("weights_bytes")),
                "error": ""}
    if info is None or not info.get("exists"):
        if adapter["kind"] == "hub":
            return ["%s is not in the host's model cache (%s) and the instance does not download (download, or "
                    "vllm_server_download_models: true fetches it at its pinned revision before the server starts)."
                    % (what, adapter["host_path"])]
        return ["%s: the directory does not exist on the host. Put the adapter (adapter_config.json and "
                "adapter_model.safetensors) there, or fix the path." % what]
    if info.get("error"):
        return ["%s: its adapter_config.json cannot be read: %s." % (what, info["error"])]
    config = info.get("config")
    if not config:
        return ["%s has no adapter_config.json, so vLLM cannot load it as a PEFT LoRA adapter: give the directory of a "
                "LoRA adapter (adapter_config.json and adapter_model.safetensors)." % what]
    problems = []
    if str(config.get("peft_type") or "").upper() != "LORA":
        problems.append("%s is a %s adapter (peft_type in its adapter_config.json), not LORA, which is all vLLM serves."
                        % (what, config.get("peft_type") or "untyped"))
    base = str(config.get("base_model_name_or_path") or "")
    model = str(instance.get("model"))
    if base != model:
        problems.append("%s was trained for %s (base_model_name_or_path in its adapter_config.json), but the instance serves "
                        "%s: an adapter only works on the base model it was trained on. Serve it on an instance of %s, or "
                        "remove it from lora.adapters." % (what, base or "no named base model", model, base or "its base model"))
    rank = _int(config.get("r"))
    limit = _int(lora.get("max_lora_rank")) or VLLM_DEFAULT_MAX_LORA_RANK
    if rank is not None and rank > limit:
        higher = [r for r in ranks if r >= rank]
        problems.append("%s has rank %d (r in its adapter_config.json), above lora.max_lora_rank %d%s, which vLLM refuses. %s"
                        % (what, rank, limit, "" if lora.get("max_lora_rank") not in (None, "") else " (vLLM's default)",
                           ("Set lora.max_lora_rank to %d or more." % higher[0]) if higher else
                           "vLLM takes ranks up to %d only." % ranks[-1]))
    if not info.get("weights"):
        problems.append("%s has no adapter_model.safetensors (or adapter_model.bin), so vLLM has no weights to load." % what)
    return problems


def vllm_lora_problems(instances, found, host, models_dir, delivered=None, ranks=None, hub=None):
    """Sentences for each instance whose LoRA adapters vLLM would refuse, or that the role cannot serve as given.

    instances: the role's resolved instances; found: serving_host_info's adapters ({path, exists, config, weights,
    error}) for vllm_lora_paths(instances, models_dir); host: inventory_hostname; delivered: names of the instances
    whose hub adapters the role downloads before they start; ranks: the ranks vLLM takes (max_lora_rank's choices
    in the option data); hub: hf_model_config's answers, for the hub adapters no cache holds yet.
    """
    ranks = sorted(_int(r) for r in (ranks or VLLM_LORA_RANKS) if _int(r) is not None)
    by_path = dict((f.get("path"), f) for f in found or [])
    delivered = set(delivered or [])
    problems = []
    for instance in instances or []:
        where = "Instance %s on %s" % (instance.get("name"), host)
        block = _block_problems(where, instance, ranks)
        problems.extend(block)
        if block or not isinstance(instance.get("lora"), dict):
            continue
        for adapter in adapters(instance, models_dir):
            problems.extend(_adapter_problems(where, instance, adapter, by_path, instance.get("name") in delivered, ranks, hub))
    return problems


class FilterModule(object):
    def filters(self):
        return {
            "vllm_lora_names": vllm_lora_names,
            "vllm_lora_paths": vllm_lora_paths,
            "vllm_lora_hub_questions": vllm_lora_hub_questions,
            "vllm_lora_problems": vllm_lora_problems,
            "vllm_lora_runtime_dirs": vllm_lora_runtime_dirs,
        }
