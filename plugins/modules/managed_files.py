#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: managed_files
short_description: Several directories and small files with given content, owner and mode, in one module call
version_added: 0.1.0
description:
  - Creates each directory of O(directories) and writes each file of O(files) whose content differs, then sets the
    owner, group and mode of each where they differ, as C(ansible.builtin.file) and C(ansible.builtin.copy) with
    C(content) do, but in one round trip to the host for all of them (each of those tasks is one or two, per path).
  - A file is replaced atomically (written next to it, then renamed), so a reader sees the old or the new content.
  - Returns the files that changed (RV(changed_files)) and the labels given to them (RV(changed_labels)), so that
    only what reads a changed file restarts.
  - Holds every content in its arguments; run the task with C(no_log) for files that hold secrets (the role writes
    its secrets files in a task of their own).
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
attributes:
  check_mode:
    support: full
    details: Reports what it would change and changes nothing.
  diff_mode:
    support: full
    details: The content before and after of each file that changes, and each directory created.
  idempotent:
    support: full
options:
  owner:
    description: The owner of each directory and file that names none.
    type: str
  group:
    description: The group of each directory and file that names none.
    type: str
  directory_mode:
    description: The mode of each directory that names none.
    type: raw
  directories:
    description: Directories to create where they are missing (parents too), each with the attributes given.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The directory.
        type: path
        required: true
      owner:
        description: Its owner.
        type: str
      group:
        description: Its group.
        type: str
      mode:
        description: Its mode, as C(ansible.builtin.file) takes it (C("0755")).
        type: raw
  files:
    description: Files to write, after the directories are created.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The file.
        type: path
        required: true
      content:
        description: Its whole content, written as UTF-8.
        type: str
        required: true
      owner:
        description: Its owner.
        type: str
      group:
        description: Its group.
        type: str
      mode:
        description: Its mode, as C(ansible.builtin.copy) takes it (C("0640")).
        type: raw
      label:
        description: A name returned in RV(changed_labels) when this file changes (the role's instance name).
        type: str
seealso:
  - module: ansible.builtin.copy
  - module: ansible.builtin.file
"""

EXAMPLES = r"""
- name: Write two instances' configs in one call
  llmops.vllm.managed_files:
    directories:
      - {path: /opt/vllm/configs, owner: root, group: root, mode: "0750"}
    files:
      - {path: /opt/vllm/configs/a.yaml, content: "port: 8000\n", owner: root, group: root, mode: "0640", label: a}
      - {path: /opt/vllm/configs/b.yaml, content: "port: 8001\n", owner: root, group: root, mode: "0640", label: b}
  register: written

- name: Restart only the instances whose files changed
  ansible.builtin.debug:
    msg: "{{ written.changed_labels }}"
"""

RETURN = r"""
changed_files:
  description: The files of O(files) whose content or attributes changed (or would, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["/opt/vllm/configs/a.yaml"]
changed_labels:
  description: The labels of those files, each once, in the order of O(files).
  returned: always
  type: list
  elements: str
  sample: ["a"]
changed_directories:
  description: The directories of O(directories) created or whose attributes changed (or would, in check mode).
  returned: always
  type: list
  elements: str
  sample: []
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes


def _attributes(module, entry, default_mode=None):
    params = module.params
    return module.load_file_common_arguments({
        "path": entry["path"], "owner": entry.get("owner") or params["owner"], "group": entry.get("group") or params["group"],
        "mode": entry.get("mode") if entry.get("mode") is not None else default_mode})


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def ensure_directory(module, entry, diffs):
    """Whether the directory was (or in check mode would be) created or changed."""
    path = entry["path"]
    created = False
    if not os.path.isdir(path):
        if os.path.lexists(path):
            module.fail_json(msg="%s exists and is not a directory: remove it, or name another path." % path)
        diffs.append({"before_header": path, "after_header": path,
                      "before": {"path": path, "state": "absent"}, "after": {"path": path, "state": "directory"}})
        if module.check_mode:
            return True
        os.makedirs(path)
        created = True
    return module.set_fs_attributes_if_different(_attributes(module, entry, module.params["directory_mode"]), created)


def ensure_file(module, entry, diffs):
    """Whether the file was (or in check mode would be) written or its attributes changed."""
    path = entry["path"]
    wanted = to_bytes(entry["content"], errors="surrogate_or_strict")
    before = _read(path)
    written = before != wanted
    if written:
        diffs.append({"before_header": path, "after_header": path,
                      "before": "" if before is None else before.decode("utf-8", "replace"),
                      "after": entry["content"]})
        if module.check_mode:
            return True
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            module.fail_json(msg="Cannot write %s: its directory %s does not exist." % (path, directory))
        # mkstemp creates the file readable by its owner only, so a secret is never readable by others on its way
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(wanted)
            module.set_fs_attributes_if_different(dict(_attributes(module, entry), path=tmp), False)
            os.rename(tmp, path)
        except Exception:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return module.set_fs_attributes_if_different(_attributes(module, entry), written)


def main():
    attrs = dict(path=dict(type="path", required=True), owner=dict(type="str"), group=dict(type="str"),
                 mode=dict(type="raw"))
    module = AnsibleModule(
        argument_spec=dict(
            owner=dict(type="str"),
            group=dict(type="str"),
            directory_mode=dict(type="raw"),
            directories=dict(type="list", elements="dict", default=[], options=attrs),
            files=dict(type="list", elements="dict", default=[],
                       options=dict(attrs, content=dict(type="str", required=True), label=dict(type="str"))),
        ),
        supports_check_mode=True,
    )
    diffs = []
    changed_directories = [d["path"] for d in module.params["directories"] if ensure_directory(module, d, diffs)]
    changed_files, changed_labels = [], []
    for entry in module.params["files"]:
        if ensure_file(module, entry, diffs):
            changed_files.append(entry["path"])
            if entry.get("label") and entry["label"] not in changed_labels:
                changed_labels.append(entry["label"])
    result = dict(changed=bool(changed_directories or changed_files), changed_files=changed_files,
                  changed_labels=changed_labels, changed_directories=changed_directories)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
