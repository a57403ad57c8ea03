# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

# PRIVATE to the collection: not a public API, may change without notice.
#
# The container of one vLLM instance, specified once. The vllm_server role's container mode passes
# container_args() to community.docker.docker_container; compose mode writes compose_service(),
# derived from the same arguments, into a compose project. Changing a setting here changes both.

from __future__ import annotations

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import lora_env, lora_mounts

# Where the host directories appear inside the container. The models directory is the Hugging
# Face home, so a model downloaded once lands in models/hub/ and is reused.
CONTAINER_HF_HOME = "/root/.cache/huggingface"
CONTAINER_LOGS_DIR = "/var/log/vllm"
CONTAINER_CONFIGS_DIR = "/etc/vllm"
# vLLM's compile cache (torch.compile, Triton and CPU kernels), kept in a volume per instance.
CONTAINER_CACHE_DIR = "/root/.cache/vllm"
# vLLM's port inside the container; the host port is per instance.
CONTAINER_PORT = 8000

# The label that marks the containers the role manages (prune and uninstall find them by it).
INSTANCE_LABEL = "org.llmops.vllm.instance"
MODE_LABEL = "org.llmops.vllm.mode"
# A node of a multi-node instance: its role (head or worker) and the instance's nodes, comma-separated
# (uninstall and upgrade find the whole instance by them).
NODE_ROLE_LABEL = "org.llmops.vllm.node-role"
NODES_LABEL = "org.llmops.vllm.nodes"

