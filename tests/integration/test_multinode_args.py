"""The vLLM arguments of every node of a multi-node instance parse with vLLM's own `vllm serve` parser.

llmops.vllm.vllm_multinode_plan renders the arguments of each node for the three shapes (data, tensor,
pipeline) and both executors (mp: vLLM's Ray-free multi-node mode; ray: `vllm serve` on the Ray head);
each node's list, with its --config file, is parsed by the parser of the vLLM in the test image
(tests/integration/vllm_parse_args.py) in one container without network. Every long option must be
one of the parser's own names and every value must parse to what the plan meant.

Negative controls in the same run: a misspelt option and an abbreviated one must fail the check, so
this test fails when the plan renders a misspelt flag.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml

from vllm_testbed import IMAGE, ROOT

sys.path.insert(0, os.path.join(ROOT, "collections"))

from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import vllm_multinode_plan  # noqa: E402

MODEL = "llmops-test/tiny-chat"
NODES = ["node-a", "node-b"]
# GPU nodes on paper (the parser needs none): Ray is refused on the CPU platform, so the plans are for cuda.
FACTS = dict((h, {"interfaces": {"eth0": "10.9.0.%d" % (i + 1)}, "gpus": 1, "platform": "cuda",
                  "image_digest": "sha256:" + "c" * 64}) for i, h in enumerate(NODES))
# tiny-chat's config.json: 2 attention heads, 2 layers
MODEL_CONFIG = {"num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 2}
SHAPES = ("data", "tensor", "pipeline")
EXECUTORS = ("mp", "ray")


def plan(shape, executor):
    instance = {"name": "mn-%s-%s" % (shape, executor), "model": MODEL, "served_model_name": "tiny-chat", "port": 8000,
                "bind_address": "0.0.0.0", "image": IMAGE, "nodes": NODES, "gpus_per_node": 1,
                "shape": shape, "executor": executor, "cluster_interface": "eth0",
                "options": {"max_model_len": 2048, "enforce_eager": True}}
    result = vllm_multinode_plan(instance, FACTS, NODES + ["ops"], MODEL_CONFIG)
    assert result["problems"] == [], result["problems"]
    return result


def expected(args):
    """{argparse dest: value} for each option of args (True for a flag)."""
    wanted = {}
    i = 0
    while i < len(args):
        dest = args[i][2:].replace("-", "_")
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            wanted[dest] = args[i + 1]
            i += 2
        else:
            wanted[dest] = True
            i += 1
    return wanted


def cases(directory):
    found = []
    for shape in SHAPES:
        for executor in EXECUTORS:
            p = plan(shape, executor)
            config_file = "%s.yaml" % p["name"]
            with open(os.path.join(directory, config_file), "w") as f:
                yaml.safe_dump(p["config"], f)
            for node in p["nodes"]:
                if executor == "ray" and node["role"] == "worker":
                    assert node["vllm_args"] == [] and node["ray_start"][:3] == ["ray", "start", "--block"]
                    continue
                argv = ["serve", MODEL, "--config", "/cases/" + config_file] + node["vllm_args"]
                expect = dict(expected(node["vllm_args"]), model_tag=MODEL, max_model_len=2048, enforce_eager=True,
                              served_model_name=["tiny-chat"])
                found.append({"label": "%s/%s/%s" % (shape, executor, node["role"]), "argv": argv, "expect": expect})
    return found


NEGATIVE = [
    {"label": "control/misspelt", "argv": ["serve", MODEL, "--nnodes", "2", "--node-rnak", "1"], "expect": {}},
    {"label": "control/abbreviated", "argv": ["serve", MODEL, "--nnode", "2"], "expect": {"nnodes": 2}},
    {"label": "control/wrong-value", "argv": ["serve", MODEL, "--nnodes", "2"], "expect": {"nnodes": 3}},
]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multinode-args")
    os.chmod(str(directory), 0o755)
    positive = cases(str(directory))
    with open(os.path.join(str(directory), "cases.json"), "w") as f:
        json.dump(positive + NEGATIVE, f)
    subprocess.run(["cp", os.path.join(ROOT, "tests", "integration", "vllm_parse_args.py"), str(directory)], check=True)
    for name in os.listdir(str(directory)):
        os.chmod(os.path.join(str(directory), name), 0o644)
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", "%s:/cases:ro" % directory, "--entrypoint", "python3",
         IMAGE, "/cases/vllm_parse_args.py", "/cases/cases.json"],
        capture_output=True, text=True, timeout=180)
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and len(lines) == len(positive) + len(NEGATIVE), (run.returncode, run.stdout, run.stderr[-3000:])
    return positive, dict((line["label"], line) for line in lines)


def test_every_rendered_node_parses_with_vllms_own_parser(parsed):
    positive, results = parsed
    # 3 shapes x mp (head and worker) + 3 shapes x ray (the head only: Ray workers run no vllm serve)
    assert len(positive) == 9
    failed = ["%s: %s" % (c["label"], "; ".join(results[c["label"]]["errors"])) for c in positive if not results[c["label"]]["ok"]]
    assert not failed, "\n".join(failed)


def test_the_check_refuses_a_misspelt_an_abbreviated_and_a_misparsed_option(parsed):
    _, results = parsed
    assert any("--node-rnak" in e for e in results["control/misspelt"]["errors"]), results["control/misspelt"]
    assert results["control/abbreviated"]["errors"] == ["--nnode is not an option name of vllm serve"]
    assert results["control/wrong-value"]["errors"] == ["nnodes parsed as 2, not 3"]
