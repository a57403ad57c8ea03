# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations


class ModuleDocFragment(object):
    """The Hugging Face Hub options of the collection's modules.

    DOCUMENTATION: the hub to talk to and the token (hf_model_fetch, hf_model_config; their spec is HUB_OPTIONS
    of module_utils/_hf_hub.py). MODEL: the model and its revision (hf_model_fetch, hf_cache_check; their
    spec is MODEL_OPTIONS of module_utils/_hf_cache.py).
    """

    DOCUMENTATION = r"""
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
