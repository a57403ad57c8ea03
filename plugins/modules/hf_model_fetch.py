#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_model_fetch
short_description: Download a model from the Hugging Face Hub or a mirror into a hub cache directory
version_added: 0.2.0
description:
  - Downloads one model repository at one revision with C(huggingface_hub)'s C(snapshot_download)
    into a Hugging Face hub cache directory, the layout vLLM reads (C(HF_HUB_CACHE)) - so the
    directory can then be copied as it is to the GPU hosts, and checked there with
    M(llmops.vllm.hf_cache_check).
  - Meant to run once per fleet, on the control node (C(delegate_to=localhost), C(run_once=true)) or on
    a host that fetches for the others.
  - The revision is resolved on the hub first (one small request). When the cache already holds
    every file of the resolved commit, nothing is downloaded and nothing changes.
  - When the hub cannot be reached, or with O(offline=true), the cached snapshot of the revision
    is used if it is complete, and the task fails otherwise.
  - Errors name the model and give the hub's own words - not found, gated (a token with access is
    needed), revision not found, token rejected, hub unreachable. The token never appears in them.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
  - llmops.vllm.hf_hub
  - llmops.vllm.hf_hub.model
options:
  cache_dir:
    description:
      - The hub cache directory to download into (the one holding C(models--<org>--<name>) folders;
        vLLM's C(HF_HUB_CACHE), by default C(~/.cache/huggingface/hub)). Created when missing.
    type: path
    required: true
  allow_patterns:
    description: Only files whose path matches one of these glob patterns are downloaded.
    type: list
    elements: str
  ignore_patterns:
    description: Files whose path matches one of these glob patterns are not downloaded.
    type: list
    elements: str
  offline:
    description:
      - Do not contact the hub; use the cached snapshot of O(revision), and fail when it is missing
        or incomplete (as C(HF_HUB_OFFLINE=1) does).
    type: bool
    default: false
  max_workers:
    description: Files downloaded at the same time.
    type: int
    default: 8
attributes:
  check_mode:
    support: full
    details:
      - Resolves the revision on the hub and reports which files would be downloaded (RV(downloaded),
        RV(downloaded_bytes)), with their sizes from the hub, without writing to O(cache_dir).
  diff_mode:
    support: full
    details: The commit O(revision) named in the cache before and after, and the files downloaded.
  idempotent:
    support: full
    details: When the revision still names the same commit on the hub.
seealso:
  - module: llmops.vllm.hf_cache_check
  - name: huggingface_hub, download files
    description: The client this module drives.
    link: https://huggingface.co/docs/huggingface_hub/guides/download
"""

EXAMPLES = r"""
- name: Download the model once, on the control node
  llmops.vllm.hf_model_fetch:
    repo_id: Qwen/Qwen2.5-7B-Instruct
    revision: main
    cache_dir: "{{ playbook_dir }}/.cache/huggingface/hub"
    endpoint: https://hf-mirror.com
    token: "{{ vllm_server_hf_token | default(omit) }}"
    allow_patterns: ["*.json", "*.safetensors", "tokenizer.*"]
  delegate_to: localhost
  run_once: true
  register: __fetched

- name: Use what the control node already has, without contacting the hub
  llmops.vllm.hf_model_fetch:
    repo_id: Qwen/Qwen2.5-7B-Instruct
    cache_dir: /srv/models/hub
    offline: true
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
commit:
  description: The commit the revision resolved to.
  returned: success
  type: str
  sample: 0a1b2c3d4e5f60718293a4b5c6d7e8f901234567
snapshot_path:
  description: The snapshot folder of that commit (what C(snapshot_download) returns).
  returned: success
  type: str
  sample: /srv/models/hub/models--Qwen--Qwen2.5-7B-Instruct/snapshots/0a1b2c3d4e5f60718293a4b5c6d7e8f901234567
repo_path:
  description: The model's folder in the cache, C(models--<org>--<name>), the one to copy to other hosts.
  returned: success
  type: str
  sample: /srv/models/hub/models--Qwen--Qwen2.5-7B-Instruct
files:
  description: The files of the snapshot that O(allow_patterns) and O(ignore_patterns) select, as paths in the repository.
  returned: success
  type: list
  elements: str
  sample: [config.json, model.safetensors, tokenizer.json]
bytes:
  description: Total size of RV(files).
  returned: success
  type: int
  sample: 15231233024
downloaded:
  description: The files downloaded by this run (in check mode - that would be downloaded).
  returned: success
  type: list
  elements: str
  sample: [model.safetensors]
downloaded_bytes:
  description: Total size of RV(downloaded).
  returned: success
  type: int
  sample: 15231000000
endpoint:
  description: The hub or mirror used.
  returned: success
  type: str
  sample: https://hf-mirror.com
source:
  description: V(hub) when the revision was resolved on the hub; V(cache) when the cached snapshot was used (O(offline), or hub unreachable).
  returned: success
  type: str
  sample: hub
"""

import os
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmops.vllm.plugins.module_utils._hf_cache import (
    COMMIT_RE,
    MODEL_OPTIONS,
    cache_state,
    read_ref,
    read_tree_manifest,
    repo_folder,
    snapshot_files,
)
from ansible_collections.llmops.vllm.plugins.module_utils._hf_hub import (
    HF_IMPORT_ERROR,
    HUB_OPTIONS,
    GatedRepoError,
    HfApi,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    constants,
    filter_repo_objects,
    httpx2,
    snapshot_download,
)

TOKEN_HINT = "set the token (vllm_server_hf_token in the vllm_server role)"
ENDPOINT_HINT = "check the endpoint (vllm_server_hf_endpoint in the vllm_server role) and the network"


class FetchError(Exception):
    pass


class Fetch(object):
    def __init__(self, params, check_mode):
        self.p = params
        self.check_mode = check_mode
        self.repo_id, self.revision = params["repo_id"], params["revision"]
        self.cache_dir = os.path.abspath(params["cache_dir"])
        self.storage = repo_folder(self.cache_dir, self.repo_id)
        self.endpoint = (params["endpoint"] or "").rstrip("/") or None
        self.where = self.endpoint or constants.ENDPOINT
        self.token = params["token"] or None
        self.warnings = []

    def words(self, text):
        """Text for a message: never the token."""
        text = str(text)
        if self.token:
            text = text.replace(self.token, "********")
        return " ".join(text.split())

    def hub_words(self, error):
        server = getattr(error, "server_message", None)
        return self.words(server or error)

    def model(self):
        return "model %s (revision %s)" % (self.repo_id, self.revision)

    def http_error(self, error):
        """A FetchError in the hub's words for an HTTP error the hub answered with."""
        status = getattr(getattr(error, "response", None), "status_code", None)
        said = self.hub_words(error)
        if isinstance(error, GatedRepoError):
            return FetchError("%s on %s is gated and this request has no access: the hub says \"%s\" (HTTP %s). "
                              "Ask for access on the model's page and %s to a token of an account that has it."
                              % (self.model(), self.where, said, status, TOKEN_HINT))
        if isinstance(error, RevisionNotFoundError):
            return FetchError("%s: the revision was not found on %s: the hub says \"%s\" (HTTP %s). "
                              "Use a branch, tag or commit of the model." % (self.model(), self.where, said, status))
        if isinstance(error, RepositoryNotFoundError):
            return FetchError("%s was not found on %s: the hub says \"%s\" (HTTP %s). Check the model's name; "
                              "for a private model, %s." % (self.model(), self.where, said, status, TOKEN_HINT))
        if status == 401:
            return FetchError("%s: %s rejected the token: the hub says \"%s\" (HTTP 401); %s to a valid token."
                              % (self.model(), self.where, said, TOKEN_HINT))
        return FetchError("%s: %s answered HTTP %s: \"%s\"." % (self.model(), self.where, status, said))

    # -- the steps ----------------------------------------------------------------------------------
    def resolve(self):
        """The commit the revision names on the hub; None when the hub is not reachable (reason in self.offline_cause)."""
        self.offline_cause = None
        if self.p["offline"]:
            self.offline_cause = "offline is set"
            return None
        api = HfApi(endpoint=self.endpoint, token=self.token, library_name="llmops.vllm")
        try:
            info = api.repo_info(repo_id=self.repo_id, revision=self.revision, token=self.token)
        except OfflineModeIsEnabled:
            self.offline_cause = "HF_HUB_OFFLINE is set"
            return None
        except httpx2.TransportError as e:
            self.offline_cause = "could not reach %s: %s (%s)" % (self.where, self.words(e) or "no answer", type(e).__name__)
            return None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", 0)
            if status >= 500:
                self.offline_cause = "%s answered HTTP %s: %s" % (self.where, status, self.hub_words(e))
                return None
            raise self.http_error(e)
        if not info.sha or not COMMIT_RE.match(info.sha):
            raise FetchError("%s: %s answered without a commit for the revision; is it a Hugging Face Hub "
                             "endpoint? %s." % (self.model(), self.where, ENDPOINT_HINT))
        return info.sha

    def selected(self, commit):
        """{path: size} of the files of the commit that the patterns select, from the tree the client cached."""
        manifest = read_tree_manifest(self.storage, commit)
        if manifest is None:
            manifest = snapshot_files(self.storage, commit)
        names = filter_repo_objects(items=sorted(manifest), allow_patterns=self.p["allow_patterns"],
                                    ignore_patterns=self.p["ignore_patterns"])
        return dict((n, manifest[n]) for n in names)

    def from_cache(self):
        """The cached snapshot when the hub is not used; it must be complete."""
        try:
            path = snapshot_download(self.repo_id, revision=self.revision, cache_dir=self.cache_dir,
                                     local_files_only=True, allow_patterns=self.p["allow_patterns"],
                                     ignore_patterns=self.p["ignore_patterns"])
        except LocalEntryNotFoundError as e:
            if self.p["offline"]:
                raise FetchError("%s is not complete in %s and offline is set, so it cannot be downloaded: %s"
                                 % (self.model(), self.cache_dir, self.words(e)))
            raise FetchError("%s: %s, and the model is not complete in %s to use instead; %s."
                             % (self.model(), self.offline_cause, self.cache_dir, ENDPOINT_HINT))
        commit = os.path.basename(path)
        if not self.p["offline"]:
            self.warnings.append("%s: %s; used the snapshot cached in %s (commit %s), which may be older than "
                                 "the hub's." % (self.model(), self.offline_cause, self.cache_dir, commit))
        files = self.selected(commit)
        return self.result(commit, files, {}, "cache", {})

    def download(self, commit):
        before = cache_state(self.storage, self.revision)
        try:
            path = snapshot_download(self.repo_id, revision=commit, cache_dir=self.cache_dir, endpoint=self.endpoint,
                                     token=self.token, allow_patterns=self.p["allow_patterns"],
                                     ignore_patterns=self.p["ignore_patterns"], max_workers=self.p["max_workers"],
                                     library_name="llmops.vllm")
        except HfHubHTTPError as e:
            raise self.http_error(e)
        except LocalEntryNotFoundError as e:
            raise FetchError("%s: a download from %s failed: %s; %s."
                             % (self.model(), self.where, self.words(e), ENDPOINT_HINT))
        except (httpx2.TransportError, OSError) as e:
            raise FetchError("%s: downloading into %s failed: %s (%s)"
                             % (self.model(), self.cache_dir, self.words(e), type(e).__name__))
        if os.path.basename(path) != commit:
            raise FetchError("%s: huggingface_hub returned %s, not the snapshot of commit %s" % (self.model(), path, commit))
        # snapshot_download records refs/<revision> only when it resolves the revision itself.
        if not COMMIT_RE.match(self.revision) and read_ref(self.storage, self.revision) != commit:
            ref = os.path.join(self.storage, "refs", self.revision)
            if not os.path.realpath(ref).startswith(os.path.realpath(os.path.join(self.storage, "refs")) + os.sep):
                raise FetchError("%s: the revision is not a valid ref name" % self.model())
            os.makedirs(os.path.dirname(ref), exist_ok=True)
            with open(ref + ".tmp", "w") as f:
                f.write(commit)
            os.replace(ref + ".tmp", ref)
        after = cache_state(self.storage, self.revision)
        files = self.selected(commit)
        new_blobs = set(after["blobs"]) - set(before["blobs"])
        downloaded = {}
        for name in files:
            target = os.path.realpath(os.path.join(path, name))
            if os.path.basename(target) in new_blobs:
                downloaded[name] = files[name]
        return self.result(commit, files, downloaded, "hub", {"changed": before != after, "ref_before": before["ref"]})

    def dry_run(self, commit):
        try:
            infos = snapshot_download(self.repo_id, revision=commit, cache_dir=self.cache_dir, endpoint=self.endpoint,
                                      token=self.token, allow_patterns=self.p["allow_patterns"],
                                      ignore_patterns=self.p["ignore_patterns"], max_workers=self.p["max_workers"],
                                      library_name="llmops.vllm", dry_run=True)
        except HfHubHTTPError as e:
            raise self.http_error(e)
        except (LocalEntryNotFoundError, httpx2.TransportError, OSError) as e:
            raise FetchError("%s: asking %s what to download failed: %s; %s."
                             % (self.model(), self.where, self.words(e), ENDPOINT_HINT))
        files = dict((i.filename, i.file_size) for i in infos)
        downloaded = dict((i.filename, i.file_size) for i in infos if i.will_download)
        ref_before = read_ref(self.storage, self.revision)
        ref_changes = not COMMIT_RE.match(self.revision) and ref_before != commit
        return self.result(commit, files, downloaded, "hub", {"changed": bool(downloaded) or ref_changes,
                                                              "ref_before": ref_before})

    def result(self, commit, files, downloaded, source, extra):
        out = {
            "changed": extra.get("changed", False),
            "commit": commit,
            "snapshot_path": os.path.join(self.storage, "snapshots", commit),
            "repo_path": self.storage,
            "files": sorted(files),
            "bytes": sum(s or 0 for s in files.values()),
            "downloaded": sorted(downloaded),
            "downloaded_bytes": sum(s or 0 for s in downloaded.values()),
            "endpoint": self.where,
            "source": source,
        }
        if out["changed"]:
            out["diff"] = {
                "before": {"commit": extra.get("ref_before") or "", "downloaded": []},
                "after": {"commit": commit, "downloaded": out["downloaded"]},
                "before_header": "%s refs/%s" % (self.storage, self.revision),
                "after_header": "%s refs/%s" % (self.storage, self.revision),
            }
        return out

    def run(self):
        commit = self.resolve()
        if commit is None:
            return self.from_cache()
        if self.check_mode:
            return self.dry_run(commit)
        return self.download(commit)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **MODEL_OPTIONS,
            cache_dir=dict(type="path", required=True),
            **HUB_OPTIONS,
            allow_patterns=dict(type="list", elements="str"),
            ignore_patterns=dict(type="list", elements="str"),
            offline=dict(type="bool", default=False),
            max_workers=dict(type="int", default=8),
        ),
        supports_check_mode=True,
    )
    if HF_IMPORT_ERROR is not None:
        module.fail_json(
            msg="hf_model_fetch needs the Python library huggingface_hub where it runs: `pip install huggingface_hub` "
                "(2.4.0 is the version tested) into the Python that runs modules on the control node (%s), or "
                "delegate the task to a host that has it." % sys.executable,
            exception=HF_IMPORT_ERROR)
    fetch = Fetch(module.params, module.check_mode)
    try:
        result = fetch.run()
    except FetchError as e:
        module.fail_json(msg=str(e))
    for warning in fetch.warnings:
        module.warn(warning)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
