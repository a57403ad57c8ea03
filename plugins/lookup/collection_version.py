# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
name: collection_version
author:
  - llmops.vllm developers (@llmops)
version_added: 0.1.0
short_description: The version of a collection the running ansible-core finds, or an empty string
description:
  - Looks each collection up the way this run of ansible-core does when a task names one of its
    modules or roles (the configured collections paths, and the C(ansible_collections) packages on
    Python's path, such as the C(ansible) package's), on the control node.
  - Returns the version its C(MANIFEST.json) (an installed artifact) or C(galaxy.yml) (a checkout)
    states, C(*) when it states none, and an empty string when the collection is not there.
  - The roles of this collection use it to refuse, before anything changes, a feature whose
    optional collection is missing (C(grafana.grafana) for the monitoring role's Grafana).
options:
  _terms:
    description: Collection names, C(namespace.name).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Refuse Grafana without the grafana.grafana collection
  ansible.builtin.assert:
    that: lookup('llmops.vllm.collection_version', 'grafana.grafana') | length > 0
    fail_msg: "Install it on the control node: ansible-galaxy collection install grafana.grafana"
"""

RETURN = r"""
_raw:
  description: One version string for each name; empty where the collection is not installed.
  type: list
  elements: str
  sample: ["6.0.6"]
"""

import importlib.util
import json
import os
import re

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


def _stated_version(path):
    """The version a collection directory states (installed artifact or checkout); '*' if none."""
    try:
        with open(os.path.join(path, "MANIFEST.json")) as f:
            return str(json.load(f)["collection_info"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with open(os.path.join(path, "galaxy.yml")) as f:
            found = re.search(r"^version:\s*['\"]?([^'\"\s#]+)", f.read(), re.M)
        if found:
            return found.group(1)
    except OSError:
        pass
    return "*"


def collection_version(name):
    """The version of collection name (namespace.name) that ansible-core's collection loader finds; '' if none."""
    if not NAME.match(name or ""):
        raise AnsibleLookupError("%r is not a collection name (namespace.name)" % (name,))
    try:
        spec = importlib.util.find_spec("ansible_collections." + name)
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.submodule_search_locations:
        return ""
    return _stated_version(list(spec.submodule_search_locations)[0])


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [collection_version(str(term)) for term in terms]
