#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_prefetch
short_description: Pull images through a registry pull-through cache once, so the cache holds them
version_added: 0.2.0
description:
  - Runs on the host of a CNCF Distribution pull-through cache and asks the cache, through the
    registry API, for the manifest and every blob of each image, as C(docker pull) would. The cache
    fetches what it does not hold from its upstream and stores it.
  - Distribution goes upstream once per request for a blob it is still fetching, so GPU hosts that
    pull the same new image at the same moment would each make it come from upstream. Prefetching
    first makes their pulls cache hits.
  - A blob counts as cached when its data file is in O(storage_dir) (Distribution's filesystem
    layout); the module is changed when it had to fetch one.
  - Distribution 2.8 answers a request for a blob it does not hold by fetching it from upstream
    twice, once to store it and once to stream it to the client. The module hangs up as soon as
    the answer starts and waits for the stored copy, so upstream sends each blob once (plus what
    the stopped stream had read ahead, about a megabyte).
  - Only Docker Hub references make sense here (Docker sends only those to a mirror); a reference
    naming another registry is refused.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
options:
  url:
    description: The cache's base URL as seen from this host, for example V(http://127.0.0.1:5000).
    type: str
    required: true
  images:
    description: Docker Hub image references (V(vllm/vllm-openai:v0.32.0), V(registry:2.8.3), V(name@sha256:...)).
    type: list
    elements: str
    required: true
  platform:
    description: The platform taken from a multi-platform index, as V(os/architecture[/variant]).
    type: str
    default: linux/amd64
  storage_dir:
    description: The cache's storage root directory (C(storage.filesystem.rootdirectory)).
    type: path
    required: true
  validate_certs:
    description: Check the cache's TLS certificate (off for a cache reached at 127.0.0.1 with a certificate for its name).
    type: bool
    default: true
  timeout:
    description: Seconds each request may take (a blob of several GB is fetched from upstream first).
    type: int
    default: 3600
attributes:
  check_mode:
    support: full
    details: Reads manifests and reports the blobs that are not cached yet, without fetching them.
  diff_mode:
    support: none
  idempotent:
    support: full
"""

EXAMPLES = r"""
- name: Pull the vLLM image through the cache once
  llmops.vllm.registry_prefetch:
    url: http://127.0.0.1:5000
    images: [vllm/vllm-openai:v0.32.0]
    storage_dir: /data/registry-cache
"""

RETURN = r"""
images:
  description: What was found for each image.
  returned: always
  type: list
  elements: dict
  sample: [{image: vllm/vllm-openai:v0.32.0, repository: vllm/vllm-openai, manifest: "sha256:ab...", blobs: 12, bytes: 9876543210, fetched: 12}]
fetched_bytes:
  description: Bytes of the blobs that were not cached and were fetched (or, in check mode, would be).
  returned: always
  type: int
  sample: 9876543210
