#!/usr/bin/env python3
"""Write tiny random-weight Llama models in Hugging Face cache layout.

Baked into the test image as /usr/local/bin/make-tiny-model. It writes, under
OUTDIR (the directory to mount as HF_HOME, /root/.cache/huggingface), the tree
that `huggingface-cli download` would leave behind:

    hub/models--llmops-test--tiny-chat/{blobs,refs/main,snapshots/<rev>/...}
    hub/models--llmops-test--tiny-nochat/...

tiny-chat carries a ChatML chat template; tiny-nochat is the same model
without any chat template, so vLLM answers /v1/chat/completions with 400.
Both are a few MB, fully deterministic (fixed seed, fixed corpus; the
revision is a hash of the content), and serve offline with HF_HUB_OFFLINE=1:

    vllm serve llmops-test/tiny-chat --served-model-name tiny-chat
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile

# Nothing here may touch the network, and the output must not depend on
# thread scheduling.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ORG = "llmops-test"
SEED = 1234
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CORPUS = """\
The quick brown fox jumps over the lazy dog.
vLLM serves large language models through an OpenAI compatible API.
Ansible roles install Docker, pull the image and start the inference server.
Hello! How can I help you today? Please answer in one short sentence.
The system says: you are a helpful assistant. The user asks a question.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, punctuation: . , ; : ! ? ( ) [ ] { } " ' - _ / \\
A tiny model for tests: random weights, deterministic output, no downloads.
"""


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # No initial byte alphabet: every token is printable ASCII from the
    # corpus, so whatever the random weights pick decodes to readable text
    # (other input characters become <unk>).
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines() * 8, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def build_snapshot(workdir, with_chat_template):
    """Save tokenizer and model files into workdir; return nothing."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    raw = build_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=2048,
    )
    if with_chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(workdir)

    vocab = ((len(tokenizer) + 63) // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(workdir, safe_serialization=True)

    # transformers may put the template into tokenizer_config.json or into
    # chat_template.jinja/.json depending on its version: make sure the
    # no-chat variant has none anywhere.
    if not with_chat_template:
        import json

        for name in ("chat_template.jinja", "chat_template.json"):
            path = os.path.join(workdir, name)
            if os.path.exists(path):
                os.remove(path)
        cfg_path = os.path.join(workdir, "tokenizer_config.json")
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
        if cfg.pop("chat_template", None) is not None:
            with open(cfg_path, "w", encoding="utf-8") as fh:
                json.dump(cfg, fh, indent=2, sort_keys=True)
                fh.write("\n")


def blob_id(path):
    """The id the Hub gives a file: sha256 for LFS files, git blob sha1 otherwise."""
    with open(path, "rb") as fh:
        data = fh.read()
    if path.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_cache_entry(outdir, name, with_chat_template):
    repo_dir = os.path.join(outdir, "hub", f"models--{ORG}--{name}")
    with tempfile.TemporaryDirectory(prefix="tiny-model-") as workdir:
        build_snapshot(workdir, with_chat_template)
        files = sorted(os.listdir(workdir))
        ids = {f: blob_id(os.path.join(workdir, f)) for f in files}
        revision = hashlib.sha1(
            "".join(f"{ids[f]} {f}\n" for f in files).encode()
        ).hexdigest()

        # Replace, never merge: a stale snapshot must not survive a rerun.
        if os.path.isdir(repo_dir):
            shutil.rmtree(repo_dir)
        blobs = os.path.join(repo_dir, "blobs")
        snapshot = os.path.join(repo_dir, "snapshots", revision)
        os.makedirs(blobs)
        os.makedirs(snapshot)
        os.makedirs(os.path.join(repo_dir, "refs"))
        for f in files:
            shutil.copyfile(os.path.join(workdir, f), os.path.join(blobs, ids[f]))
            os.symlink(os.path.join("..", "..", "blobs", ids[f]), os.path.join(snapshot, f))
        with open(os.path.join(repo_dir, "refs", "main"), "w", encoding="ascii") as fh:
            fh.write(revision)
    return f"{ORG}/{name}", revision, repo_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "outdir",
        nargs="?",
        default="/out",
        help="directory to use as HF_HOME (default: /out)",
    )
    args = parser.parse_args()

    os.umask(0o022)
    os.makedirs(args.outdir, exist_ok=True)
    for name, with_template in (("tiny-chat", True), ("tiny-nochat", False)):
        model_id, revision, path = write_cache_entry(args.outdir, name, with_template)
        print(f"make-tiny-model: {model_id} revision {revision} in {path}")
    # Readable by every user, whatever umask the caller had.
    for root, dirs, files in os.walk(os.path.join(args.outdir, "hub")):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o644)
    return 0


if __name__ == "__main__":
    sys.exit(main())
