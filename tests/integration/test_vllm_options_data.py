"""The option list vllm_server validates against is vLLM's own: regenerating it from the parser of
the vLLM in the test image must give the committed file, byte for byte."""

import os
import subprocess

from vllm_testbed import IMAGE, ROOT, VLLM_VERSION

DATA = os.path.join(ROOT, "roles", "vllm_server", "files", "vllm_serve_options", "%s.yml" % VLLM_VERSION)


def test_option_data_matches_the_parser_of_the_shipped_vllm():
    generated = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", "%s:/tools:ro" % os.path.join(ROOT, "tools"),
         "--entrypoint", "python3", IMAGE, "/tools/vllm_serve_options.py"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    with open(DATA) as f:
        committed = f.read()
    assert generated == committed, (
        "roles/vllm_server/files/vllm_serve_options/%s.yml no longer matches vLLM's parser; "
        "regenerate it with tools/vllm_serve_options.py (see its docstring)" % VLLM_VERSION)