HEALTHCHECK_SCRIPT = (
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:%d/health', timeout=5)" % CONTAINER_PORT)

# The role's settings that shape every container (vllm_server_* variables, see vars/main.yml).
SETTINGS = ("models_dir", "logs_dir", "configs_dir", "timezone", "log_to_file", "hf_endpoint", "compile_cache",
            "ipc_mode", "shm_size", "capabilities", "security_opts", "restart_policy", "entrypoint",
            "verify_timeout", "mode", "shutdown_timeout")
# What Docker adds to vLLM's own shutdown timeout before it kills a stopping container.
STOP_MARGIN_S = 30


class ContainerSpecError(ValueError):
    """The instance or the settings cannot make a container; the message says which value."""


def _bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def _check_settings(settings):
    if not isinstance(settings, dict):
        raise ContainerSpecError("the container settings must be a dictionary, not %s" % type(settings).__name__)
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise ContainerSpecError("the container settings lack %s" % ", ".join(missing))


def entrypoint_wrapper(instance):
    """A shell that exports the instance's secrets file, then runs the image's entrypoint.

    The secrets reach vLLM's environment without appearing in `docker inspect` or on a command line.
    It fails closed: without a readable secrets file (which the role always writes, empty of keys
    only when none is set) it exits non-zero with a message on stderr instead of starting vLLM
    without its API key.
    """
    secrets = "%s/%s" % (CONTAINER_CONFIGS_DIR, instance["secrets_file"])
    return ["/bin/sh", "-c",
            'f=%s; if [ ! -r "$f" ]; then echo "vllm-entrypoint: cannot read its secrets file $f;'
            ' refusing to start without the instance\'s API key and token. Run the llmops.vllm.vllm_server'
            ' role to write it again." >&2; exit 78; fi; set -a; . "$f" || exit 78; set +a; exec "$@"' % secrets,
            "vllm-entrypoint"]


def log_file(instance):
    """The rotating log file vLLM writes inside the container (vllm_server_log_to_file)."""
    return "%s/%s.log" % (CONTAINER_LOGS_DIR, instance["name"])


def container_env(instance, settings):
    """The instance's environment, every value a string as Docker wants it; the instance's env wins."""
    env = {"TZ": settings["timezone"]}
    if _bool(settings["log_to_file"]):
        env["VLLM_LOGGING_CONFIG_PATH"] = "%s/%s" % (CONTAINER_CONFIGS_DIR, instance["logging_file"])
    if settings["hf_endpoint"]:
        env["HF_ENDPOINT"] = settings["hf_endpoint"]
    # vLLM's filesystem resolver for runtime adapters (docs/lora.md); the instance's env may still override it
    env.update(lora_env(instance))
    env.update(instance.get("env") or {})
    return dict((str(k), str(v)) for k, v in env.items())


def host_mounts(settings):
    """The models, logs and configs directories of the host (the configs read-only)."""
    return [
        {"type": "bind", "source": settings["models_dir"], "target": CONTAINER_HF_HOME},
        {"type": "bind", "source": settings["logs_dir"], "target": CONTAINER_LOGS_DIR},
        {"type": "bind", "source": settings["configs_dir"], "target": CONTAINER_CONFIGS_DIR, "read_only": True},
    ]


def container_mounts(instance, settings):
    mounts = host_mounts(settings)
    # the LoRA adapters' host directories and the resolver's directory (docs/lora.md); lora_dir is the
    # host directory that holds the instances' resolver directories
    mounts.extend(lora_mounts(instance, settings.get("lora_dir")))
    if _bool(settings["compile_cache"]):
        mounts.append({"type": "volume", "source": instance["cache_volume"], "target": CONTAINER_CACHE_DIR})
    return mounts


def published_port(instance):
    """host-address:host-port:8000, an IPv6 address in brackets."""
    address = str(instance["bind_address"])
    if ":" in address:
        address = "[%s]" % address
    return "%s:%s:%d" % (address, instance["port"], CONTAINER_PORT)


def device_requests(gpus):
    """docker_container device_requests for a GPU selection: 'all', 'none', a count or a list of ids."""
    request = {"driver": "nvidia", "capabilities": [["gpu"]]}
    if gpus is None or gpus == "none" or gpus == []:
        return []
    if gpus == "all":
        return [dict(request, count=-1)]
    if isinstance(gpus, bool):
        raise ContainerSpecError("GPU selection must be 'all', 'none', a count or a list of GPU ids, not %r" % gpus)
    if isinstance(gpus, int) or (isinstance(gpus, str) and gpus.isdigit()):
        count = int(gpus)
        return [dict(request, count=count)] if count > 0 else []
    if isinstance(gpus, (list, tuple)):
        return [dict(request, device_ids=[str(g) for g in gpus])]
    if isinstance(gpus, str):
        return [dict(request, device_ids=[g.strip() for g in gpus.split(",") if g.strip()])]
    raise ContainerSpecError("GPU selection must be 'all', 'none', a count or a list of GPU ids, not %r" % (gpus,))


def container_args(instance, settings):
    """The community.docker.docker_container arguments of one resolved instance (vllm_resolve_instances).

    state and restart are the task's business. ipc_mode and shm_size appear only when set.
    """
    _check_settings(settings)
    args = {
        "name": instance["name"],
        "image": instance["image"],
        "restart_policy": settings["restart_policy"],
        "entrypoint": entrypoint_wrapper(instance) + list(settings["entrypoint"]),
        "command": [str(instance["model"]), "--config", "%s/%s" % (CONTAINER_CONFIGS_DIR, instance["config_file"])],
        "env": container_env(instance, settings),
        "mounts": container_mounts(instance, settings),
        "published_ports": [published_port(instance)],
        "device_requests": device_requests(instance.get("gpus")),
        "capabilities": list(settings["capabilities"] or []),
        "security_opts": list(settings["security_opts"] or []),
        "healthcheck": {
            "test": ["CMD", "python3", "-c", HEALTHCHECK_SCRIPT],
            "interval": "30s",
            "timeout": "10s",
            "retries": 3,
            "start_period": "%ss" % settings["verify_timeout"],
        },
        "labels": {
            INSTANCE_LABEL: instance["name"],
            "org.llmops.vllm.model": str(instance["model"]),
            MODE_LABEL: settings["mode"],
        },
    }
    # vLLM finishes the requests it started for shutdown_timeout seconds after SIGTERM; Docker
    # must not kill it before that (its default stop timeout is 10 s).
    if int(settings["shutdown_timeout"] or 0) > 0:
        args["stop_timeout"] = int(settings["shutdown_timeout"]) + STOP_MARGIN_S
    if settings["ipc_mode"]:
        args["ipc_mode"] = settings["ipc_mode"]
    if settings["shm_size"]:
        args["shm_size"] = settings["shm_size"]
    return args


def download_args(instance, settings):
    """The docker_container arguments of the one-off container that fetches an instance's model.

    The instance's own image, environment, secrets and models directory, with `hf download` as command.
    """
    _check_settings(settings)
    command = ["hf", "download", str(instance["model"])]
    if instance.get("revision") is not None:
        command += ["--revision", str(instance["revision"])]
    return {
        "name": "%s-download" % instance["name"],
        "image": instance["image"],
        "entrypoint": entrypoint_wrapper(instance),
        "command": command,
        "env": container_env(instance, settings),
        "mounts": host_mounts(settings),
    }


def _compose_escape(value):
    """Compose reads $ as the start of a variable; a literal one is $$."""
    return value.replace("$", "$$")


def compose_service(args):
    """The compose service of the container that container_args() describes."""
    service = {
        "container_name": args["name"],
        "image": args["image"],
        "entrypoint": [_compose_escape(a) for a in args["entrypoint"]],
        "command": [_compose_escape(a) for a in args["command"]],
        "environment": dict((k, _compose_escape(v)) for k, v in args["env"].items()),
        "volumes": args["mounts"],
        "ports": args["published_ports"],
        "restart": args["restart_policy"],
        "healthcheck": args["healthcheck"],
        "labels": args["labels"],
    }
    for arg, key in (("ipc_mode", "ipc"), ("shm_size", "shm_size"), ("capabilities", "cap_add"),
                     ("security_opts", "security_opt")):
        if args.get(arg):
            service[key] = args[arg]
    if args.get("stop_timeout"):
        service["stop_grace_period"] = "%ds" % args["stop_timeout"]
    if args["device_requests"]:
        request = args["device_requests"][0]
        device = {"driver": request["driver"], "capabilities": request["capabilities"][0]}
        if "device_ids" in request:
            device["device_ids"] = request["device_ids"]
        else:
            device["count"] = "all" if request["count"] == -1 else request["count"]
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return service


def compose_project(instances, settings, project):
    """The compose document of all instances: one service each, and their compile cache volumes."""
    services = {}
    volumes = {}
    for instance in instances:
        args = container_args(instance, settings)
        services[instance["name"]] = compose_service(args)
        if _bool(settings["compile_cache"]):
            volumes[instance["cache_volume"]] = {"name": instance["cache_volume"]}
    return {"name": project, "services": services, "volumes": volumes}


def _image_repository(image):
    """The repository of an image reference without its tag or digest (registry:5000/a/b:tag -> registry:5000/a/b)."""
    name = str(image).split("@", 1)[0]
    head, dummy, last = name.rpartition("/")
    if ":" in last:
        last = last.split(":", 1)[0]
    return "%s/%s" % (head, last) if head else last


def pinned_image(image, digest):
    """repository@digest, the same bytes on every node; the image as it is without a digest.

    The tag goes: community.docker reads name:tag@digest as the repository name:tag with tag digest.
    """
    if not digest:
        return str(image)
    if "@" in str(image):
        return str(image)
    return "%s@%s" % (_image_repository(image), digest)


def _ray_head_script(node, wait_nodes, wait_s, serve):
    """The head's command with executor ray: Ray's head, a wait until every node joined, then vllm serve."""
    import shlex

    count = ("import ray; ray.init(address='auto', logging_level='ERROR'); "
             "print(sum(1 for n in ray.nodes() if n.get('Alive')))")
    return (
        "%s || exit 1; "
        "waited=0; "
        "until [ \"$(python3 -c %s 2>/dev/null)\" -ge %d ]; do "
        "if [ \"$waited\" -ge %d ]; then echo \"vllm-ray-head: fewer than %d Ray nodes joined within %d s "
        "(ray status below); the workers cannot reach this head's Ray port, or run another image\" >&2; "
        "ray status >&2; exit 1; fi; sleep 5; waited=$((waited + 5)); done; "
        "exec %s" % (shlex.join(node["ray_start"]), shlex.quote(count), wait_nodes, wait_s, wait_nodes, wait_s,
                     shlex.join(serve)))


def multinode_container_args(instance, settings, plan, node, ray_wait_s=600):
    """The docker_container arguments of one node of a multi-node instance (docs/multinode.md).

    Built from the instance's single-node container (mounts, secrets entrypoint, logging, GPUs), then:
    the head's pinned image on every node, host networking (no published port: vLLM listens on the
    instance's bind_address and port itself), the node's cluster environment, its vLLM arguments or its
    `ray start`, Docker's restart policy "no" (the role restarts all nodes together), the API health check
    on the head only, and labels naming the node's role and the instance's nodes.
    """
    args = container_args(instance, settings)
    model = str(instance["model"])
    config = "%s/%s" % (CONTAINER_CONFIGS_DIR, instance["config_file"])
    head = node["role"] == "head"
    env = dict(args["env"])
    env.update(dict((str(k), str(v)) for k, v in (node.get("env") or {}).items()))
    wrapper = entrypoint_wrapper(instance)
    serve = ["vllm", "serve", model, "--config", config] + list(node["vllm_args"])
    if plan.get("executor") == "ray":
        if head:
            script = _ray_head_script(node, len(plan["nodes"]), int(ray_wait_s), serve)
            entrypoint, command = wrapper + ["/bin/sh", "-c"], [script, "vllm-ray-head"]
        else:
            entrypoint, command = wrapper, list(node["ray_start"])
    else:
        entrypoint, command = wrapper + list(settings["entrypoint"]), [model, "--config", config] + list(node["vllm_args"])
    args.update(
        image=plan.get("image") or instance["image"],
        restart_policy=node.get("restart_policy", "no"),
        network_mode=node.get("network_mode", "host"),
        published_ports=[],
        entrypoint=entrypoint,
        command=command,
        env=env,
    )
    labels = dict(args["labels"])
    labels[NODE_ROLE_LABEL] = node["role"]
    labels[NODES_LABEL] = ",".join(n["host"] for n in plan["nodes"])
    args["labels"] = labels
    if head:
        # the resolved instance's local_url: the address vLLM listens on (host network: no port mapping)
        url = "%s/health" % instance["local_url"]
        args["healthcheck"] = dict(args["healthcheck"], test=[
            "CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen(%r, timeout=5)" % url])
    else:
        # A worker serves no API: its container running is its health (the head's check covers the instance).
        args["healthcheck"] = {"test": ["NONE"]}
    return args
