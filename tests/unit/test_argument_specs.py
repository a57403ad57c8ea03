"""Every role default is described in meta/argument_specs.yml, with the same default, and nothing more."""

import os

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROLES = sorted(d for d in os.listdir(os.path.join(ROOT, "roles")) if os.path.isdir(os.path.join(ROOT, "roles", d)))


def load(role, *parts):
    with open(os.path.join(ROOT, "roles", role, *parts)) as f:
        return yaml.safe_load(f) or {}


def all_options(role):
    """Options of every entry point; an option described twice must be described the same way."""
    options = {}
    for entry, spec in load(role, "meta", "argument_specs.yml")["argument_specs"].items():
        for name, option in spec.get("options", {}).items():
            assert options.get(name, option).get("default") == option.get("default"), "%s differs between entry points" % name
            options[name] = option
    return options


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_agree(role):
    defaults = load(role, "defaults", "main.yml")
    options = all_options(role)
    assert sorted(defaults) == sorted(options), "defaults/main.yml and meta/argument_specs.yml list different variables"
    for name, value in defaults.items():
        assert "default" in options[name], "%s has no default in argument_specs" % name
        assert options[name]["default"] == value, "%s: argument_specs says %r, defaults say %r" % (name, options[name]["default"], value)
        assert options[name].get("description"), "%s has no description" % name
        assert not options[name].get("required"), "%s is required and has a default" % name


@pytest.mark.parametrize("role", ROLES)
def test_public_variables_carry_the_role_prefix(role):
    for name in load(role, "defaults", "main.yml"):
        assert name.startswith(role + "_"), name
    for name in load(role, "vars", "main.yml") if os.path.exists(os.path.join(ROOT, "roles", role, "vars", "main.yml")) else {}:
        assert name.startswith("_" + role + "_"), "private variable %s must start with _%s_" % (name, role)


def test_reference_docs_are_current():
    """docs/reference/roles.md and modules.md are what tools/role_docs.py writes from argument_specs and DOCUMENTATION."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "role_docs.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
