"""Every argument the container filters can return reaches community.docker.docker_container.

The vllm_server role's docker_container tasks list the filter's keys one by one
(`name: "{{ __vllm_server_container.name }}"`, ...), because passing the dict whole needs the task
keyword `args: "{{ ... }}"`, which ansible-core 2.19 runs but warns about on every run under its
default INJECT_FACTS_AS_VARS. A key the filter returns and a task does not pass would be dropped
without a word: this test reads the task files and fails on it, and on a key the filter returns
only sometimes that a task passes without `default(omit)`.

What a filter "can return" is read from its source (dict literals, `args[...] =`, `args.update(...)`),
so that a key set only under some setting counts too, and checked against what it returns when every
optional setting is on. Compose mode must map every key as well (compose_service).
"""

import ast
import glob
import inspect
import os
import re

import pytest
import yaml

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances
from ansible_collections.llmops.vllm.plugins.plugin_utils import _vllm_container

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TASKS = os.path.join(ROOT, "roles", "vllm_server", "tasks")
MODULE = "community.docker.docker_container"

# filter name in a task's vars -> the function behind it
FILTERS = {
    "llmops.vllm.vllm_container": "container_args",
    "llmops.vllm.vllm_multinode_container": "multinode_container_args",
    "llmops.vllm.vllm_download_container": "download_args",
}

DEFAULTS = {"served_model_name": "", "port": 8000, "bind_address": "0.0.0.0", "gpus": "none", "options": {},
            "env": {}, "image": "vllm/vllm-openai:v0.32.0", "download": False}
# every setting that switches a key off, off
MINIMAL = {"models_dir": "/data/vllm/models", "logs_dir": "/data/vllm/logs", "configs_dir": "/data/vllm/configs",
           "timezone": "Etc/UTC", "log_to_file": False, "hf_endpoint": "", "compile_cache": False, "ipc_mode": "",
           "shm_size": "", "capabilities": [], "security_opts": [], "restart_policy": "unless-stopped",
           "entrypoint": ["vllm", "serve"], "verify_timeout": 1800, "mode": "container", "shutdown_timeout": 0}
# and on
FULL = dict(MINIMAL, log_to_file=True, hf_endpoint="http://hub.example", compile_cache=True, ipc_mode="host",
            shm_size="16g", capabilities=["SYS_NICE"], security_opts=["seccomp=unconfined"], shutdown_timeout=60)


def instance():
    return vllm_resolve_instances([{"name": "chat", "model": "org/model", "gpus": "all", "download": True}], DEFAULTS)[0]


def returned(function, settings):
    """The keys function returns for one instance under settings (a multi-node head for the multi-node one)."""
    if function == "multinode_container_args":
        plan = {"executor": "mp", "image": "", "nodes": [{"host": "gpu1"}, {"host": "gpu2"}]}
        node = {"role": "head", "env": {"VLLM_HOST_IP": "10.0.0.1"}, "vllm_args": ["--nnodes", "2"]}
        return set(_vllm_container.multinode_container_args(instance(), settings, plan, node))
    return set(getattr(_vllm_container, function)(instance(), settings))


def _keys_in_source(function):
    """The keys a function of _vllm_container puts into the dict it returns, read from its source."""
    tree = ast.parse(inspect.getsource(getattr(_vllm_container, function)))
    keys = set()
    for node in ast.walk(tree):
        # args = {...} or return {...}
        if isinstance(node, (ast.Assign, ast.Return)) and isinstance(node.value, ast.Dict):
            targets = getattr(node, "targets", [ast.Name(id="args")])
            if any(isinstance(t, ast.Name) and t.id == "args" for t in targets):
                keys.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
        # args["key"] = ...
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and target.value.id == "args"
                        and isinstance(target.slice, ast.Constant)):
                    keys.add(target.slice.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", None) == "args":
            # args.update(key=...)
            if node.func.attr == "update":
                keys.update(k.arg for k in node.keywords)
        # a function built on container_args() returns its keys too
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "container_args" and function != "container_args":
            keys |= _keys_in_source("container_args")
    return keys


def can_return(function):
    keys = _keys_in_source(function)
    seen = returned(function, FULL) | returned(function, MINIMAL)
    assert seen <= keys, ("%s returned %s, which this test's reading of its source missed: teach _keys_in_source "
                          "the way they are set" % (function, sorted(seen - keys)))
    return keys


def container_tasks():
    """(file, task, variable, function) of every docker_container task of the role fed by a container filter."""
    found = []
    for path in sorted(glob.glob(os.path.join(TASKS, "*.yml"))):
        with open(path) as f:
            tasks = yaml.safe_load(f) or []
        for task in tasks:
            if not isinstance(task, dict) or MODULE not in task:
                continue
            for variable, value in (task.get("vars") or {}).items():
                for name, function in FILTERS.items():
                    if isinstance(value, str) and re.search(r"\|\s*%s\(" % re.escape(name), value):
                        found.append((os.path.basename(path), task, variable, function))
    return found


TASKS_FOUND = container_tasks()


def test_the_container_tasks_are_found():
    files = sorted(set(f for f, dummy, dummy, dummy in TASKS_FOUND))
    assert files == ["download.yml", "run-container.yml", "run-multinode.yml"]
    assert len(TASKS_FOUND) >= 7, [t["name"] for dummy, t, dummy, dummy in TASKS_FOUND]


@pytest.mark.parametrize("file, task, variable, function", TASKS_FOUND,
                         ids=["%s: %s" % (f, t["name"]) for f, t, dummy, dummy in TASKS_FOUND])
def test_each_key_the_filter_can_return_is_passed_to_the_task(file, task, variable, function):
    args = task[MODULE]
    keys = can_return(function)
    passed = dict((key, value) for key, value in args.items()
                  if isinstance(value, str) and re.search(r"\b%s\.%s\b" % (re.escape(variable), re.escape(key)), value))
    missing = sorted(keys - set(passed))
    assert not missing, ("%s, task %r: %s returns %s, which the task does not pass to %s (add `%s: \"{{ %s.%s }}\"`)"
                         % (file, task["name"], function, missing, MODULE, missing[0], variable, missing[0]))
    unknown = sorted(set(re.findall(r"\b%s\.(\w+)" % re.escape(variable), " ".join(str(v) for v in args.values())))
                     - keys)
    assert not unknown, "%s, task %r: %s never returns %s" % (file, task["name"], function, unknown)
    sometimes = keys - returned(function, MINIMAL)
    for key in sorted(sometimes):
        assert "default(omit)" in passed[key], ("%s, task %r: %s returns %s only when its setting is on; pass it "
                                                "with | default(omit)" % (file, task["name"], function, key))


def test_compose_mode_maps_every_key_of_the_container():
    """compose_service() reads each key container_args() can return (all set here), so compose mode drops none."""

    class Reads(dict):
        read = set()

        def __getitem__(self, key):
            self.read.add(key)
            return dict.__getitem__(self, key)

        def get(self, key, default=None):
            self.read.add(key)
            return dict.get(self, key, default)

    args = Reads(_vllm_container.container_args(instance(), FULL))
    _vllm_container.compose_service(args)
    assert set(args) == can_return("container_args"), "FULL must switch every key of container_args() on"
    ignored = sorted(can_return("container_args") - Reads.read)
    assert not ignored, "compose_service() never reads %s: compose mode would drop it" % ignored
