"""The option list vllm_server validates against is vLLM's own: regenerating it from the parser of
the vLLM in the test image must give the committed file, byte for byte."""

import os
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IMAGE = "llmops-test/vllm-openai-cpu:v0.32.0"
DATA = os.path.join(ROOT, "roles", "vllm_server", "files", "vllm_serve_options", "0.32.0.yml")


def test_option_data_matches_the_parser_of_vllm_0_32_0():
    generated = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", "%s:/tools:ro" % os.path.join(ROOT, "tools"),
         "--entrypoint", "python3", IMAGE, "/tools/vllm_serve_options.py"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    with open(DATA) as f:
        committed = f.read()
    assert generated == committed, (
        "roles/vllm_server/files/vllm_serve_options/0.32.0.yml no longer matches vLLM's parser; "
        "regenerate it with tools/vllm_serve_options.py (see its docstring)")
