"""Runs inside the vLLM image (python3 /it/vllm_kv_check.py < cases.json): vLLM's own KV cache sizing
and start-up check for each case, as JSON on stdout.

Each case: {"name", "config" (a config.json), "max_model_len", "tp", "pp", "kv_cache_dtype", "available"
(bytes of KV cache memory per GPU to try)}. For each, vLLM builds its ModelConfig from the config.json,
the layer specs its attention layers would report on the fullest rank (KV heads and head size from
ModelConfig, the layers of the fullest pipeline stage from get_pp_indices), and get_kv_cache_configs
decides, for each amount of memory, whether one request of max_model_len fits (its ValueError "To serve
at least one request ...") exactly as at start.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vllm.config import CacheConfig, ModelConfig, VllmConfig  # noqa: E402
from vllm.distributed.utils import get_pp_indices  # noqa: E402
from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_kv_cache_configs  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, MLAAttentionSpec  # noqa: E402


class Parallel(object):
    """What ModelConfig.get_num_kv_heads reads of a ParallelConfig."""

    def __init__(self, tp):
        self.tensor_parallel_size = tp


def check(case):
    directory = tempfile.mkdtemp()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(case["config"], f)
    model = ModelConfig(model=directory, skip_tokenizer_init=True, max_model_len=case["max_model_len"])
    cache = CacheConfig(block_size=16, cache_dtype=case.get("kv_cache_dtype", "auto"))
    cache.kv_cache_layout = "LBNHC"
    config = VllmConfig(model_config=model, cache_config=cache)
    dtype = kv_cache_dtype_str_to_dtype(cache.cache_dtype, model)
    tp, pp = case.get("tp", 1), case.get("pp", 1)
    layers = max(end - start for start, end in (get_pp_indices(model.get_total_num_hidden_layers(), r, pp) for r in range(pp)))
    if model.use_mla:
        spec = MLAAttentionSpec(block_size=16, num_kv_heads=1, head_size=model.get_head_size(), dtype=dtype,
                                cache_dtype_str=cache.cache_dtype)
    else:
        spec = FullAttentionSpec(block_size=16, num_kv_heads=model.get_num_kv_heads(Parallel(tp)),
                                 head_size=model.get_head_size(), dtype=dtype)
    specs = dict(("model.layers.%d.self_attn.attn" % i, spec) for i in range(layers))
    verdicts = {}
    for available in case["available"]:
        try:
            get_kv_cache_configs(config, [dict(specs)], [int(available)])
            verdicts[str(available)] = "fits"
        except ValueError as e:
            if "To serve at least one request" not in str(e) and "No available memory" not in str(e):
                raise
            verdicts[str(available)] = str(e).split(". Try", 1)[0]
    return {"name": case["name"], "max_model_len": model.max_model_len, "layers_per_gpu": layers,
            "num_kv_heads": spec.num_kv_heads, "head_size": spec.head_size, "page_size_bytes": spec.page_size_bytes,
            "bytes_per_token": layers * spec.page_size_bytes // 16, "use_mla": bool(model.use_mla),
            "verdicts": verdicts}


if __name__ == "__main__":
    print(json.dumps([check(case) for case in json.load(sys.stdin)]))
