"""The vllm_server secrets file carries any printable-ASCII key to vLLM exactly (issue 12): rendered
by Ansible's own templating from roles/vllm_server/templates/secrets.env.j2, then read the way the
container's entrypoint wrapper reads it (`set -a; . FILE; set +a` in /bin/sh), nothing in it runs."""

import os
import subprocess

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEMPLATE = os.path.join(ROOT, "roles", "vllm_server", "templates", "secrets.env.j2")

KEYS = [
    'sk-"double"-quoted',
    "sk-'single'-quoted",
    "sk-$(touch PWNED)-`touch PWNED`-${HOME}",
    "sk-back\\slash\\n\\",
    "sk-;&|<>*?[]{}~#!%^=+,:@",
    "sk-with inner spaces",
]


def render(api_key, hf_token="hf_llmopsTestTokenNotReal"):
    with open(TEMPLATE) as f:
        source = f.read()
    templar = Templar(loader=DataLoader(), variables={
        "vllm_server_api_key": api_key, "vllm_server_hf_token": hf_token, "_vllm_server_instance": {"name": "vllm"}})
    return templar.template(trust_as_template(source))


@pytest.mark.parametrize("key", KEYS)
def test_the_server_gets_the_key_exactly_and_nothing_runs(tmp_path, key):
    secrets = tmp_path / "vllm.env"
    secrets.write_text(render(key))
    out = subprocess.run(["/bin/sh", "-c", 'f="$1"; set -a; . "$f"; set +a; printf %s "$VLLM_API_KEY"', "sh", str(secrets)],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == key
    assert not (tmp_path / "PWNED").exists(), "sourcing the secrets file ran a command from the key"
