# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# The models and hub adapters the vllm_server role fetches before an instance starts.

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import adapters as lora_adapters


def vllm_downloads(instances, models_dir):
    """The instances that fetch their model before they start (a hub id, not a path inside the container).

    Each gets download_stamp: the file recording a finished download of its model and revision.
    """
    downloads = []
    for i in instances:
        if not i.get("download"):
            continue
        # A hub adapter (docs/lora.md) is fetched as a model is, at its pinned revision, before the server starts.
        fetched = []
        if not str(i["model"]).startswith("/"):
            fetched.append(dict(i, download_stamp=_download_stamp(models_dir, i["model"], i.get("revision", "main"))))
        for adapter in lora_adapters(i):
            if adapter["kind"] == "hub":
                fetched.append(dict(i, model=adapter["source"], revision=adapter["revision"], adapter=adapter["name"],
                                    download_stamp=_download_stamp(models_dir, adapter["source"], adapter["revision"])))
        downloads.extend(fetched)
    return downloads


def _download_stamp(models_dir, model, revision):
    return "%s/.downloaded/%s@%s" % (models_dir, str(model).replace("/", "--"), revision)


class FilterModule(object):
    def filters(self):
        return {
            "vllm_downloads": vllm_downloads,
        }
