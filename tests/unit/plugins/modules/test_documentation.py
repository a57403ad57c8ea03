"""Each module's DOCUMENTATION, EXAMPLES and RETURN parse, and the documented options are the argument spec.

A fast guard for `make unit`; `make sanity` (ansible-test validate-modules) checks the same and more.
"""

import ast
import os

import pytest
import yaml

from ansible.module_utils import basic
from ansible.plugins.loader import fragment_loader
from ansible.utils.plugin_docs import get_docstring

MODULES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "plugins", "modules")
MODULES = sorted(f[:-3] for f in os.listdir(MODULES_DIR) if f.endswith(".py") and not f.startswith("_"))


def doc_blocks(name):
    with open(os.path.join(MODULES_DIR, name + ".py")) as f:
        tree = ast.parse(f.read())
    return {n.targets[0].id: n.value.value for n in tree.body
            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) in ("DOCUMENTATION", "EXAMPLES", "RETURN")}


def argument_spec(name, monkeypatch):
    """The argument_spec main() passes to AnsibleModule."""
    seen = {}

    class Stop(Exception):
        pass

    def capture(self, argument_spec, **kwargs):
        seen.update(argument_spec)
        raise Stop()

    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)
    module = __import__("ansible_collections.llmops.vllm.plugins.modules." + name, fromlist=["main"])
    with pytest.raises(Stop):
        module.main()
    return seen


@pytest.mark.parametrize("name", MODULES)
def test_documentation_parses(name):
    blocks = doc_blocks(name)
    assert sorted(blocks) == ["DOCUMENTATION", "EXAMPLES", "RETURN"]
    for text in blocks.values():
        yaml.safe_load(text)
    doc = yaml.safe_load(blocks["DOCUMENTATION"])
    assert doc["module"] == name


@pytest.mark.parametrize("name", MODULES)
def test_attributes_have_a_support_level_and_a_description(name):
    """As ansible-doc shows them: the module's own attributes merged with those of its doc fragments
    (llmops.vllm.attributes describes them, llmops.vllm.attributes.read_only sets a read-only module's levels)."""
    doc = get_docstring(os.path.abspath(os.path.join(MODULES_DIR, name + ".py")), fragment_loader,
                        collection_name="llmops.vllm", is_module=True)[0]
    assert sorted(doc["attributes"]) == ["check_mode", "diff_mode", "idempotent"]
    for attribute, value in doc["attributes"].items():
        assert value.get("support") in ("full", "partial", "none", "N/A"), (attribute, value)
        assert value.get("description"), attribute


def fragment_options(fragment):
    """The options a doc fragment of the collection (llmops.vllm.<file>[.<variable>]) documents."""
    namespace, collection, short, variable = (fragment.split(".") + ["documentation"])[:4]
    assert (namespace, collection) == ("llmops", "vllm"), fragment
    module = __import__("ansible_collections.llmops.vllm.plugins.doc_fragments." + short, fromlist=["ModuleDocFragment"])
    return yaml.safe_load(getattr(module.ModuleDocFragment, variable.upper())).get("options") or {}


def extended_fragments(name):
    return yaml.safe_load(doc_blocks(name)["DOCUMENTATION"]).get("extends_documentation_fragment") or []


def documented_options(name):
    """The module's options with those of the collection's doc fragments it extends, as ansible-doc merges them."""
    options = dict(yaml.safe_load(doc_blocks(name)["DOCUMENTATION"]).get("options") or {})
    for fragment in extended_fragments(name):
        for option, value in fragment_options(fragment).items():
            assert option not in options, "%s is documented in %s and in the fragment %s" % (option, name, fragment)
            options[option] = value
    return options


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_are_the_argument_spec(name, monkeypatch):
    options = documented_options(name)
    spec = argument_spec(name, monkeypatch)
    assert sorted(options) == sorted(spec)
    for option, doc in options.items():
        assert doc.get("type", "str") == spec[option].get("type", "str"), option
        assert doc.get("default") == spec[option].get("default"), option


def modules_by_fragment():
    """{fragment: the modules extending it} for the collection's fragments that document options."""
    found = {}
    for name in MODULES:
        for fragment in extended_fragments(name):
            if fragment_options(fragment):
                found.setdefault(fragment, []).append(name)
    return found


@pytest.mark.parametrize("fragment", sorted(modules_by_fragment()))
def test_options_of_a_fragment_are_specified_alike_in_every_module(fragment, monkeypatch):
    """An option documented once is specified once: each module extending the fragment passes the same spec for it
    (no_log and required included), as it does when it takes the shared dict from module_utils."""
    modules = modules_by_fragment()[fragment]
    specs = dict((name, argument_spec(name, monkeypatch)) for name in modules)
    for option in fragment_options(fragment):
        first = specs[modules[0]][option]
        for name in modules[1:]:
            assert specs[name][option] == first, "%s of %s and of %s (fragment %s)" % (option, name, modules[0], fragment)
