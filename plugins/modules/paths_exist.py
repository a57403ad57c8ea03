#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: paths_exist
short_description: Whether each of several paths exists on the host, in one module call
version_added: 0.1.0
description:
  - Looks up each path of O(paths) and returns which exist (RV(exists)) and which are directories (RV(directories)).
  - One call for what would take one C(ansible.builtin.stat) task per path; each task is a round trip to the host,
    and a role that asks about several paths on every run pays for each (issue 23).
  - A symbolic link counts as existing when its target exists, as C(ansible.builtin.stat) with C(follow=true)
    sees it; a socket, a device or a file counts as existing.
  - Changes nothing on the host.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
  - llmops.vllm.attributes.read_only
options:
  paths:
    description: The absolute paths to look up.
    type: list
    elements: path
    required: true
notes:
  - Run it with C(become) where the connecting user may not read a path's directory; a path it may not look
    into counts as missing.
seealso:
  - module: ansible.builtin.stat
"""

EXAMPLES = r"""
- name: Look for the Docker socket and an old compose file
  llmops.vllm.paths_exist:
    paths:
      - /var/run/docker.sock
      - /opt/vllm/compose/compose.yaml
  register: found

- name: Ask Docker only where it runs
  community.docker.docker_host_info:
  when: found.exists['/var/run/docker.sock']
"""

RETURN = r"""
exists:
  description: Each path of O(paths), as given, and whether it exists.
  returned: always
  type: dict
  sample: {"/var/run/docker.sock": true, "/opt/vllm/compose/compose.yaml": false}
directories:
  description: The paths of O(paths) that are directories.
  returned: always
  type: list
  elements: str
  sample: ["/opt/vllm/compose"]
"""

import os

from ansible.module_utils.basic import AnsibleModule


def look(paths):
    """(exists, directories) for the given paths, each as given."""
    exists = {}
    directories = []
    for path in paths:
        exists[path] = os.path.exists(path)
        if os.path.isdir(path):
            directories.append(path)
    return exists, directories


def main():
    module = AnsibleModule(
        argument_spec=dict(paths=dict(type="list", elements="path", required=True)),
        supports_check_mode=True,
    )
    exists, directories = look(module.params["paths"])
    module.exit_json(changed=False, exists=exists, directories=directories)


if __name__ == "__main__":
    main()
