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


def test_local_variant_runs_the_tested_ansible_core():
    with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
        pins = [line.strip() for line in f if line.startswith("ansible-core==")]
    assert load(LOCAL)["dependencies"]["ansible_core"]["package_pip"] in pins


def test_collection_declares_its_ee_dependencies():
    meta = load(os.path.join(ROOT, "meta", "execution-environment.yml"))
    for key in ("python", "system"):
        assert os.path.exists(os.path.join(ROOT, meta["dependencies"][key])), meta["dependencies"][key]
