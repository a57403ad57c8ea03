# Makes the collection importable as ansible_collections.llmops.vllm from a checkout
# (collections/ansible_collections/llmops/vllm links to the repository root).
import json
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "collections"))

# Ansible's own collection loader, so that templates rendered by the tests find llmops.vllm's filters.
from ansible.plugins.loader import init_plugin_loader  # noqa: E402

init_plugin_loader([os.path.join(ROOT, "collections")])

from ansible.module_utils import basic  # noqa: E402
from ansible.module_utils.common.text.converters import to_bytes  # noqa: E402


class AnsibleExitJson(Exception):
    """exit_json was called; args holds the result."""


class AnsibleFailJson(Exception):
    """fail_json was called; args holds the result."""


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def _fail_json(self, **kwargs):
    kwargs["failed"] = True
    raise AnsibleFailJson(kwargs)


@pytest.fixture
def run_module(monkeypatch):
    """Run a module's main() with args; return ('exit'|'fail', result)."""
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)

    def run(main, args, check_mode=False, diff=False):
        args = dict(args)
        args["_ansible_check_mode"] = check_mode
        args["_ansible_diff"] = diff
        args.setdefault("_ansible_remote_tmp", "/tmp")
        args.setdefault("_ansible_keep_remote_files", False)
        monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args})))
        monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
        try:
            main()
        except AnsibleExitJson as e:
            return "exit", e.args[0]
        except AnsibleFailJson as e:
            return "fail", e.args[0]
        raise AssertionError("the module returned without exit_json or fail_json")

    return run
