# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
name: role_default
author:
  - llmops.vllm developers (@llmops)
version_added: 0.1.0
short_description: The default of a variable of one of this collection's roles
description:
  - Returns the value a role of llmops.vllm gives a public variable in its C(defaults/main.yml), as the
    collection ships it; the role is the one whose name prefixes the variable (C(gateway_stats_user) is the
    gateway role's).
  - For a role that needs another role's default where that role is not in the play, or for a host whose
    inventory leaves the variable unset; a role never reads another role's files by path.
  - Only a plain default can be given (outside its role nothing templates it); a templated one is refused.
options:
  _terms:
    description: Variable names, such as C(vllm_server_version).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Name the vLLM release this collection ships
  ansible.builtin.debug:
    msg: "{{ lookup('llmops.vllm.role_default', 'vllm_server_version') }}"
"""

RETURN = r"""
_raw:
  description: One default for each name.
  type: list
  elements: raw
  sample: ["0.32.0"]
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.llmops.vllm.plugins.plugin_utils._role_defaults import RoleDefaultError, role_default


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        try:
            return [role_default(str(term)) for term in terms]
        except RoleDefaultError as e:
            raise AnsibleLookupError(str(e))
