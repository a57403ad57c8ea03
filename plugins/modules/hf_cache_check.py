#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_cache_check
short_description: Check that a model in a Hugging Face hub cache directory is complete and intact
version_added: 0.2.0
description:
  - Verifies, read-only, one model revision in a Hugging Face hub cache directory (the layout
    C(huggingface_hub) and vLLM read, under C(HF_HUB_CACHE)), typically on a GPU host after the
    model was copied there from the host that downloaded it (M(llmops.vllm.hf_model_fetch)).
  - B(Revision.) O(revision) is a commit hash with a snapshot, or C(refs/<revision>) exists and
    names a commit whose C(snapshots/<commit>) folder exists.
  - B(Layout.) Every file of the snapshot is a symlink that resolves to a file directly in the
    model's C(blobs/) folder.
  - B(Content.) Every blob matches its name, as the hub client names blobs - 64 hex digits, the
    sha256 of the content (LFS files); 40 hex digits, the git blob sha1
    (sha1 of C(blob <size>\\0) followed by the content) of other files. With O(checksum=false)
    only the sizes are compared with what is expected.
  - B(Completeness.) The files of O(expected_files) and, when the cache has it,
    C(trees/<commit>.json) (the file list huggingface_hub 2.4 writes when it downloads), are all in
    the snapshot, with the sizes recorded there.
  - Runs with the standard library only; huggingface_hub is not needed on the host.
  - Fails listing every bad file and what is wrong with it, and says what to do - delete the
    model's folder in the cache and run the play again, so that it is copied or downloaded anew.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
  - llmops.vllm.attributes.read_only
  - llmops.vllm.hf_hub.model
options:
  cache_dir:
    description: The hub cache directory (the one holding C(models--<org>--<name>) folders).
    type: path
    required: true
  expected_files:
    description:
      - Files that must be in the snapshot, as paths in the repository (for example the RV(llmops.vllm.hf_model_fetch#module:files)
        of the download this copy comes from). Files of C(trees/<commit>.json) are expected too.
    type: list
    elements: str
    default: []
  checksum:
    description:
      - Hash every blob and compare it with its name. Reads every byte of the model (about a
        second per GB); V(false) checks the layout and the sizes only.
    type: bool
    default: true
notes:
  - Never reports a change.
seealso:
  - module: llmops.vllm.hf_model_fetch
"""

EXAMPLES = r"""
- name: Check the copy of the model on the GPU host
  llmops.vllm.hf_cache_check:
    cache_dir: /data/vllm/models/hub
    repo_id: Qwen/Qwen2.5-7B-Instruct
    revision: main
    expected_files: "{{ __fetched.files }}"

- name: Layout and sizes only, for a large model checked on every run
  llmops.vllm.hf_cache_check:
    cache_dir: /data/vllm/models/hub
    repo_id: meta-llama/Llama-3.1-70B-Instruct
    checksum: false
"""

RETURN = r"""
commit:
  description: The commit the revision names in the cache.
  returned: when the revision resolves
  type: str
  sample: 0a1b2c3d4e5f60718293a4b5c6d7e8f901234567
snapshot_path:
  description: The snapshot folder.
  returned: when the revision resolves
  type: str
  sample: /data/vllm/models/hub/models--Qwen--Qwen2.5-7B-Instruct/snapshots/0a1b2c3d4e5f60718293a4b5c6d7e8f901234567
files:
  description: The good files of the snapshot, as paths in the repository.
  returned: always
  type: list
  elements: str
  sample: [config.json, model.safetensors, tokenizer.json]
bytes:
  description: Total size of the good files.
  returned: always
  type: int
  sample: 15231233024
manifest:
  description:
    - Where the list of expected files came from - V(trees) (C(trees/<commit>.json)), V(expected_files),
      both (V(trees+expected_files)), or V(none) (only the files present were checked).
  returned: always
  type: str
  sample: trees
bad_files:
  description: The files that failed, each with what is wrong.
  returned: always
  type: list
  elements: dict
  sample: [{file: model.safetensors, problem: "blob 3f9a... does not match its sha256 (1048576 bytes; truncated or corrupt)"}]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmops.vllm.plugins.module_utils._hf_cache import (
    MODEL_OPTIONS,
    check_snapshot,
    read_tree_manifest,
    repo_folder,
    resolve_commit,
)


def check(params):
    """(result, failure message or None) for the module's parameters."""
    repo_id, revision = params["repo_id"], params["revision"]
    storage = repo_folder(os.path.abspath(params["cache_dir"]), repo_id)
    result = {"changed": False, "files": [], "bytes": 0, "bad_files": [], "manifest": "none"}
    what = "model %s (revision %s) in %s" % (repo_id, revision, params["cache_dir"])
    fix = "Delete %s and run again, so that the model is copied or downloaded anew." % storage
    if not os.path.isdir(storage):
        return result, "%s: the model is not in the cache (%s does not exist)." % (what, storage)
    commit = resolve_commit(storage, revision)
    if commit is None:
        return result, "%s: refs/%s is missing, so the cache does not say which commit it is. %s" % (what, revision, fix)
    snapshot = os.path.join(storage, "snapshots", commit)
    if not os.path.isdir(snapshot):
        return result, "%s: refs/%s names commit %s, whose snapshot folder is missing. %s" % (what, revision, commit, fix)
    result.update(commit=commit, snapshot_path=snapshot)

    expected, sources = {}, []
    manifest = read_tree_manifest(storage, commit)
    if manifest is not None:
        expected.update(manifest)
        sources.append("trees")
    if params["expected_files"]:
        for path in params["expected_files"]:
            expected.setdefault(path, None)
        sources.append("expected_files")
    result["manifest"] = "+".join(sources) or "none"

    files, problems = check_snapshot(storage, commit, expected if sources else None, checksum=params["checksum"])
    result.update(files=sorted(files), bytes=sum(files.values()), bad_files=problems)
    if problems:
        listing = "; ".join("%s %s" % (p["file"], p["problem"]) for p in problems)
        return result, "%s, commit %s: %d bad file%s: %s. %s" % (
            what, commit, len(problems), "" if len(problems) == 1 else "s", listing, fix)
    if not files:
        return result, "%s, commit %s: the snapshot holds no file. %s" % (what, commit, fix)
    return result, None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            cache_dir=dict(type="path", required=True),
            **MODEL_OPTIONS,
            expected_files=dict(type="list", elements="str", default=[]),
            checksum=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    result, failure = check(module.params)
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
