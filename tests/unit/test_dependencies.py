"""Every collection a playbook, role or plugin of ours names is a dependency in galaxy.yml, with a
range that holds the version the tests run (the ansible package of requirements-dev.lock), or an
optional collection that the role needing it refuses by name when it is missing.

The checkout's tests see the whole ansible package, which hides a missing dependency; the
installed artifact is proven in a clean environment by molecule/multi-instance
(tests/tooling/collection_artifacts.py)."""

import json
import os
import re

import ansible_collections
import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# What the artifact ships that can name another collection.
SCANNED = ["playbooks", "roles", "plugins", "meta", "site.yml", "verify.yml"]
SUFFIXES = (".yml", ".yaml", ".j2", ".py", ".json")
# ns.collection.resource, not part of a longer dotted name (ansible_collections.llmops.vllm.plugins...)
FQCN = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.[a-z_][a-z0-9_]*(?![\w])")
# Always there (ansible-core, this collection).
OWN = {"ansible.builtin", "llmops.vllm"}
# Optional collections: name -> the task file that refuses, by name, a feature needing it when it is missing.
OPTIONAL = {"grafana.grafana": "roles/monitoring/tasks/preflight.yml"}


def known_collections():
    """Every collection of the ansible package (namespace.name): what a dotted name may refer to."""
    found = set()
    for base in ansible_collections.__path__:
        for namespace in os.listdir(base):
            if os.path.isdir(os.path.join(base, namespace)):
                found.update("%s.%s" % (namespace, name) for name in os.listdir(os.path.join(base, namespace))
                             if os.path.isfile(os.path.join(base, namespace, name, "MANIFEST.json")))
    return found


def bundled_version(name):
    for base in ansible_collections.__path__:
        path = os.path.join(base, *name.split("."), "MANIFEST.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)["collection_info"]["version"]
    raise AssertionError("%s is not in the ansible package" % name)


def scanned_files():
    for entry in SCANNED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield path
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            for name in files:
                if name.endswith(SUFFIXES):
                    yield os.path.join(folder, name)


def used_collections():
    """collection -> the files naming one of its modules, roles or plugins."""
    known = known_collections() | OWN
    used = {}
    for path in scanned_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for namespace, name in FQCN.findall(text):
            if "%s.%s" % (namespace, name) in known:
                used.setdefault("%s.%s" % (namespace, name), set()).add(os.path.relpath(path, ROOT))
    return used


def declared():
    with open(os.path.join(ROOT, "galaxy.yml")) as f:
        return yaml.safe_load(f)["dependencies"]


def test_the_scan_finds_what_the_roles_are_known_to_call():
    used = used_collections()
    assert "roles/gateway/tasks/drain.yml" in used["community.general"]
    assert "roles/vllm_server/tasks/download-control-node.yml" in used["ansible.posix"]
    assert "roles/monitoring/tasks/grafana.yml" in used["grafana.grafana"]
    assert "community.docker" in used and "llmops.vllm" in used


def test_every_collection_we_call_is_declared_or_optional():
    used = set(used_collections()) - OWN
    missing = used - set(declared()) - set(OPTIONAL)
    assert not missing, "named in playbooks/roles/plugins but not in galaxy.yml dependencies: %s" % sorted(missing)


def test_every_declared_collection_is_called():
    unused = set(declared()) - set(used_collections())
    assert not unused, "declared in galaxy.yml but named nowhere: %s" % sorted(unused)


def test_an_optional_collection_is_not_declared_and_refused_by_name_when_missing():
    for name, refusal in OPTIONAL.items():
        assert name not in declared()
        with open(os.path.join(ROOT, refusal)) as f:
            text = " ".join(f.read().split())
        assert "lookup('llmops.vllm.collection_version', '%s')" % name in text
        assert "ansible-galaxy collection install %s" % name in text


@pytest.mark.parametrize("name", sorted(declared()))
def test_each_range_holds_the_tested_version(name):
    spec = str(declared()[name])
    assert spec == "*" or SpecifierSet(spec).contains(bundled_version(name)), (
        "galaxy.yml asks %s %s, the tests run %s (the ansible package)" % (name, spec, bundled_version(name)))
