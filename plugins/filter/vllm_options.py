# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# vLLM's options of an instance: their command-line spelling, the config file they make, and the
# preflight's check of them against the option data of roles/vllm_server/files/vllm_serve_options/.

import difflib

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import filter_error
from ansible_collections.llmops.vllm.plugins.plugin_utils import _vllm_instances as resolver

# How an option is spelt and what the config file holds: plugins/plugin_utils/_vllm_instances.py.
vllm_cli_key = resolver.cli_key
vllm_config = filter_error(resolver.config_mapping)

# Keys the role sets itself; an instance gives them through its own fields.
MANAGED_OPTIONS = {
    "model": "the instance's model",
    "served-model-name": "the instance's served_model_name",
    "port": "the instance's port (the container always listens on 8000)",
    "host": "the instance's bind_address",
    "config": "the role (it writes the config file)",
    "api-key": "vllm_server_api_key (kept out of docker inspect)",
    "hf-token": "vllm_server_hf_token (kept out of docker inspect)",
}


def _display(key):
    return "%s (--%s)" % (key.replace("-", "_"), key)


def vllm_option_problems(options, spec, advice=None, strict=True):
    """Sentences describing every option that vLLM's `serve` would reject or that means something else.

    spec is the role's data for one vLLM version (options: name -> kind/negatable/choices/aliases,
    quantization_methods, vllm_version); advice maps common mistakes to what to use instead.
    With strict=False only the advice and the options the role sets itself are checked.
    """
    if not isinstance(options, dict):
        return ["vLLM options must be a dictionary of option names and values, not %s" % type(options).__name__]
    known = spec.get("options", {})
    version = spec.get("vllm_version", "?")
    aliases = {}
    for name, entry in known.items():
        for alias in entry.get("aliases") or []:
            aliases[alias] = name
    advice = dict((vllm_cli_key(k), v) for k, v in (advice or {}).items())
    problems = []
    for raw_key in sorted(options, key=str):
        value = options[raw_key]
        key = vllm_cli_key(raw_key)
        base = key.split(".", 1)[0]
        base = aliases.get(base, base)
        if base in advice:
            methods = ", ".join(spec.get("quantization_methods") or []) or "see vLLM's documentation"
            problems.append("%s: %s" % (raw_key, advice[base].replace("{quantization_methods}", methods)))
            continue
        if base in MANAGED_OPTIONS:
            problems.append("%s: set it through %s, not in the options." % (raw_key, MANAGED_OPTIONS[base]))
            continue
        if not strict:
            continue
        if base not in known:
            close = difflib.get_close_matches(base, list(known), n=3, cutoff=0.6)
            hint = (" Did you mean %s?" % " or ".join(_display(c) for c in close)) if close else ""
            problems.append("%s is not an option of vLLM %s's server.%s" % (raw_key, version, hint))
            continue
        entry = known[base]
        if value is None or "." in key:
            continue
        if entry.get("kind") == "flag" and not isinstance(value, bool):
            problems.append("%s is a flag of vLLM: give true or false, not %r." % (raw_key, value))
        elif entry.get("kind") == "value" and isinstance(value, list):
            problems.append("%s takes one value, not a list." % raw_key)
        choices = entry.get("choices")
        if choices and entry.get("kind") != "flag":
            values = value if isinstance(value, list) else [value]
            wrong = [v for v in values if str(v) not in choices]
            if wrong:
                problems.append("%s: %s is not one of %s." % (raw_key, ", ".join(repr(v) for v in wrong), ", ".join(choices)))
        if base == "quantization" and spec.get("quantization_methods") and str(value) not in spec["quantization_methods"]:
            close = difflib.get_close_matches(str(value), spec["quantization_methods"], n=3, cutoff=0.5)
            problems.append("%s: %r is not a quantization method of vLLM %s.%s Methods: %s." % (
                raw_key, value, version, (" Did you mean %s?" % " or ".join(close)) if close else "",
                ", ".join(spec["quantization_methods"])))
    return problems


class FilterModule(object):
    def filters(self):
        return {
            "vllm_cli_key": vllm_cli_key,
            "vllm_config": vllm_config,
            "vllm_option_problems": vllm_option_problems,
        }
