#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_state
short_description: Packages, files and services of a host, read in one call before a role changes them
version_added: 0.1.0
description:
  - Reads, without changing anything, what a role needs to decide which of its steps have something to do.
    Each module call costs a round trip to the host; a role that reads its packages, files and services
    here once skips on the controller the steps whose result is already on the host.
  - B(Packages.) For each of O(packages), its installed version (from C(dpkg-query) or C(rpm)), or null.
  - B(Files.) For each of O(paths), whether it exists, whether it is a directory, a file or a link, its mode,
    owner and group, and the SHA-1 of a file's content (the checksum C(ansible.builtin.copy) and
    C(ansible.builtin.template) compare).
  - B(Contents.) For each of O(contents), the text of a small settings file, for the controller to compare
    with what a role would write.
  - B(Services.) For each of O(services), what C(systemctl is-active) and C(systemctl is-enabled) say.
  - B(Names.) For each of O(resolve), every address it resolves to on this host (as its kernel will see the
    connections of that host), or an empty list.
  - B(apt.) With O(apt_lists=true), how many package index files apt has (none on container images
    and minimal installs, which apt's own C(cache_valid_time) cannot tell from a fresh index).
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
  - llmops.vllm.attributes.read_only
options:
  packages:
    description: Names of packages.
    type: list
    elements: str
    default: []
  paths:
    description: Paths of files or directories.
    type: list
    elements: path
    default: []
  contents:
    description: Paths of small text files (64 KiB at most) to return the content of.
    type: list
    elements: path
    default: []
  services:
    description: Names of systemd units.
    type: list
    elements: str
    default: []
  resolve:
    description: Host names to resolve.
    type: list
    elements: str
    default: []
  apt_lists:
    description: Count apt's package index files.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Read the packages, files and service the docker role may change
  llmops.vllm.host_state:
    packages: [docker-ce, docker-ce-cli, containerd.io]
    paths: [/etc/apt/sources.list.d/docker.list]
    services: [docker]
    apt_lists: true
  register: __docker_host

- name: Remove the old source file only when it is there
  ansible.builtin.file:
    path: /etc/apt/sources.list.d/docker.list
    state: absent
  when: __docker_host.paths['/etc/apt/sources.list.d/docker.list'].exists
"""

RETURN = r"""
packages:
  description: The installed version of each of O(packages), null when it is not installed.
  returned: always
  type: dict
  sample: {docker-ce: "5:27.3.1-1~debian.12~bookworm", containerd.io: null}
paths:
  description: One entry per path of O(paths).
  returned: always
  type: dict
  sample:
    /etc/docker/registry/config.yml: {exists: true, isdir: false, isreg: true, islnk: false, mode: "0640",
                                      owner: root, group: docker-registry, checksum: 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed}
    /etc/apt/sources.list.d/docker.list: {exists: false}
contents:
  description: The text of each of O(contents); null when it is missing, unreadable, not UTF-8 or over 64 KiB.
  returned: always
  type: dict
  sample: {/etc/docker/daemon.json: "{\n  \"live-restore\": true\n}\n"}
services:
  description: What systemctl says of each of O(services); C(unknown) on a host without systemctl.
  returned: always
  type: dict
  sample: {docker: {active: active, enabled: enabled}}
resolved:
  description: The addresses each of O(resolve) resolves to, sorted; an empty list for a name that does not resolve.
  returned: always
  type: dict
  sample: {llmops-fleet-gpu1: ["172.18.0.6", "fd00::6"], nowhere.invalid: []}
apt_lists:
  description: How many of apt's package index files exist; 0 when O(apt_lists=false).
  returned: always
  type: int
  sample: 12
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmops.vllm.plugins.module_utils._host_state import (
    apt_lists,
    file_state,
    package_versions,
    resolve,
    service_states,
    text_of,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            packages=dict(type="list", elements="str", default=[]),
            paths=dict(type="list", elements="path", default=[]),
            contents=dict(type="list", elements="path", default=[]),
            services=dict(type="list", elements="str", default=[]),
            resolve=dict(type="list", elements="str", default=[]),
            apt_lists=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    module.exit_json(
        changed=False,
        packages=package_versions(module, module.params["packages"]),
        paths=dict((path, file_state(path)) for path in module.params["paths"]),
        contents=dict((path, text_of(path)) for path in module.params["contents"]),
        services=service_states(module, module.params["services"]),
        resolved=resolve(module.params["resolve"]),
        apt_lists=apt_lists() if module.params["apt_lists"] else 0,
    )


if __name__ == "__main__":
    main()
