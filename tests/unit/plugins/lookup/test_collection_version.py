"""llmops.vllm.collection_version: what the running ansible-core finds, as the monitoring role's
preflight asks it about grafana.grafana (an optional collection)."""

import json
import os

import pytest
import yaml
from ansible.errors import AnsibleLookupError

from ansible_collections.llmops.vllm.plugins.lookup import collection_version as plugin

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def bundled_version(name):
    """The version of a collection of the ansible package (requirements-dev.lock), from its MANIFEST.json."""
    import ansible_collections

    for base in ansible_collections.__path__:
        path = os.path.join(base, *name.split("."), "MANIFEST.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)["collection_info"]["version"]
    raise AssertionError("%s is not in the ansible package" % name)


def test_an_installed_artifact_reports_its_manifest_version():
    # grafana.grafana: in the ansible package of the tests' .venv, so the monitoring role finds it there
    assert plugin.collection_version("grafana.grafana") == bundled_version("grafana.grafana")
    assert plugin.collection_version("community.docker") == bundled_version("community.docker")


def test_a_checkout_reports_its_galaxy_yml_version():
    with open(os.path.join(ROOT, "galaxy.yml")) as f:
        version = yaml.safe_load(f)["version"]
    assert plugin.collection_version("llmops.vllm") == version


@pytest.mark.parametrize("name", ["llmops.not_there", "nobody.grafana", "grafana.grafanax"])
def test_a_missing_collection_is_an_empty_string(name):
    assert plugin.collection_version(name) == ""


@pytest.mark.parametrize("name", ["grafana", "grafana.grafana.grafana", "../etc.passwd", "", "Grafana.Grafana"])
def test_a_name_that_is_no_collection_name_is_refused(name):
    with pytest.raises(AnsibleLookupError, match="is not a collection name"):
        plugin.collection_version(name)


def test_the_lookup_answers_each_term_in_order():
    lookup = plugin.LookupModule()
    assert lookup.run(["llmops.not_there", "grafana.grafana"], variables={}) == ["", bundled_version("grafana.grafana")]


def test_a_directory_without_manifest_or_galaxy_yml_states_no_version(tmp_path):
    assert plugin._stated_version(str(tmp_path)) == "*"
    (tmp_path / "galaxy.yml").write_text("namespace: x\nname: y\nversion: '2.3.4'  # quoted\n")
    assert plugin._stated_version(str(tmp_path)) == "2.3.4"
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"collection_info": {"version": "5.6.7"}}))
    assert plugin._stated_version(str(tmp_path)) == "5.6.7"