"""

import hashlib
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


def parse_reference(image):
    """A Docker Hub reference as (repository, tag or digest); None when it names another registry."""
    name, ref = image, "latest"
    if "@" in name:
        name, ref = name.split("@", 1)
    else:
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, ref = name.rsplit(":", 1)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if parts[0] not in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            return None
        parts = parts[1:]
    if len(parts) == 1:
        parts = ["library"] + parts
    return "/".join(parts), ref


def blob_cached(storage_dir, digest):
    algorithm, hexdigest = digest.split(":", 1)
    return os.path.isfile(os.path.join(storage_dir, "docker", "registry", "v2", "blobs", algorithm, hexdigest[:2], hexdigest, "data"))


def platform_matches(entry, platform):
    wanted = platform.split("/")
    have = entry.get("platform", {})
    found = [have.get("os", ""), have.get("architecture", "")] + ([have["variant"]] if have.get("variant") and len(wanted) > 2 else [])
    return found == wanted


class Prefetch:
    def __init__(self, module):
        self.module = module
        self.url = module.params["url"].rstrip("/")

    def get(self, path, accept=None):
        headers = {"Accept": accept} if accept else {}
        return open_url(self.url + path, headers=headers, validate_certs=self.module.params["validate_certs"],
                        timeout=self.module.params["timeout"])

    def manifest(self, repository, ref):
        response = self.get("/v2/%s/manifests/%s" % (repository, ref), MANIFEST_TYPES)
        body = response.read()
        digest = response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        return digest, response.headers.get("Content-Type", ""), json.loads(body)

    def start_blob(self, repository, digest):
        """Ask the cache for a blob and hang up at once: Distribution 2.8 then stores it from upstream
        in the background while its own copy for this client stops, so upstream sends it once
        (reading the whole answer would make Distribution fetch it twice: once to store, once to serve)."""
        response = self.get("/v2/%s/blobs/%s" % (repository, digest))
        response.read(1)
        response.close()

    def wait_stored(self, blobs):
        deadline = time.monotonic() + self.module.params["timeout"]
        storage = self.module.params["storage_dir"]
        while True:
            waiting = [b["digest"] for b in blobs if not blob_cached(storage, b["digest"])]
            if not waiting:
                return
            if time.monotonic() > deadline:
                self.module.fail_json(msg="The cache did not store %s within %d s (timeout); see journalctl -u docker-registry on "
                                          "the cache host." % (", ".join(waiting), self.module.params["timeout"]))
            time.sleep(1)

    def image(self, image):
        parsed = parse_reference(image)
        if parsed is None:
            self.module.fail_json(msg="%s names a registry other than Docker Hub: Docker sends only Docker Hub pulls to "
                                      "registry-mirrors, so a pull-through cache of Docker Hub cannot serve it." % image)
        repository, ref = parsed
        digest, media_type, manifest = self.manifest(repository, ref)
        if media_type in INDEX_TYPES or manifest.get("manifests"):
            chosen = [m for m in manifest.get("manifests", []) if platform_matches(m, self.module.params["platform"])]
            if not chosen:
                self.module.fail_json(msg="%s has no image for platform %s (it has %s)." % (
                    image, self.module.params["platform"],
                    ", ".join(sorted("%s/%s" % (m.get("platform", {}).get("os"), m.get("platform", {}).get("architecture"))
                                     for m in manifest.get("manifests", [])))))
            digest, media_type, manifest = self.manifest(repository, chosen[0]["digest"])
        blobs = [manifest["config"]] + manifest.get("layers", [])
        missing = [b for b in blobs if not blob_cached(self.module.params["storage_dir"], b["digest"])]
        if not self.module.check_mode:
            for blob in missing:
                self.start_blob(repository, blob["digest"])
            self.wait_stored(missing)
        return {
            "image": image, "repository": repository, "manifest": digest, "blobs": len(blobs),
            "bytes": sum(b.get("size", 0) for b in blobs), "fetched": len(missing),
            "fetched_bytes": sum(b.get("size", 0) for b in missing),
        }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            images=dict(type="list", elements="str", required=True),
            platform=dict(type="str", default="linux/amd64"),
            storage_dir=dict(type="path", required=True),
            validate_certs=dict(type="bool", default=True),
            timeout=dict(type="int", default=3600),
        ),
        supports_check_mode=True,
    )
    if not re.match(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$", module.params["platform"]):
        module.fail_json(msg="platform must look like linux/amd64 (it is %s)." % module.params["platform"])
    prefetch = Prefetch(module)
    results = []
    for image in module.params["images"]:
        try:
            results.append(prefetch.image(image))
        except Exception as error:  # noqa: BLE001 - every failure becomes a message that names the image
            if module.check_mode:
                # On a host where the check run has not started the cache yet, nothing can be read.
                results.append({"image": image, "unknown": True, "fetched": 1, "fetched_bytes": 0})
                continue
            module.fail_json(msg="Pulling %s through the cache at %s failed: %s. Check registry_cache_remote_url "
                                 "and that the cache reaches it (journalctl -u docker-registry on the cache host)."
                                 % (image, prefetch.url, error))
    module.exit_json(changed=any(r["fetched"] for r in results), images=results,
                     fetched_bytes=sum(r["fetched_bytes"] for r in results))


if __name__ == "__main__":
    main()
