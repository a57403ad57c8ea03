#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_daemon_config
short_description: Merge settings into Docker's daemon.json without losing anyone else's keys
version_added: 0.1.0
description:
  - Reads C(/etc/docker/daemon.json) (or O(path)), merges O(settings) into it and writes the
    result back only when the parsed content changes.
  - Keys that an administrator or another tool (for example C(nvidia-ctk runtime configure))
    wrote are kept. Nested objects such as C(runtimes), C(log-opts) or C(features) are merged
    key by key; lists and scalars given in O(settings) replace what the file had.
  - A key whose value in O(settings) is V(null) is removed from the file.
  - Formatting alone never counts as a change, so a file that another tool re-indented is not
    rewritten.
  - Before anything is written, the merged file is checked with C(dockerd --validate) when the
    installed C(dockerd) supports it (Docker Engine 23.0 and later).
  - A file that is not a JSON object is never overwritten; the module fails and says where the
    file is broken.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
options:
  path:
    description: Path of the daemon configuration file.
    type: path
    default: /etc/docker/daemon.json
  settings:
    description:
      - Keys to set, as they appear in C(daemon.json).
      - Dictionaries are merged recursively into what the file has; anything else replaces it.
      - V(null) removes the key.
    type: dict
    required: true
  list_options:
    description:
      - Entries to set in list-valued keys whose entries are C(NAME=VALUE) options, such as
        C(exec-opts) (C(native.cgroupdriver=cgroupfs)) or C(labels).
      - An entry replaces the file's entry with the same C(NAME); the file's other entries are kept,
        in their order. An entry without C(=) is added when the list does not have it.
      - Applied after O(settings).
    type: dict
    default: {}
  validate:
    description:
      - V(auto) runs C(dockerd --validate --config-file) on the merged file when the installed
        C(dockerd) knows that flag, and skips the check otherwise.
      - V(always) fails when C(dockerd) cannot validate; V(never) only checks that the result is JSON.
    type: str
    choices: [auto, always, never]
    default: auto
  dockerd_path:
    description: The dockerd binary used for validation. Looked up on C(PATH) when not given.
    type: path
  backup:
    description: Keep a time-stamped copy of the previous file next to it when it changes.
    type: bool
    default: false
  mode:
    description: File mode of a newly created or rewritten file.
    type: raw
    default: "0644"
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
notes:
  - Docker reads this file only at start-up, or on C(SIGHUP) (C(systemctl reload docker)) for the
    keys it can reload. Applying the change is the caller's job (a handler), as RV(apply) says.
seealso:
  - name: dockerd configuration file reference
    description: Every key Docker accepts in daemon.json.
    link: https://docs.docker.com/reference/cli/dockerd/#daemon-configuration-file
"""

EXAMPLES = r"""
- name: Use a registry mirror and keep containers running across daemon restarts
  llmops.vllm.docker_daemon_config:
    settings:
      registry-mirrors:
        - https://mirror.example.com
      live-restore: true
      log-opts:
        max-size: 100m
        max-file: "3"
  notify: Restart docker

- name: Register the NVIDIA runtime next to whatever runtimes exist
  llmops.vllm.docker_daemon_config:
    settings:
      runtimes:
        nvidia:
          path: nvidia-container-runtime
          args: []

- name: Use the cgroupfs cgroup driver, keeping any other exec-opts
  llmops.vllm.docker_daemon_config:
    settings: {}
    list_options:
      exec-opts:
        - native.cgroupdriver=cgroupfs

- name: Stop managing a key the collection set earlier
  llmops.vllm.docker_daemon_config:
    settings:
      data-root: null
"""

RETURN = r"""
config:
  description: The daemon configuration after the merge (what the file holds, or would hold in check mode).
  returned: success
  type: dict
  sample: {"live-restore": true, "registry-mirrors": ["https://mirror.example.com"]}
previous:
  description: The daemon configuration before the merge; empty when the file did not exist.
  returned: success
  type: dict
  sample: {"insecure-registries": ["10.0.0.5:5000"]}
changed_keys:
  description: Top-level keys whose value the merge added, changed or removed.
  returned: success
  type: list
  elements: str
  sample: ["registry-mirrors"]
apply:
  description:
    - What the daemon needs to pick the change up. V(none) when nothing changed; V(reload) when every
      changed key is one Docker reloads on C(SIGHUP) (C(debug), C(labels), C(live-restore),
      C(max-concurrent-downloads), C(max-concurrent-uploads), C(max-download-attempts),
      C(default-runtime), C(runtimes), C(authorization-plugins), C(insecure-registries),
      C(registry-mirrors), C(shutdown-timeout)); V(restart) otherwise.
  returned: success
  type: str
  sample: reload
live_restore_turned_on:
  description:
    - Whether the change turns C(live-restore) on. The running daemon does not have it yet, so a
      restart would stop the containers; reloading first (C(SIGHUP)) turns it on, and the restart
      that follows keeps them running.
  returned: success
  type: bool
  sample: false
