# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# The vLLM version of an image, and the option data (roles/vllm_server/files/vllm_serve_options/<version>.yml)
# an image is checked against.

import re


def _version_tuple(text):
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    return tuple(int(g or 0) for g in match.groups()) if match else None


def vllm_image_version(image):
    """The vLLM version in an image tag such as vllm/vllm-openai:v0.32.0 or ...-cpu:v0.32.0-x86_64, or None."""
    tag = str(image).rsplit("/", 1)[-1]
    if ":" not in tag:
        return None
    version = _version_tuple(tag.split(":", 1)[1].split("@")[0])
    return "%d.%d.%d" % version if version else None


def vllm_pick_option_spec(known_versions, image):
    """The option data version to check an image against: its own, else the newest older one, else the oldest."""
    known = sorted((v for v in known_versions if _version_tuple(v)), key=_version_tuple)
    if not known:
        return None
    wanted = _version_tuple(vllm_image_version(image) or "")
    if wanted is None:
        return known[-1]
    older = [v for v in known if _version_tuple(v) <= wanted]
    return older[-1] if older else known[0]


class FilterModule(object):
    def filters(self):
        return {
            "vllm_image_version": vllm_image_version,
            "vllm_pick_option_spec": vllm_pick_option_spec,
        }
