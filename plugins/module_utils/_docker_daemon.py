# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

# PRIVATE to the collection: how docker_daemon_config merges settings into daemon.json, shared with the
# controller's filter that tells whether a merge would change anything (plugins/filter/host_state.py).

from __future__ import annotations

import copy


def merge_settings(current, settings):
    """Return current with settings merged in; dicts recurse, None deletes, the rest replaces."""
    merged = copy.deepcopy(current)
    for key, value in settings.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_list_options(current, list_options):
    """Return current with NAME=VALUE entries set in list-valued keys, other entries kept."""
    merged = copy.deepcopy(current)
    for key, entries in list_options.items():
        values = list(merged.get(key) or [])
        for entry in entries:
            name = entry.split("=", 1)[0] + "=" if "=" in entry else None
            if name is None:
                if entry not in values:
                    values.append(entry)
                continue
            positions = [i for i, v in enumerate(values) if isinstance(v, str) and v.startswith(name)]
            if positions:
                values[positions[0]] = entry
                values = [v for i, v in enumerate(values) if i not in positions[1:]]
            else:
                values.append(entry)
        merged[key] = values
    return merged
