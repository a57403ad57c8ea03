"""Every filter the roles and playbooks call as llmops.vllm.<name> is found by Ansible's own plugin loader, and
each name is registered by one file of plugins/filter/ only (Ansible takes a duplicate from whichever file it
reads last)."""

import os
import pkgutil
import re
from importlib import import_module

from ansible.plugins.loader import filter_loader

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
PACKAGE = "ansible_collections.llmops.vllm.plugins.filter"
# `| llmops.vllm.name` (a line break may come between), and map('llmops.vllm.name'), select(...), ...
USES = re.compile(r"\|\s*llmops\.vllm\.(\w+)|\b(?:map|select|reject)\(\s*['\"]llmops\.vllm\.(\w+)")


def registered():
    """{filter name: [the files of plugins/filter/ whose FilterModule registers it]}."""
    names = {}
    for info in pkgutil.iter_modules(import_module(PACKAGE).__path__):
        module = import_module("%s.%s" % (PACKAGE, info.name))
        for name in module.FilterModule().filters():
            names.setdefault(name, []).append(info.name + ".py")
    return names


def used():
    """{filter name: the first file of roles/, playbooks/ and molecule/ that calls it}."""
    names = {}
    for top in ("roles", "playbooks", "molecule"):
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith((".yml", ".yaml", ".j2")):
                    continue
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as f:
                    for match in USES.finditer(f.read()):
                        names.setdefault(match.group(1) or match.group(2), os.path.relpath(path, ROOT))
    return names


def test_each_filter_is_registered_once():
    assert dict((n, files) for n, files in registered().items() if len(files) > 1) == {}


def test_every_filter_the_roles_call_is_found_by_ansible():
    calls = used()
    assert len(calls) > 50  # the scan sees the roles' filters
    missing = dict((name, path) for name, path in calls.items() if filter_loader.get("llmops.vllm." + name) is None)
    assert missing == {}


def test_the_scan_finds_filters_across_lines_and_in_map():
    text = "{{ x\n   | llmops.vllm.vllm_downloads(d) | map('llmops.vllm.vllm_model_ref') | llmops.vllm.no_such_filter }}"
    assert [m.group(1) or m.group(2) for m in USES.finditer(text)] == [
        "vllm_downloads", "vllm_model_ref", "no_such_filter"]
    assert filter_loader.get("llmops.vllm.no_such_filter") is None
