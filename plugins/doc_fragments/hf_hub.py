# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations


class ModuleDocFragment(object):
    """What the collection's Hugging Face modules document alike.

    DOCUMENTATION (hf_model_fetch, hf_model_config): the requirement of huggingface_hub, the hub to talk to
    and the token; the options' spec is HUB_OPTIONS of module_utils/_hf_hub.py.
    MODEL (hf_model_fetch, hf_cache_check): the model and its revision; their spec is MODEL_OPTIONS of
    module_utils/_hf_cache.py.
    """

    DOCUMENTATION = r"""
requirements:
  - huggingface_hub on the host that runs the module (tested with 2.4.0, the version vLLM 0.32.0 ships).
options:
  endpoint:
    description:
      - The hub or mirror to talk to (what C(HF_ENDPOINT) sets), for example V(https://hf-mirror.com).
        Unset, huggingface_hub's default applies (C(HF_ENDPOINT) in the environment of the module, else
        V(https://huggingface.co)).
    type: str
  token:
    description:
      - A Hugging Face access token, for gated and private models. Unset, huggingface_hub's default applies
        (C(HF_TOKEN) in the environment, else the token saved by C(hf auth login)).
    type: str
"""

    # llmops.vllm.hf_hub.model
    MODEL = r"""
options:
  repo_id:
    description: The model, C(<org>/<name>) as on the hub.
    type: str
    required: true
  revision:
    description: A branch, a tag or a commit hash.
    type: str
    default: main
"""
