# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Checks of the vllm_server role's preflight that need more than one line of Jinja: secrets that
# no client could send, and what the model's own config.json says about the instance that serves it.
# Each returns sentences a person can act on (empty when all is well); none ever quotes a secret.

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.llmops.vllm.plugins.module_utils._hf_config import model_entries
from ansible_collections.llmops.vllm.plugins.module_utils._openai_endpoint import header_safe

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# huggingface_hub's constants._is_true
TRUE_VALUES = ("1", "ON", "YES", "TRUE")


def vllm_secret_problems(secrets):
    """Sentences naming each secret (variable name -> value) that cannot be used as given; never the value.

    A key or token is sent in an HTTP header: whitespace around it (the newline of a file read with slurp
    or lookup('file'), of `echo ... | ansible-vault encrypt_string`, or of a `|` block scalar) would be
    part of the server's key but of no client's, and a line break, a control character or a non-ASCII
    character inside it cannot be sent at all.
    """
    problems = []
    for name in sorted(secrets):
        value = secrets[name]
        if value is None or value == "":
            continue
        text = str(value)
        if text != text.strip():
            problems.append(
                "%s has whitespace at its start or end (a trailing newline from a file read with slurp or "
                "lookup('file'), from echo, or from a | block scalar?): no client sends it, so the server would "
                "refuse every request. Remove it where the value is read (| trim, echo -n, or a |- block scalar). "
                "The value is not shown." % name)
        elif not header_safe(text):
            problems.append(
                "%s holds a line break, another control character or a non-ASCII character, which cannot be sent "
                "in an HTTP header: use printable ASCII only. The value is not shown." % name)
    return problems


def registry_password_problems(logins):
    """Sentences naming each docker_registry_logins entry whose password has whitespace around it; never the password.

    A password may hold spaces, so it is not stripped; but one that starts or ends with whitespace is
    almost always a file's trailing newline, which `docker login` would store and the registry refuse.
    """
    problems = []
    for index, login in enumerate(logins or []):
        if not isinstance(login, dict):
            continue
        password = str(login.get("password") or "")
        if password and password != password.strip():
            problems.append(
                "docker_registry_logins[%d] (%s@%s): the password has whitespace at its start or end (a trailing "
                "newline from a file or a | block scalar?), which docker login would send as part of it. Remove it "
                "(| trim, or a |- block scalar). The password is not shown."
                % (index, login.get("username", "?"), login.get("registry", "?")))
    return problems


def vllm_model_ref(instance):
    """{model, revision} of an instance, for serving_host_info's models."""
    return {"model": str(instance.get("model")), "revision": str(instance.get("revision") or "main")}


def _options(instance):
    return dict((str(k).strip().lstrip("-").replace("_", "-"), v) for k, v in (instance.get("options") or {}).items())


def _offline(instance):
    env = instance.get("env") or {}
    return any(str(env.get(name, "")).strip().upper() in TRUE_VALUES for name in OFFLINE_VARIABLES)


def _cc(value):
    try:
        major, minor = str(value).split(".", 1)
        return int(major), int(minor)
    except (TypeError, ValueError):
        return None


def instance_gpus(instance, host_gpus):
    """The host GPUs (entries of llmops.vllm.nvidia_gpu_info's gpus) that an instance gets."""
    gpus = instance.get("gpus")
    if gpus in (None, "none", [], 0, "0"):
        return []
    if gpus in ("all", -1):
        return list(host_gpus)
    if isinstance(gpus, (list, tuple)) or (isinstance(gpus, str) and not gpus.isdigit()):
        ids = [str(g).strip() for g in (gpus if isinstance(gpus, (list, tuple)) else gpus.split(","))]
        return [g for g in host_gpus if str(g.get("index")) in ids or g.get("uuid") in ids]
    # a count: the NVIDIA runtime hands out the first ones
    return list(host_gpus)[:int(gpus)]


def vllm_hub_questions(instances, models):
    """{model, revision} of each instance whose model the host's cache does not hold, to ask the hub about.

    instances: the role's resolved instances; models: serving_host_info's models. Offline instances
    whose model the role does not download are left out (nothing of theirs asks the hub: the offline
    check speaks for them); an offline server whose model the role fetches (download) is asked about,
    as the download will ask anyway. Local paths are left out too (serving_host_info leaves them out
    of its models).
    """
    by_model = dict((m.get("model"), m) for m in models or [])
    questions = []
    for instance in instances:
        cached = by_model.get(str(instance.get("model")))
        if cached is None or cached.get("cached") or (_offline(instance) and not boolean(instance.get("download"), strict=False)):
            continue
        question = vllm_model_ref(instance)
        if question not in questions:
            questions.append(question)
    return questions


