# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# This module_utils is PRIVATE to the collection. It can change without notice
# and must not be used by anything outside llmops.vllm.
#
# Asking the Hugging Face Hub (or a mirror) what a model is, before any host downloads it: the
# commit its revision names, whether this token may read its files, its config.json and the size of
# its weights. A few KB per model: the config files, the safetensors index and the file list, never
# a weight. Needs huggingface_hub where it runs (the control node).

from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import adapter_config_summary
from ansible_collections.llmops.vllm.plugins.module_utils._hf_config import (
    SAFETENSORS_INDEX,
    index_total_size,
    model_config_summary,
    weight_files,
)

# huggingface_hub reads these when it is imported: no progress bars on a module's stderr.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The one import of huggingface_hub for the collection's modules (hf_model_config, hf_model_fetch): they
# say HF_IMPORT_ERROR's install command before they use any of these names.
try:
    import httpx2
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    HF_IMPORT_ERROR = None
except ImportError:
    HF_IMPORT_ERROR = traceback.format_exc()
    httpx2 = HfApi = constants = hf_hub_download = snapshot_download = RepoFile = filter_repo_objects = None
    EntryNotFoundError = GatedRepoError = HfHubHTTPError = LocalEntryNotFoundError = OfflineModeIsEnabled = None
    RepositoryNotFoundError = RevisionNotFoundError = None

# what hf_model_fetch takes from here besides Asker's own names
__all__ = ["HF_IMPORT_ERROR", "HUB_OPTIONS", "Asker", "EntryNotFoundError", "GatedRepoError", "HfApi", "HfHubHTTPError",
           "LocalEntryNotFoundError", "OfflineModeIsEnabled", "RepositoryNotFoundError", "RevisionNotFoundError",
           "constants", "filter_repo_objects", "hf_hub_download", "httpx2", "snapshot_download", "GATED", "NOT_FOUND",
           "REVISION", "TOKEN", "UNREACHABLE", "NO_CONFIG", "OTHER", "UNAVAILABLE"]

# The options naming the hub and the token, of hf_model_config and hf_model_fetch: documented by the doc
# fragment llmops.vllm.hf_hub.
HUB_OPTIONS = dict(
    endpoint=dict(type="str"),
    token=dict(type="str", no_log=True),
)

# A LoRA adapter's config (a repository without config.json, docs/lora.md).
ADAPTER_CONFIG = "adapter_config.json"

# What a failed question means, for the preflight's refusals (vllm_preflight.vllm_model_problems).
GATED, NOT_FOUND, REVISION, TOKEN, UNREACHABLE, NO_CONFIG, OTHER, UNAVAILABLE = (
    "gated", "not_found", "revision", "token_rejected", "unreachable", "no_config", "other", "unavailable")


class Asker(object):
    def __init__(self, endpoint=None, token=None, cache_dir=None):
        self.cache_dir = cache_dir or None
        self.endpoint = (endpoint or "").rstrip("/") or None
        self.where = self.endpoint or constants.ENDPOINT
        self.token = token or None
        self.api = HfApi(endpoint=self.endpoint, token=self.token, library_name="llmops.vllm")

    def words(self, error):
        """The hub's own words, on one line, never the token."""
        text = str(getattr(error, "server_message", None) or error)
        if self.token:
            text = text.replace(self.token, "********")
        return " ".join(text.split())[:400]

    def failure(self, entry, error):
        """entry with problem, status and the hub's words for an error of a request."""
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, GatedRepoError):
            kind = GATED
        elif isinstance(error, RevisionNotFoundError):
            kind = REVISION
        elif isinstance(error, RepositoryNotFoundError):
            kind = NOT_FOUND
        elif isinstance(error, EntryNotFoundError):
            kind = NO_CONFIG
        elif isinstance(error, (OfflineModeIsEnabled, httpx2.TransportError)) or (status or 0) >= 500:
            kind = UNREACHABLE
        elif status == 401:
            kind = TOKEN
        else:
            kind = OTHER
        entry.update(problem=kind, status=status or 0, error=self.words(error) or type(error).__name__)
        return entry

    def ask(self, model, revision):
        entry = {"model": model, "revision": revision, "commit": "", "gated": False, "config": {}, "generation_config": {},
                 "weights_bytes": 0, "files": 0, "problem": "", "status": 0, "error": "", "endpoint": self.where,
                 "token": bool(self.token)}
        # the small files go into the cache the download will complete (its files then come once), or nowhere
        scratch = self.cache_dir or tempfile.mkdtemp(prefix="llmops-hf-config-")
        try:
            info = self.api.repo_info(repo_id=model, revision=revision, token=self.token)
            entry["commit"] = info.sha or ""
            entry["gated"] = bool(getattr(info, "gated", False))
            ref = entry["commit"] or revision
            tree = self.api.list_repo_tree(model, revision=ref, recursive=True, token=self.token)
            sizes = dict((f.path, f.size or 0) for f in tree if isinstance(f, RepoFile))
            entry["files"] = len(sizes)
            # a LoRA adapter (docs/lora.md) has an adapter_config.json instead of a config.json
            if "config.json" not in sizes and ADAPTER_CONFIG in sizes:
                entry["adapter_config"] = adapter_config_summary(self.download(model, ref, ADAPTER_CONFIG, scratch))
                entry["weights_bytes"] = sum(s for p, s in sizes.items() if p.startswith("adapter_model."))
                return entry
            # the gate guards the files, not the metadata: this is where a token without access is refused
            config = self.download(model, ref, "config.json", scratch)
            entry["config"] = model_config_summary(config) if isinstance(config, dict) else {}
            if "generation_config.json" in sizes:
                generation = self.download(model, ref, "generation_config.json", scratch)
                entry["generation_config"] = generation if isinstance(generation, dict) else {}
            total = None
            if SAFETENSORS_INDEX in sizes:
                total = index_total_size(self.download(model, ref, SAFETENSORS_INDEX, scratch))
            entry["weights_bytes"] = total or sum(weight_files(sizes).values())
        except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError) as e:
            self.failure(entry, e)
        except (ValueError, OSError) as e:
            entry.update(problem=OTHER, error=self.words(e))
        finally:
            if scratch != self.cache_dir:
                shutil.rmtree(scratch, ignore_errors=True)
        return entry

    def download(self, model, revision, name, scratch):
        path = hf_hub_download(model, name, revision=revision, cache_dir=scratch, endpoint=self.endpoint, token=self.token,
                               library_name="llmops.vllm")
        with open(path) as f:
            return json.load(f)
