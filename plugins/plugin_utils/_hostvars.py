# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# PRIVATE to the collection: it can change without notice and must not be used by anything outside
# llmops.vllm.
#
# Reading another host's variables through Ansible's hostvars from a filter: the one way the
# fleet, gateway and multi-node filters do it.

from __future__ import annotations


def hostvar(hostvars, host, name, default=None, blank_is_missing=False):
    """hostvars[host][name], or default where the host or the variable is missing or None ("" too with
    blank_is_missing).

    A host outside the inventory: ansible-core 2.19's hostvars gives an undefined value for it, whose .get
    fails at templating time rather than raising KeyError here, so membership is asked first.
    """
    try:
        if host not in hostvars:
            return default
        value = hostvars[host].get(name, default)
    except (KeyError, AttributeError, TypeError):
        return default
    if value is None or (blank_is_missing and value == ""):
        return default
    return value
