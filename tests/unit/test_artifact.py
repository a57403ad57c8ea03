"""The artifact `ansible-galaxy collection build` makes holds the collection and its docs only: no
caches, models, reports, compiled Python, test output or tooling, whatever a checkout has lying
around (galaxy.yml build_ignore)."""

import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GALAXY = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
# What an operator installs: the collection, its playbooks, docs and example inventories.
TOP_LEVEL = {"MANIFEST.json", "FILES.json", "README.md", "LICENSE", "CHANGELOG.md", "requirements.txt", "bindep.txt",
             "site.yml", "verify.yml", "roles", "plugins", "playbooks", "meta", "docs", "changelogs", "inventories"}
# A path with one of these parts is a cache, a test run's output or the test suite.
FORBIDDEN_PARTS = {".cache", "__pycache__", ".venv", ".git", ".github", ".pytest_cache", ".ansible", "reports", "tests",
                   "molecule", "output", "fragments", "collections", "benchmarks", "tools", ".ci", ".config"}
FORBIDDEN_NAMES = {"CACHEDIR.TAG", ".plugin-cache.yaml", "ansible.cfg"}
FORBIDDEN_SUFFIXES = (".pyc", ".pyo", ".retry", ".tar.gz", ".whl", ".safetensors", ".bin", ".gguf", ".pt", ".lock",
                      ".log", ".incomplete")


def problems(members):
    """Sentences naming each member of the artifact that does not belong there."""
    found = []
    for name in members:
        parts = name.lstrip("./").split("/")
        if parts[0] not in TOP_LEVEL:
            found.append("%s: %s is not one of the artifact's top-level entries" % (name, parts[0]))
        elif set(parts) & FORBIDDEN_PARTS or parts[-1] in FORBIDDEN_NAMES or name.endswith(FORBIDDEN_SUFFIXES) \
                or any(p.startswith("models--") for p in parts):
            found.append("%s: a cache, a model, test output or tooling" % name)
    return found


def build(source, dest):
    subprocess.run([GALAXY, "collection", "build", "--force", "--output-path", str(dest), str(source)],
                   check=True, capture_output=True)
    (artifact,) = [os.path.join(dest, f) for f in os.listdir(dest) if f.endswith(".tar.gz")]
    with tarfile.open(artifact) as tar:
        return [m.name + ("/" if m.isdir() else "") for m in tar.getmembers()]


def test_the_checks_name_what_does_not_belong():
    found = problems(["roles/x/tasks/main.yml", "playbooks/.cache/fleet-control-node/hub/CACHEDIR.TAG",
                      "plugins/filter/__pycache__/vllm.cpython-311.pyc", "reports/verify.json", "tests/unit/x.py",
                      "hub/models--llmops-test--tiny-chat/blobs/0a1b", "roles/x/files/model.safetensors", "Makefile",
                      "changelogs/.plugin-cache.yaml", ".venv/bin/python"])
    assert len(found) == 9 and not any(f.startswith("roles/x/tasks") for f in found)


def test_the_checkouts_artifact_holds_the_collection_only(tmp_path):
    members = build(ROOT, tmp_path)
    assert "roles/vllm_server/tasks/main.yml" in members and "playbooks/upgrade.yml" in members
    assert "plugins/lookup/collection_version.py" in members and "meta/execution-environment.yml" in members
    assert problems(members) == []


@pytest.fixture
def littered_checkout(tmp_path):
    """A copy of the checkout with what tests, benchmarks and tools leave in it."""
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "__pycache__"))
    litter = ["playbooks/.cache/fleet-control-node/hub/models--llmops-test--tiny-chat/blobs/29a5ff96",
              "playbooks/.cache/fleet-control-node/hub/CACHEDIR.TAG", ".cache/models/tiny-chat/model.safetensors",
              "plugins/filter/__pycache__/vllm.cpython-311.pyc", "plugins/modules/verify_endpoint.pyc",
              "reports/verify-report.json", "playbooks/reports/verify-report.md", ".pytest_cache/v/cache/nodeids",
              "tests/output/junit.xml", ".ansible/collections/x", "roles/gateway/.ansible/tmp/x", "site.retry",
              "llmops-vllm-0.0.9.tar.gz", "docs/.cache/x"]
    for name in litter:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text("litter\n")
    return copy


def test_a_littered_checkout_builds_the_same_clean_artifact(littered_checkout, tmp_path):
    members = build(littered_checkout, tmp_path / "out")
    assert problems(members) == []
    assert sorted(members) == sorted(build(ROOT, tmp_path / "clean"))