validated:
  description: Whether C(dockerd --validate) checked the merged file.
  returned: success
  type: bool
  sample: true
backup_file:
  description: The copy of the previous file, when O(backup=true) and the file changed.
  returned: changed and backup requested
  type: str
  sample: /etc/docker/daemon.json.12345.2026-11-24@21:00:00~
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.llmops.vllm.plugins.module_utils._docker_daemon import (
    merge_settings,
    set_list_options,
)


# daemon.json keys dockerd applies on SIGHUP without a restart (docs: "Configuration reload behavior").
RELOADABLE = frozenset([
    "debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins",
    "insecure-registries", "registry-mirrors", "shutdown-timeout",
])


def how_to_apply(changed_keys):
    if not changed_keys:
        return "none"
    return "reload" if set(changed_keys) <= RELOADABLE else "restart"


def read_config(module, path):
    if not os.path.exists(path):
        return {}, None
    try:
        with open(path, "rb") as f:
            raw = f.read().decode("utf-8")
    except (IOError, OSError, UnicodeDecodeError) as e:
        module.fail_json(msg="Cannot read %s: %s" % (path, to_native(e)))
    if not raw.strip():
        return {}, raw
    try:
        data = json.loads(raw)
    except ValueError as e:
        module.fail_json(
            msg=(
                "%s is not valid JSON (%s). It was left as it is: fix or remove it by hand, "
                "then run again." % (path, to_native(e))
            )
        )
    if not isinstance(data, dict):
        module.fail_json(
            msg="%s holds a JSON %s, not an object. It was left as it is: Docker expects "
            "an object of settings there." % (path, type(data).__name__)
        )
    return data, raw


def render(config):
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def dockerd_validates(module, dockerd):
    rc, out, err = module.run_command([dockerd, "--help"])
    return rc == 0 and "--validate" in (out + err)


def validate(module, dockerd, content):
    fd, tmp = tempfile.mkstemp(prefix="daemon.json.", dir=module.tmpdir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        rc, out, err = module.run_command([dockerd, "--validate", "--config-file", tmp])
    finally:
        os.unlink(tmp)
    if rc != 0:
        # dockerd names the temporary file it was given, which means nothing to a person
        said = (err or out).strip().replace(
            "unable to configure the Docker daemon with file %s: " % tmp, ""
        ).replace(tmp, module.params["path"])
        module.fail_json(
            msg="dockerd rejected the merged configuration, so %s was not changed: %s"
            % (module.params["path"], said),
            rc=rc,
        )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/docker/daemon.json"),
            settings=dict(type="dict", required=True),
            list_options=dict(type="dict", default={}),
            validate=dict(type="str", choices=["auto", "always", "never"], default="auto"),
            dockerd_path=dict(type="path"),
            backup=dict(type="bool", default=False),
            mode=dict(type="raw", default="0644"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    current, raw = read_config(module, path)
    for key, entries in module.params["list_options"].items():
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            module.fail_json(msg="list_options.%s must be a list of NAME=VALUE strings" % key)
        if not isinstance(current.get(key, []), list):
            module.fail_json(msg="%s holds %s as a %s, not a list; fix it by hand, then run again."
                             % (path, key, type(current[key]).__name__))
    merged = set_list_options(merge_settings(current, module.params["settings"]), module.params["list_options"])
    changed = merged != current
    changed_keys = sorted(
        k for k in set(current) | set(merged) if current.get(k, object()) != merged.get(k, object())
    )
    content = render(merged)

    validated = False
    if changed and module.params["validate"] != "never":
        dockerd = module.params["dockerd_path"] or module.get_bin_path("dockerd")
        if dockerd and dockerd_validates(module, dockerd):
            validate(module, dockerd, content)
            validated = True
        elif module.params["validate"] == "always":
            module.fail_json(
                msg="validate=always, but %s cannot validate a configuration file "
                "(dockerd --validate needs Docker Engine 23.0 or later). Use validate=auto "
                "or install a newer Docker Engine." % (dockerd or "no dockerd on PATH")
            )

    result = dict(
        changed=changed,
        config=merged,
        previous=current,
        changed_keys=changed_keys,
        apply=how_to_apply(changed_keys),
        live_restore_turned_on=bool(merged.get("live-restore")) and not bool(current.get("live-restore")),
        validated=validated,
    )
    if module._diff:
        result["diff"] = dict(
            before=render(current) if raw is not None else "",
            after=content,
            before_header=path,
            after_header=path,
        )

    if changed and not module.check_mode:
        if module.params["backup"] and raw is not None:
            result["backup_file"] = module.backup_local(path)
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(prefix=".daemon.json.", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        module.atomic_move(tmp, path)
        module.set_mode_if_different(path, module.params["mode"], False)

    module.exit_json(**result)


if __name__ == "__main__":
    main()
