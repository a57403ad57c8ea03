"""meta/runtime.yml promises the ansible-core versions the tests run with, and no others."""

import os
import re

import yaml
from ansible.module_utils.compat.version import LooseVersion

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def tested_core():
    with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
        return re.search(r"^ansible-core==(\S+)", f.read(), re.M).group(1)


def test_requires_ansible_is_bounded_to_the_tested_minor_release():
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as f:
        spec = yaml.safe_load(f)["requires_ansible"]
    bounds = dict((op, v) for op, v in re.findall(r"(>=|<)\s*([\d.]+)", spec))
    assert set(bounds) == {">=", "<"}, "requires_ansible needs a lower and an upper bound: %r" % spec
    major, minor = tested_core().split(".")[:2]
    assert LooseVersion(bounds[">="]) <= LooseVersion(tested_core()) < LooseVersion(bounds["<"])
    assert bounds["<"] == "%s.%d" % (major, int(minor) + 1), "the upper bound is the next minor release after the tested one"
