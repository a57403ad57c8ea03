#!/usr/bin/env python3
"""Writes llmops-test/prefill-chat, the random-weight model of benchmarks/routing.py, in Hugging Face
cache layout under OUTDIR. Runs inside the vLLM test image, next to its make-tiny-model
(tests/images/vllm-cpu/make_tiny_model.py), whose tokenizer, chat template and cache layout it reuses;
only the model is larger, so that a long prompt's prefill dominates its time to first token on a CPU
core (tiny-chat's prefill of 2,000 tokens takes milliseconds):

    docker run --rm --network none --entrypoint python3 -v $PWD/benchmarks:/bench:ro -v OUTDIR:/out \\
        llmops-test/vllm-openai-cpu:v0.32.0 /bench/prefill_model.py /out

Llama, hidden size 512, 8 layers, 8 heads of 64, MLP 1536, bf16: about 27 M parameters, 55 MB.
"""

import importlib.machinery
import os
import sys

NAME = "prefill-chat"
CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=8, head_dim=64, max_position_embeddings=4096)

tiny = importlib.machinery.SourceFileLoader("make_tiny_model", "/usr/local/bin/make-tiny-model").load_module()


def build_snapshot(workdir, with_chat_template):
    """make-tiny-model's snapshot with CONFIG's sizes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tiny.build_tokenizer(), bos_token="<s>", eos_token="<|im_end|>",
                                        unk_token="<unk>", pad_token="<pad>", model_max_length=CONFIG["max_position_embeddings"])
    tokenizer.chat_template = tiny.CHAT_TEMPLATE
    tokenizer.save_pretrained(workdir)
    config = LlamaConfig(vocab_size=((len(tokenizer) + 63) // 64) * 64, rms_norm_eps=1e-5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **CONFIG)
    torch.manual_seed(tiny.SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(workdir, safe_serialization=True)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "/out"
    os.umask(0o022)
    tiny.build_snapshot = build_snapshot
    model_id, revision, path = tiny.write_cache_entry(outdir, NAME, True)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                os.chmod(os.path.join(root, f), 0o644)
    print("prefill_model: %s revision %s in %s" % (model_id, revision, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
