# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# The container of one vLLM instance, specified once (plugins/plugin_utils/_vllm_container.py):
# vllm_container gives the community.docker.docker_container arguments (container mode),
# vllm_compose_service / vllm_compose_project the compose service derived from them (compose mode),
# vllm_download_container the one-off container that fetches a model.

from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_container import (
    ContainerSpecError, compose_project, compose_service, container_args, download_args, log_file,
    multinode_container_args)


def _filter(function):
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ContainerSpecError as e:
            raise AnsibleFilterError(str(e))
        except KeyError as e:
            raise AnsibleFilterError("the instance lacks %s: resolve it with llmops.vllm.vllm_resolve_instances first" % e)
    wrapped.__name__ = function.__name__
    wrapped.__doc__ = function.__doc__
    return wrapped


def vllm_container(instance, settings):
    """The community.docker.docker_container arguments of one resolved instance."""
    return container_args(instance, settings)


def vllm_multinode_container(entry, settings, ray_wait_s=600):
    """The community.docker.docker_container arguments of this host's node of a multi-node instance.

    entry: one item of llmops.vllm.vllm_multinode_plans (its instance, plan and this host's node).
    """
    if not entry.get("node"):
        raise AnsibleFilterError("instance %s has no plan for this host: its preflight problems must be fixed first"
                                 % entry.get("name"))
    return multinode_container_args(entry["instance"], settings, entry["plan"], entry["node"], ray_wait_s)


def vllm_compose_service(instance, settings):
    """The compose service of one resolved instance, derived from its docker_container arguments."""
    return compose_service(container_args(instance, settings))


def vllm_compose_project(instances, settings, project):
    """The compose document (name, services, volumes) of a host's instances."""
    return compose_project(instances, settings, project)


def vllm_download_container(instance, settings):
    """The docker_container arguments of the container that runs `hf download` for an instance's model."""
    return download_args(instance, settings)


def vllm_container_log_file(instance):
    """The path inside the container of the instance's rotating log file."""
    return log_file(instance)


class FilterModule(object):
    def filters(self):
        return {
            "vllm_container": _filter(vllm_container),
            "vllm_multinode_container": _filter(vllm_multinode_container),
            "vllm_compose_service": _filter(vllm_compose_service),
            "vllm_compose_project": _filter(vllm_compose_project),
            "vllm_download_container": _filter(vllm_download_container),
            "vllm_container_log_file": _filter(vllm_container_log_file),
        }
