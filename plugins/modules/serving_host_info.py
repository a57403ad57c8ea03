#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: serving_host_info
short_description: Disk space, TCP ports and Docker of a host, before a vLLM deployment changes it
version_added: 0.1.0
description:
  - Gathers, read-only, what the collection's preflight checks need and Ansible's facts do not have.
  - B(Disk space.) For each entry of O(space), the file system that holds its path (a path that
    does not exist yet is looked up through its nearest existing parent) and its free space.
    Entries on the same file system are added up, so an image and a model that land on one disk
    are checked against that disk's free space together.
  - B(Ports.) For each of O(ports), whether something listens on it (from C(/proc/net/tcp) and
    C(/proc/net/tcp6)), which processes (from C(ss -ltnp) when it is installed), and which Docker
    containers publish it.
  - B(Docker.) Whether the C(docker) CLI is installed, whether the daemon answers, its version, the
    state of its systemd unit, and which of O(images) are present.
  - B(LoRA adapters.) For each of O(adapters), whether the directory exists, the fields of its C(adapter_config.json)
    that decide whether vLLM serves it on a base model (C(peft_type), C(base_model_name_or_path), the rank C(r),
    C(target_modules)), and whether it has weights (C(adapter_model.safetensors) or C(adapter_model.bin)).
  - B(Models.) For each of O(models), whether the Hugging Face cache in O(hf_cache) holds it (the
    snapshot its revision points at, with a C(config.json) and weight files), and the fields of its
    C(config.json) that decide whether vLLM can serve it as asked (attention heads, C(auto_map), dtype,
    context length, the shape of its KV cache), and the bytes of the weight files vLLM would load (the
    safetensors index's C(total_size) when there is one).
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
  - llmops.vllm.attributes.read_only
options:
  space:
    description: Space needed on the file systems that hold some paths.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The path; it need not exist yet.
        type: path
        required: true
      bytes:
        description: Bytes needed there.
        type: int
        required: true
      purpose:
        description: What needs the space, for messages.
        type: str
        default: ""
      unless_image:
        description: No space is needed when this Docker image is already present (the space is for pulling it).
        type: str
  ports:
    description: TCP ports to look at.
    type: list
    elements: int
    default: []
  images:
    description: Docker images whose presence to report (when the daemon answers).
    type: list
    elements: str
    default: []
  models:
    description:
      - Hugging Face model ids to look up in O(hf_cache), each with an optional revision (a branch, a tag or a
        commit; V(main) when left out). Ids that are paths (they start with C(/)) are left out.
    type: list
    elements: dict
    default: []
    suboptions:
      model:
        description: The model id, C(org/name).
        type: str
        required: true
      revision:
        description: Branch, tag or commit of the model.
        type: str
        default: main
  hf_cache:
    description: The Hugging Face hub cache directory (C(HF_HOME/hub)) on the host, which holds C(models--org--name) directories.
    type: path
  adapters:
    description:
      - Directories of LoRA adapters on the host (a directory of the host, or an adapter's snapshot in the hub cache), whose
        C(adapter_config.json) to read.
    type: list
    elements: path
    default: []
    version_added: 0.2.0
"""

EXAMPLES = r"""
- name: Look at the host
  llmops.vllm.serving_host_info:
    space:
      - {path: /var/lib/docker, bytes: "{{ 30 * 1024**3 }}", purpose: the vLLM image, unless_image: "vllm/vllm-openai:v0.32.0"}
      - {path: /data/vllm/models, bytes: "{{ 40 * 1024**3 }}", purpose: the models}
    ports: [8000]
    images: [vllm/vllm-openai:v0.32.0]
  become: true
  register: host
"""

RETURN = r"""
filesystems:
  description: One entry per file system that holds a path of O(space).
  returned: always
  type: list
  elements: dict
  sample:
    - mount: /
      free_bytes: 75161927680
      required_bytes: 75161927680
      enough: true
      needs: [{path: /var/lib/docker, existing: /var/lib/docker, bytes: 32212254720, purpose: the vLLM image}]
ports:
  description: One entry per port of O(ports).
  returned: always
  type: list
  elements: dict
  sample:
    - port: 8000
      listening: true
      listeners: [{address: "0.0.0.0", process: docker-proxy, pid: 1234}]
      containers: [vllm]
models:
  description: One entry per model of O(models) that is a hub id.
  returned: always
  type: list
  elements: dict
  sample:
    - model: Qwen/Qwen2.5-1.5B-Instruct
      revision: main
      cached: true
      snapshot: /data/vllm/models/hub/models--Qwen--Qwen2.5-1.5B-Instruct/snapshots/989aa7980e4cf806f80c7fef2b1adb7bc71aa306
      weights: true
      weights_bytes: 3087467144
      config: {architectures: [Qwen2ForCausalLM], model_type: qwen2, num_attention_heads: 12, num_key_value_heads: 2,
               torch_dtype: bfloat16, max_position_embeddings: 32768, auto_map: false, rope_scaling: false}
      error: ""
adapters:
  description: One entry per directory of O(adapters).
  returned: always
  type: list
  elements: dict
  version_added: 0.2.0
  sample:
    - path: /srv/adapters/sql
      exists: true
      config: {peft_type: LORA, base_model_name_or_path: meta-llama/Llama-3.1-8B-Instruct, r: 16,
               target_modules: [q_proj, v_proj]}
      weights: true
      error: ""
docker:
  description: The Docker CLI and daemon.
  returned: always
  type: dict
  sample:
    installed: true
    answers: true
    server_version: "28.5.1"
    service: active
    error: ""
    images: {"vllm/vllm-openai:v0.32.0": true}
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import adapter_config_summary
from ansible_collections.llmops.vllm.plugins.module_utils._hf_config import (
    SAFETENSORS_INDEX,
    index_total_size,
    model_config_summary,
    weight_files,
)

_SS_USERS = re.compile(r'\("([^"]+)",pid=(\d+)')
_PUBLISHED = re.compile(r"(?:^|,\s*)(?:\[?[0-9a-fA-F.:]*\]?):(\d+)(?:-(\d+))?->")


def mount_point(path):
    """The nearest existing ancestor of path and the mount point of its file system."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    mount = os.path.realpath(existing)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return existing, mount


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def filesystems(space, present_images=None):
    by_device = {}
    for need in space:
        if need.get("unless_image") and (present_images or {}).get(need["unless_image"]):
            need = dict(need, bytes=0)
        existing, mount = mount_point(need["path"])
        device = os.stat(existing).st_dev
        fs = by_device.setdefault(device, {"mount": mount, "free_bytes": free_bytes(existing), "required_bytes": 0, "needs": []})
        fs["required_bytes"] += max(int(need["bytes"]), 0)
        fs["needs"].append({"path": need["path"], "existing": existing, "bytes": int(need["bytes"]), "purpose": need.get("purpose") or ""})
    result = sorted(by_device.values(), key=lambda fs: fs["mount"])
    for fs in result:
        fs["enough"] = fs["free_bytes"] >= fs["required_bytes"]
    return result


def listening_ports(tables):
    """Ports in LISTEN state from the text of /proc/net/tcp and /proc/net/tcp6."""
    ports = {}
    for text in tables:
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":
                continue
            address, port = fields[1].rsplit(":", 1)
            ports.setdefault(int(port, 16), []).append(address)
    return ports


def ss_listeners(text):
    """{port: [{address, process, pid}]} from `ss -Htlnp` output."""
    result = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[3]
        address, dummy, port = local.rpartition(":")
        if not port.isdigit():
            continue
        users = _SS_USERS.findall(line)
        entries = result.setdefault(int(port), [])
        for process, pid in users or [("", "0")]:
            entries.append({"address": address.strip("[]"), "process": process, "pid": int(pid)})
    return result


def published_ports(text):
    """{host port: [container names]} from `docker ps --format '{{.Names}}\\t{{.Ports}}'`."""
    result = {}
    for line in text.splitlines():
        if "\t" not in line:
            continue
        name, ports = line.split("\t", 1)
        for first, last in _PUBLISHED.findall(ports):
            for port in range(int(first), int(last or first) + 1):
                names = result.setdefault(port, [])
                if name not in names:
                    names.append(name)
    return result


def cached_model(cache, model, revision="main"):
    """What the Hugging Face cache at cache holds of model at revision (huggingface_hub's layout:
    models--org--name/refs/<revision> names the commit, snapshots/<commit>/ holds its files)."""
    import json

    entry = {"model": model, "revision": revision, "cached": False, "snapshot": "", "weights": False, "weights_bytes": 0,
             "config": {}, "error": ""}
    repo = os.path.join(cache, "models--" + model.replace("/", "--"))
    commit = read(os.path.join(repo, "refs", revision)).strip() or revision
    snapshot = os.path.join(repo, "snapshots", commit)
    if not os.path.isdir(snapshot):
        return entry
    entry["snapshot"] = snapshot
    config_path = os.path.join(snapshot, "config.json")
    if os.path.exists(config_path):
        try:
            entry["config"] = model_config_summary(json.loads(read(config_path)))
        except (ValueError, AttributeError) as e:
            entry["error"] = "%s is not a JSON object: %s" % (config_path, e)
    sizes = {}
    for root, dummy, files in os.walk(snapshot, followlinks=True):
        for name in files:
            path = os.path.join(root, name)
            try:
                sizes[os.path.relpath(path, snapshot)] = os.path.getsize(path)
            except OSError:
                continue
    weights = weight_files(sizes)
    entry["weights"] = bool(weights)
    index = None
    if os.path.exists(os.path.join(snapshot, SAFETENSORS_INDEX)):
        try:
            index = index_total_size(json.loads(read(os.path.join(snapshot, SAFETENSORS_INDEX))))
        except ValueError:
            index = None
    entry["weights_bytes"] = index or sum(weights.values())
    entry["cached"] = os.path.exists(config_path) and entry["weights"]
    return entry


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_dir(path):
    """What a LoRA adapter's directory holds: {path, exists, config (adapter_config.json's summary), weights, error}."""
    import json

    entry = {"path": path, "exists": os.path.isdir(path), "config": {}, "weights": False, "error": ""}
    if not entry["exists"]:
        return entry
    config_path = os.path.join(path, "adapter_config.json")
    if os.path.exists(config_path):
        try:
            entry["config"] = adapter_config_summary(json.loads(read(config_path)))
        except ValueError as e:
            entry["error"] = "%s is not a JSON object: %s" % (config_path, e)
    entry["weights"] = any(os.path.isfile(os.path.join(path, name)) for name in ADAPTER_WEIGHTS)
    return entry


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError):
        return ""


def docker_state(module, images):
    state = {"installed": False, "answers": False, "server_version": "", "service": "unknown", "error": "", "images": {}}
    systemctl = module.get_bin_path("systemctl")
    if systemctl:
        rc, out, err = module.run_command([systemctl, "is-active", "docker"])
        state["service"] = out.strip() or "unknown"
    cli = module.get_bin_path("docker")
    if not cli:
        return state, None
    state["installed"] = True
    rc, out, err = module.run_command([cli, "version", "--format", "{{.Server.Version}}"])
    if rc == 0 and out.strip():
        state["answers"] = True
        state["server_version"] = out.strip()
    else:
        state["error"] = (err or out).strip().splitlines()[-1] if (err or out).strip() else "docker version exited with %d" % rc
        return state, None
    for image in images:
        rc, out, err = module.run_command([cli, "image", "inspect", "--format", "{{.Id}}", image])
        state["images"][image] = rc == 0
    rc, out, err = module.run_command([cli, "ps", "--format", "{{.Names}}\t{{.Ports}}"])
    return state, (out if rc == 0 else "")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            space=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                bytes=dict(type="int", required=True),
                purpose=dict(type="str", default=""),
                unless_image=dict(type="str"),
            )),
            ports=dict(type="list", elements="int", default=[]),
            images=dict(type="list", elements="str", default=[]),
            models=dict(type="list", elements="dict", default=[], options=dict(
                model=dict(type="str", required=True),
                revision=dict(type="str", default="main"),
            )),
            hf_cache=dict(type="path"),
            adapters=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    images = list(module.params["images"])
    images += [n["unless_image"] for n in module.params["space"] if n.get("unless_image") and n["unless_image"] not in images]
    docker, ps = docker_state(module, images)

    ports = []
    if module.params["ports"]:
        listening = listening_ports([read("/proc/net/tcp"), read("/proc/net/tcp6")])
        named = {}
        ss = module.get_bin_path("ss")
        if ss:
            rc, out, err = module.run_command([ss, "-Htlnp"])
            if rc == 0:
                named = ss_listeners(out)
        published = published_ports(ps or "")
        for port in module.params["ports"]:
            ports.append({
                "port": port,
                "listening": port in listening or port in named,
                "listeners": named.get(port, []),
                "containers": published.get(port, []),
            })

    models = []
    wanted = [m for m in module.params["models"] if not m["model"].startswith("/")]
    if wanted and not module.params["hf_cache"]:
        module.fail_json(msg="models needs hf_cache, the Hugging Face hub cache directory to look in")
    for m in wanted:
        models.append(cached_model(module.params["hf_cache"], m["model"], m["revision"] or "main"))
    module.exit_json(changed=False, filesystems=filesystems(module.params["space"], docker["images"]), ports=ports, docker=docker,
                     models=models, adapters=[adapter_dir(path) for path in module.params["adapters"]])


if __name__ == "__main__":
    main()
