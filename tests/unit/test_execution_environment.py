"""The execution environment definitions: valid for ansible-builder, and the local variant that
`make ee` builds holds what the shipped one does."""

import os

import pytest
import yaml

ansible_builder = pytest.importorskip("ansible_builder.user_definition")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHIPPED = os.path.join(ROOT, "execution-environment.yml")
LOCAL = os.path.join(ROOT, "tests", "ee", "execution-environment.yml")


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("path", [SHIPPED, LOCAL])
def test_definition_is_valid_for_ansible_builder(path):
    definition = ansible_builder.UserDefinition(path)
    definition.validate()
    assert definition.version == 3


def test_local_variant_holds_the_shipped_collections():
    shipped = {c["name"] for c in load(SHIPPED)["dependencies"]["galaxy"]["collections"]}
    local = {os.path.basename(c["name"]).replace(".tar.gz", "").replace("-", ".", 1)
             for c in load(LOCAL)["dependencies"]["galaxy"]["collections"]}
    assert shipped <= local, "tests/ee/execution-environment.yml lacks %s" % sorted(shipped - local)


def test_local_variant_holds_the_declared_dependencies_and_theirs():
    """An offline install finds no collection the definition does not name: every one galaxy.yml
    declares, and the ones those depend on (tests/tooling/collection_artifacts.py closure)."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tests", "tooling"))
    try:
        from collection_artifacts import closure
    finally:
        sys.path.pop(0)
    local = {os.path.basename(c["name"]).replace(".tar.gz", "").replace("-", ".", 1)
             for c in load(LOCAL)["dependencies"]["galaxy"]["collections"]}
    wanted = {"llmops.vllm"} | set(closure())
    assert {"community.general", "ansible.posix", "community.docker"} <= wanted
    assert local == wanted, "tests/ee/execution-environment.yml names %s, galaxy.yml gives %s" % (sorted(local), sorted(wanted))


def test_the_shipped_definition_leaves_the_dependencies_to_galaxy_yml():
    """ansible-galaxy installs what galaxy.yml declares with llmops.vllm: one place for the list."""
    assert [c["name"] for c in load(SHIPPED)["dependencies"]["galaxy"]["collections"]] == ["llmops.vllm"]


def test_local_variant_runs_the_tested_ansible_core():
    with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
        pins = [line.strip() for line in f if line.startswith("ansible-core==")]
    assert load(LOCAL)["dependencies"]["ansible_core"]["package_pip"] in pins


def test_collection_declares_its_ee_dependencies():
    meta = load(os.path.join(ROOT, "meta", "execution-environment.yml"))
    for key in ("python", "system"):
        assert os.path.exists(os.path.join(ROOT, meta["dependencies"][key])), meta["dependencies"][key]


def test_the_control_nodes_needs_are_declared():
    """hf_model_fetch runs on the control node (vllm_server_download_on: control_node) and
    ansible.posix.synchronize copies from there with rsync."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        python = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
    assert any(p.startswith("huggingface_hub") for p in python), python
    with open(os.path.join(ROOT, "bindep.txt")) as f:
        system = [line.split()[0] for line in f if line.strip() and not line.startswith("#")]
    assert "rsync" in system and "openssh-client" in system, system
    # the tested huggingface_hub is inside the declared range
    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "requirements-dev.lock")) as f:
        pinned = dict(line.strip().split("==") for line in f if "==" in line)
    for line in python:
        requirement = Requirement(line)
        assert requirement.specifier.contains(pinned[requirement.name]), (line, pinned[requirement.name])
