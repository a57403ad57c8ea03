# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# The controller's half of llmops.vllm.host_state: whether what a task would write is already on the
# host, so that the task is skipped without a round trip. Every answer errs towards "not yet": a task
# that runs when it need not costs a second, one skipped when it should run would leave a host wrong.

import fnmatch
import hashlib
import json

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.llmops.vllm.plugins.module_utils._docker_daemon import merge_settings


def _octal(mode):
    # YAML reads an unquoted 0644 as the integer 420; a quoted one is octal text
    return mode if isinstance(mode, int) else int(str(mode), 8)


def _attributes_match(state, mode, owner, group):
    if mode is not None and _octal(state.get("mode", "-1")) != _octal(mode):
        return False
    if owner is not None and state.get("owner") != str(owner):
        return False
    return group is None or state.get("group") == str(group)


def llmops_file_matches(state, content=None, mode=None, owner=None, group=None):
    """Whether a host_state path entry is a file with this content (when given), mode, owner and group."""
    if not isinstance(state, dict):
        raise AnsibleFilterError("llmops_file_matches takes an entry of host_state's paths, not %r" % (state,))
    if not (state.get("exists") and state.get("isreg")):
        return False
    if content is not None and state.get("checksum") != hashlib.sha1(to_bytes(content, errors="surrogate_or_strict")).hexdigest():
        return False
    return _attributes_match(state, mode, owner, group)


def llmops_dir_matches(state, mode=None, owner=None, group=None):
    """Whether a host_state path entry is a directory with this mode, owner and group."""
    if not isinstance(state, dict):
        raise AnsibleFilterError("llmops_dir_matches takes an entry of host_state's paths, not %r" % (state,))
    return bool(state.get("exists") and state.get("isdir")) and _attributes_match(state, mode, owner, group)


def llmops_missing_packages(specs, versions):
    """The package specs that host_state's installed versions do not satisfy.

    A name is satisfied when it is installed; apt's NAME=VERSION (a * glob allowed, as the apt module
    matches it) when the installed version matches. Any other spelling counts as missing, so the
    package manager decides.
    """
    missing = []
    for spec in specs:
        name, dummy, pattern = str(spec).partition("=")
        installed = versions.get(name)
        if installed is None or (pattern and not fnmatch.fnmatch(installed, pattern)):
            missing.append(spec)
    return missing


def llmops_service_matches(state, wanted_state, enabled=None):
    """Whether a host_state service entry is started (or stopped) and enabled (or not) as wanted.

    Only started and stopped are states a unit can already be in; restarted and reloaded always act.
    """
    if not isinstance(state, dict):
        return False
    active = {"started": ["active"], "stopped": ["inactive", "failed"]}.get(wanted_state)
    if active is None or state.get("active") not in active:
        return False
    return enabled is None or state.get("enabled") == ("enabled" if enabled else "disabled")


def llmops_daemon_json_holds(text, settings):
    """Whether daemon.json's text (host_state's contents) already holds settings, as docker_daemon_config merges them.

    A missing, empty or unreadable file, or one that is not a JSON object, does not: the module then
    decides (and says what is wrong).
    """
    if not text or not text.strip():
        return False
    try:
        current = json.loads(text)
    except ValueError:
        return False
    return isinstance(current, dict) and merge_settings(current, settings) == current


class FilterModule(object):
    def filters(self):
        return {
            "llmops_file_matches": llmops_file_matches,
            "llmops_dir_matches": llmops_dir_matches,
            "llmops_missing_packages": llmops_missing_packages,
            "llmops_service_matches": llmops_service_matches,
            "llmops_daemon_json_holds": llmops_daemon_json_holds,
        }
