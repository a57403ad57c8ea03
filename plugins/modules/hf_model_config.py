#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_model_config
short_description: Ask the Hugging Face Hub or a mirror what models are, without downloading them
version_added: 0.2.0
description:
  - For each model, asks the hub (or the mirror in O(endpoint)) for the commit its revision names,
    reads its C(config.json) (and C(generation_config.json), and the safetensors index when there
    is one) and lists its files, so that a preflight can judge the model before any host downloads it -
    attention heads against tensor parallelism, custom code, context length, the KV cache and the
    weights' size.
  - Reading C(config.json) is what a token without access to a gated model is refused at; the
    answer says so (RV(models[].problem)), as it says a model or revision the hub does not have.
  - A few KB per model; no weight is downloaded, and nothing is written outside a temporary directory
    that is removed again, or O(cache_dir).
  - The module does not fail on a model the hub refuses or cannot be reached for; each entry carries
    the problem and the hub's own words, and the caller decides (the vllm_server role refuses the
    instance, naming the variable to change). A hub it cannot reach, and a control node without
    huggingface_hub, give a warning and entries with RV(models[].problem) V(unreachable) or
    V(unavailable) - the check is skipped, not failed.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
  - llmops.vllm.hf_hub
options:
  models:
    description: The models to ask about.
    type: list
    elements: dict
    required: true
    suboptions:
      model:
        description: The model, C(<org>/<name>) as on the hub.
        type: str
        required: true
      revision:
        description: A branch, a tag or a commit hash.
        type: str
        default: main
  cache_dir:
    description:
      - A hub cache directory to keep the small files in (C(config.json), C(generation_config.json), the safetensors
        index), in the layout M(llmops.vllm.hf_model_fetch) downloads into - so that a download into the same directory
        later takes them from there and the hub sends each file once. Not written in check mode.
      - Unset, the files go through a temporary directory that is removed again.
    type: path
attributes:
  check_mode:
    support: full
    details: Asks the hub the same in check mode; writes nothing to O(cache_dir) then.
  diff_mode:
    support: none
  idempotent:
    support: full
seealso:
  - module: llmops.vllm.hf_model_fetch
  - module: llmops.vllm.serving_host_info
"""

EXAMPLES = r"""
- name: Ask the hub about the models before any host downloads them
  llmops.vllm.hf_model_config:
    models:
      - {model: meta-llama/Llama-3.1-8B-Instruct, revision: main}
    token: "{{ vllm_server_hf_token | default(omit, true) }}"
  delegate_to: localhost
  run_once: true
  register: __hub
"""

RETURN = r"""
models:
  description: One entry per model of O(models), in their order.
  returned: success
  type: list
  elements: dict
  contains:
    model:
      description: The model, as asked.
      type: str
      sample: meta-llama/Llama-3.1-8B-Instruct
    revision:
      description: The revision, as asked.
      type: str
      sample: main
    commit:
      description: The commit the revision names on the hub; empty when the hub refused.
      type: str
      sample: 0e9e39f249a16976918f6564b8830bc894c89659
    gated:
      description: Whether the hub gates the model's files.
      type: bool
      sample: true
    config:
      description:
        - The fields of C(config.json) that decide whether vLLM can serve the model as asked (the summary
          M(llmops.vllm.serving_host_info) gives of a cached copy); empty when it could not be read.
      type: dict
      sample: {architectures: [LlamaForCausalLM], model_type: llama, num_attention_heads: 32, num_key_value_heads: 8,
               num_hidden_layers: 32, hidden_size: 4096, head_dim: 128, torch_dtype: bfloat16,
               max_position_embeddings: 131072, auto_map: false, rope_scaling: true, quantization: ""}
    adapter_config:
      description:
        - For a LoRA adapter's repository (an C(adapter_config.json) and no C(config.json)), the fields of its
          C(adapter_config.json) the vllm_server role checks (C(peft_type), C(base_model_name_or_path), the rank C(r),
          C(target_modules)); absent for a model.
      type: dict
      returned: for a LoRA adapter
      version_added: 0.2.0
      sample: {peft_type: LORA, base_model_name_or_path: meta-llama/Llama-3.1-8B-Instruct, r: 16, target_modules: [q_proj, v_proj]}
    generation_config:
      description: The model's C(generation_config.json), when it has one.
      type: dict
      sample: {temperature: 0.6, top_p: 0.9}
    weights_bytes:
      description: The bytes of the weights vLLM would load (the safetensors index's C(total_size), else the weight files' sizes).
      type: int
      sample: 16060522496
    files:
      description: How many files the revision has.
      type: int
      sample: 17
    problem:
      description:
        - Empty when the hub answered; else why not - V(gated) (no access to the files), V(not_found) (no such model,
          or a private one without access), V(revision), V(token_rejected), V(no_config) (no C(config.json)),
          V(unreachable), V(unavailable) (no huggingface_hub where the module ran) or V(other).
      type: str
      sample: gated
    status:
      description: The HTTP status the hub refused with; 0 otherwise.
      type: int
      sample: 403
    error:
      description: The hub's own words (or the client's), never the token.
      type: str
      sample: Access to model meta-llama/Llama-3.1-8B-Instruct is restricted and you are not in the authorized list.
    endpoint:
      description: The hub or mirror asked.
      type: str
      sample: https://huggingface.co
    token:
      description: Whether a token was sent (never the token).
      type: bool
      sample: true
"""

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmops.vllm.plugins.module_utils._hf_hub import HF_IMPORT_ERROR, HUB_OPTIONS, OTHER, UNAVAILABLE, UNREACHABLE, Asker


def main():
    module = AnsibleModule(
        argument_spec=dict(
            models=dict(type="list", elements="dict", required=True, options=dict(
                model=dict(type="str", required=True),
                revision=dict(type="str", default="main"),
            )),
            **HUB_OPTIONS,
            cache_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    if HF_IMPORT_ERROR is not None:
        # a check that cannot run is skipped, loudly: the servers would still download the models themselves
        module.warn("hf_model_config needs the Python library huggingface_hub where it runs, to ask the hub about %s before "
                    "any host downloads them: `pip install huggingface_hub` (2.4.0 is the version tested) into the Python "
                    "that runs modules on the control node (%s). Their config.json was not checked."
                    % (", ".join(m["model"] for m in module.params["models"]), sys.executable))
        module.exit_json(changed=False, models=[dict(model=m["model"], revision=m["revision"] or "main", problem=UNAVAILABLE,
                                                     error="huggingface_hub is not installed", config={})
                                                for m in module.params["models"]])
    asker = Asker(module.params["endpoint"], module.params["token"], None if module.check_mode else module.params["cache_dir"])
    models = [asker.ask(m["model"], m["revision"] or "main") for m in module.params["models"]]
    for m in models:
        if m["problem"] in (UNREACHABLE, OTHER):
            module.warn("%s (revision %s): could not ask %s about it (%s), so its config.json was not checked before the "
                        "run; the servers will download it themselves. Check vllm_server_hf_endpoint and the control "
                        "node's network." % (m["model"], m["revision"], m["endpoint"], m["error"]))
    module.exit_json(changed=False, models=models)


if __name__ == "__main__":
    main()