def _hub_refusal(where, instance, answer):
    """The sentence for a model the hub refused to describe, naming what to change; None to go on without a config."""
    model, revision = str(instance.get("model")), str(instance.get("revision") or "main")
    hub, said, status, problem = answer.get("endpoint") or "the hub", answer.get("error") or "", answer.get("status"), answer.get("problem")
    quoted = "%s answered%s: \"%s\"" % (hub, " HTTP %s" % status if status else "", said)
    if problem == "gated":
        if answer.get("token"):
            return ("%s: %s is gated on Hugging Face and vllm_server_hf_token has no access to it (%s). Accept the model's "
                    "license on its Hugging Face page with the account of that token, or set vllm_server_hf_token (from "
                    "Ansible Vault) to a token of an account that has access. Nothing was changed on the host."
                    % (where, model, quoted))
        return ("%s: %s is gated on Hugging Face and no token was given (%s). Accept the model's license on its Hugging "
                "Face page, then set vllm_server_hf_token (from Ansible Vault) to a token of that account. Nothing was "
                "changed on the host." % (where, model, quoted))
    if problem == "not_found":
        return ("%s: model %s was not found on %s (%s). Check the instance's model (vllm_server_instances[%s].model, or "
                "vllm_server_model); a private model also needs vllm_server_hf_token. Nothing was changed on the host."
                % (where, model, hub, quoted, instance.get("name")))
    if problem == "revision":
        return ("%s: %s has no revision %s on %s (%s). Set the instance's revision to a branch, tag or commit of the model "
                "(vllm_server_instances[%s].revision). Nothing was changed on the host."
                % (where, model, revision, hub, quoted, instance.get("name")))
    if problem == "token_rejected":
        return ("%s: %s rejected vllm_server_hf_token (%s): set it to a valid token (from Ansible Vault). Nothing was changed "
                "on the host." % (where, hub, quoted))
    if problem == "no_config":
        return ("%s: %s at revision %s has no config.json on %s, so vLLM cannot load it as a Hugging Face model. Check the "
                "instance's model (vllm_server_instances[%s].model) and revision. Nothing was changed on the host."
                % (where, model, revision, hub, instance.get("name")))
    return None


def vllm_model_problems(instances, models, host, host_gpus=None, running=None, cache_dir="", delivered=None, hub=None):
    """Sentences for each instance that vLLM would refuse to start, judged from its model's config.json.

    instances: the role's resolved instances; models: serving_host_info's models (the cached copies);
    host: inventory_hostname; host_gpus: nvidia_gpu_info's gpus ([] on CPU hosts); running: names of
    the instances whose container runs now (their memory is part of what a GPU uses, so the free
    memory check would count them twice); cache_dir: the models' cache, for messages; delivered: names
    of the instances whose model the role itself puts into the cache before they start (fetched on the
    control node and copied), which need not be there yet; hub: hf_model_config's models, the hub's
    answers for the models the cache does not hold (their config.json is judged as a cached one is,
    and a model the hub refuses to describe, gated, missing or at a revision it does not have, is
    refused here, before anything is downloaded or changed).
    """
    by_model = dict((m.get("model"), m) for m in models or [])
    host_gpus = host_gpus or []
    running = set(running or [])
    delivered = set(delivered or [])
    problems = []
    for instance in instances:
        name = instance.get("name")
        model = str(instance.get("model"))
        options = _options(instance)
        where = "Instance %s on %s" % (name, host)
        cached = by_model.get(model)
        if cached is None:
            continue
        if _offline(instance) and not cached.get("cached") and name not in delivered:
            problems.append(
                "%s runs offline (HF_HUB_OFFLINE in its env), but its model %s is not in the host's model cache "
                "(%s/models--%s%s), so vLLM cannot load it. Copy the model there, or remove HF_HUB_OFFLINE from the "
                "instance's env (vllm_server_env or its env) so that it is downloaded (vllm_server_download_models: "
                "true fetches it before the server starts)."
                % (where, model, cache_dir or "the hub cache", model.replace("/", "--"),
                   "" if not cached.get("snapshot") else ", which has no weights or config.json for revision %s"
                   % cached.get("revision")))
        config = cached.get("config") or {}
        answer = None if cached.get("cached") else (model_entries(hub, model, str(instance.get("revision") or "main")) or [None])[0]
        if answer is not None:
            refusal = _hub_refusal(where, instance, answer)
            if refusal:
                problems.append(refusal)
                continue
            config = config or answer.get("config") or {}
        if cached.get("error"):
            problems.append("%s: the cached config.json of %s cannot be read: %s." % (where, model, cached["error"]))
        heads = config.get("num_attention_heads")
        tp = options.get("tensor-parallel-size", 1)
        try:
            tp = int(tp)
        except (TypeError, ValueError):
            tp = 1
        if isinstance(heads, int) and tp > 1 and heads % tp:
            problems.append(
                "%s: %s has %d attention heads, which do not divide evenly by tensor_parallel_size %d, so vLLM "
                "refuses to start. Give the instance a number of GPUs that divides %d (gpus; tensor_parallel_size "
                "follows from them), or set tensor_parallel_size (or pipeline_parallel_size) in its options."
                % (where, model, heads, tp, heads))
        if config.get("auto_map") and "trust-remote-code" not in options:
            problems.append(
                "%s: %s ships its own code (auto_map in its config.json), which vLLM runs only with "
                "trust_remote_code. Set trust_remote_code: true in the instance's options if you trust the model's "
                "code, or trust_remote_code: false to serve it with the implementation built into vLLM and "
                "transformers." % (where, model))
        # Only an explicit bfloat16: with dtype auto, vLLM 0.32.0 itself falls back to float16 on such GPUs
        # (vllm/config/model.py, _resolve_auto_dtype, "Falling back to ... for compatibility").
        if str(options.get("dtype", "auto")) == "bfloat16":
            old = [g for g in instance_gpus(instance, host_gpus)
                   if _cc(g.get("compute_capability")) and _cc(g["compute_capability"]) < (8, 0)]
            if old:
                problems.append(
                    "%s: dtype bfloat16 needs GPUs of compute capability 8.0 or newer, but GPU %s (%s) has %s, so vLLM "
                    "refuses to start. Set dtype: half in the instance's options (or leave dtype out: vLLM then "
                    "chooses float16 on this GPU by itself)." % (
                        where, ", ".join(str(g.get("index")) for g in old), old[0].get("name", "?"), old[0].get("compute_capability")))
        longest = config.get("max_position_embeddings")
        wanted = options.get("max-model-len")
        env = instance.get("env") or {}
        if isinstance(longest, int) and isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > longest \
                and not config.get("rope_scaling") and str(env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "")) not in ("1", "true", "True"):
            problems.append(
                "%s: max_model_len %d is longer than %s's context (max_position_embeddings %d in its config.json), so "
                "vLLM refuses to start. Lower max_model_len in the instance's options (vllm_server_options) to at most "
                "%d, or leave it out to use the model's own." % (where, wanted, model, longest, longest))
    problems.extend(_gpu_sharing_problems(instances, host, host_gpus, running))
    return problems


def _utilization(instance):
    try:
        return float(_options(instance).get("gpu-memory-utilization", DEFAULT_GPU_MEMORY_UTILIZATION))
    except (TypeError, ValueError):
        return DEFAULT_GPU_MEMORY_UTILIZATION


def _gpu_sharing_problems(instances, host, host_gpus, running):
    """Instances whose gpu_memory_utilization on one GPU adds up past 1.0, or that ask for more than is free."""
    problems = []
    users = {}
    for instance in instances:
        for gpu in instance_gpus(instance, host_gpus):
            users.setdefault(str(gpu.get("index")), (gpu, []))[1].append(instance)
    for index in sorted(users, key=lambda i: (len(i), i)):
        gpu, sharing = users[index]
        total = sum(_utilization(i) for i in sharing)
        if len(sharing) > 1 and total > 1.0 + 1e-9:
            problems.append(
                "%s: instances %s share GPU %s, and their gpu_memory_utilization adds up to %s (%s), more than the "
                "whole GPU: the one that starts last fails. Lower gpu_memory_utilization in their options so that "
                "it adds up to at most 1.0, or give each its own GPUs (gpus)." % (
                    host, ", ".join(i.get("name") for i in sharing), index, round(total, 3),
                    " + ".join("%s %s" % (i.get("name"), _utilization(i)) for i in sharing)))
            continue
        if any(i.get("name") in running for i in sharing):
            continue
        try:
            memory_total = float(gpu.get("memory_total_mib"))
            memory_free = float(gpu.get("memory_free_mib"))
        except (TypeError, ValueError):
            continue
        wanted = total * memory_total
        if wanted > memory_free:
            problems.append(
                "%s: %s ask%s for %.1f GiB of GPU %s (gpu_memory_utilization %s of %.1f GiB), but only %.1f GiB are "
                "free now: other processes use the rest (nvidia-smi lists them), and vLLM refuses to start. Lower "
                "gpu_memory_utilization in the instance's options to at most %s, or free the GPU." % (
                    host, ", ".join(i.get("name") for i in sharing), "s" if len(sharing) == 1 else "", wanted / 1024, index,
                    round(total, 3), memory_total / 1024, memory_free / 1024, int(memory_free / memory_total * 100) / 100.0))
    return problems


class FilterModule(object):
    def filters(self):
        return {
            "vllm_secret_problems": vllm_secret_problems,
            "registry_password_problems": registry_password_problems,
            "vllm_model_problems": vllm_model_problems,
            "vllm_model_ref": vllm_model_ref,
            "vllm_hub_questions": vllm_hub_questions,
        }
