# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# This module_utils is PRIVATE to the collection. It can change without notice
# and must not be used by anything outside llmops.vllm.
#
# Why a vLLM server did not start, from its log: the exceptions it raised (whole, also when their
# message runs over several lines) and, for the failures users of vLLM in Docker hit most, the
# variable of this collection that fixes them.

from __future__ import annotations

import re

# vLLM's log prefix, "(EngineCore_DP0 pid=24) ERROR 11-24 22:18:39 [core.py:1510] "; raw tracebacks have none.
LOG_PREFIX = re.compile(r"^(?:\((\w+) pid=\d+\)\s+)?(?:(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s?)?")
# An exception line outside a traceback: "RuntimeError: ...", "huggingface_hub.errors.HFValidationError: ..."
EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)): (\S.*)$")
# The line that ends a traceback: "Name: message" or a bare "Name" (any exception class, such as
# torch._dynamo.exc.Unsupported or KeyboardInterrupt, not only those ending in Error).
TRACEBACK_END = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)(?::\s?(.*))?$")
CHAINED = ("The above exception was the direct cause", "During handling of the above exception")
# A message longer than this many lines is cut (a pydantic error lists each failing field in 2-3 lines).
MAX_LINES = 12


def _split(line):
    """(source, level, text) of one log line; source and level are None for lines without vLLM's prefix."""
    match = LOG_PREFIX.match(line)
    return match.group(1), match.group(2), line[match.end():].rstrip()


def exceptions(log, limit=3):
    """The distinct exceptions of a log, most recent last, each as its whole message.

    An exception is the line after a traceback's frames ("ValueError: ..."), with the lines of its
    message that follow it (a pydantic ValidationError names each failing field on lines of its own),
    or a line that is an exception alone or after an ERROR prefix. A warning that mentions an error
    ("... can cause fd limit errors like `OSError: ...`") is not one.
    """
    lines = [_split(line) for line in log]
    found = []
    i = 0
    while i < len(lines):
        source, level, text = lines[i]
        if level in ("DEBUG", "INFO", "WARNING"):
            i += 1
            continue
        message = None
        if text.startswith("Traceback (most recent call last):"):
            # skip the frames: indented lines of the same source
            j = i + 1
            while j < len(lines) and lines[j][0] == source and lines[j][1] not in ("DEBUG", "INFO", "WARNING") \
                    and (lines[j][2].startswith((" ", "\t")) or not lines[j][2]):
                j += 1
            if j < len(lines) and lines[j][0] == source and TRACEBACK_END.match(lines[j][2]):
                message, i = _message(lines, j)
            else:
                i = j
        else:
            match = EXCEPTION_LINE.match(text.strip())
            if match:
                message, i = _message(lines, i)
            else:
                i += 1
        if message:
            if message in found:
                found.remove(message)
            found.append(message)
    return found[-limit:]


def _message(lines, start):
    """The exception message that starts at lines[start] and the index after it."""
    source, level, first = lines[start]
    text = [first.strip()]
    j = start + 1
    while j < len(lines) and len(text) < MAX_LINES:
        s, lvl, line = lines[j]
        if not line.strip() and s == source and j + 1 < len(lines) and _continues(lines[j + 1], source, level):
            # huggingface_hub's messages hold a blank line ("401 Client Error.\n\nCannot access gated repo ...")
            text.append("")
            j += 1
            continue
        if s != source or lvl in ("DEBUG", "INFO", "WARNING") or not line.strip():
            break
        if line.startswith("Traceback (most recent call last):") or line.startswith(CHAINED):
            break
        if level is None and lvl is not None:
            break
        # an unindented exception line right after is the next exception, not this one's message
        if not line.startswith((" ", "\t")) and EXCEPTION_LINE.match(line.strip()):
            break
        text.append(line.rstrip())
        j += 1
    return "\n".join(text), j


# torch's C++ logging ("W1130 13:44:17.616000 1 torch/_library/triton.py:53] ..."), unprefixed like a traceback
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def _continues(entry, source, level):
    """Whether the line after a blank one still belongs to the message before it."""
    s, lvl, line = entry
    if s != source or lvl != level or not line.strip() or GLOG_LINE.match(line):
        return False
    if line.startswith("Traceback (most recent call last):") or line.startswith(CHAINED):
        return False
    return not EXCEPTION_LINE.match(line.strip())


# What fixes the start-up failures of vLLM in Docker that users report most (vLLM's issue tracker),
# in this collection's variables. Each entry: a pattern of vLLM's own message, and the advice.
# The patterns quote vLLM 0.32.0's and huggingface_hub's messages (tests/unit/.../test_vllm_startup.py
# cites the source line of each).
ADVICE = [
    (re.compile(r"/dev/shm|shared[- ]memory|Bus error|unable to (?:write to|mmap) .*torch_|No space left on device.*shm", re.I),
     "vLLM's processes ran out of shared memory: keep vllm_server_ipc_mode: host (the default), or give the container a "
     "larger /dev/shm with vllm_server_shm_size (for example 16g) when its IPC namespace must stay private."),
    (re.compile(r"offline mode is enabled|LocalEntryNotFoundError|Cannot find an appropriate cached snapshot|"
                r"couldn't connect to '?https?://[^ ]*'? to load (?:the )?files|outgoing traffic has been disabled|"
                r"OfflineModeIsEnabled|HF_HUB_OFFLINE", re.I),
     "The model is not in the host's model cache (vllm_server_base_dir/models/hub) while the instance runs offline "
     "(HF_HUB_OFFLINE in vllm_server_env or the instance's env): let the role fetch it first "
     "(vllm_server_download_models: true, or download: true on the instance), or remove HF_HUB_OFFLINE so vLLM "
     "downloads it."),
    # (not "401 Client Error" or "gated repo" alone: the Hub answers a missing repo with 401 too, as
    # RepositoryNotFoundError, whose message says "If you are trying to access a private or gated repo")
    (re.compile(r"GatedRepoError|Cannot access gated repo|trying to access a gated repo|Access to model .* is restricted|"
                r"Invalid credentials in Authorization|"
                r"Invalid user token|401 Client Error: Unauthorized for url", re.I),
     "Hugging Face refused the download: the model is gated or private. Set vllm_server_hf_token (from Ansible Vault) to a "
     "token of an account that accepted the model's license on its Hugging Face page."),
    (re.compile(r"RepositoryNotFoundError|Repository Not Found|is not a valid model identifier|Repo id must be in the form|"
                r"Invalid repository ID or local directory", re.I),
     "The model id does not name a model on Hugging Face or a directory inside the container: check the instance's model "
     "(vllm_server_model); a private model also needs vllm_server_hf_token."),
    (re.compile(r"User-specified max_model_len .* is greater than the derived max_model_len|"
                r"max_model_len.* is greater than .*max_position_embeddings", re.I | re.S),
     "max_model_len in the instance's options (vllm_server_options) is longer than the model's context: lower it to at "
     "most the model's max_position_embeddings, or leave it out to use the model's own."),
    (re.compile(r"larger than the available KV cache memory|No available memory for the cache blocks|"
                r"estimated maximum model length is|Insufficient memory for KV cache|max seq len .* is larger than the maximum number of tokens", re.I),
     "The KV cache does not fit next to the weights: lower max_model_len or raise gpu_memory_utilization in the "
     "instance's options (vllm_server_options), or give the instance more GPUs (gpus); on a CPU server raise "
     "VLLM_CPU_KVCACHE_SPACE in its env."),
    (re.compile(r"Available memory on node \d+ .* on kv cache allocation is less than requested memory for kv", re.I | re.S),
     "The CPU server's KV cache space is larger than the host's free memory: lower VLLM_CPU_KVCACHE_SPACE (GiB) in the "
     "instance's env (vllm_server_env) or kv_cache_memory_bytes in its options, or free memory on the host."),
    (re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory", re.I),
     "The GPU ran out of memory: lower gpu_memory_utilization or max_model_len (or max_num_seqs) in the instance's "
     "options, serve a quantized model, or give the instance more GPUs (gpus; tensor_parallel_size follows)."),
    (re.compile(r"Free memory on device .* is less than desired GPU memory utilization", re.I | re.S),
     "Other processes already hold part of the GPU's memory (another instance on the same GPU?): lower "
     "gpu_memory_utilization in the instance's options so that the instances sharing a GPU add up to at most 1.0, or "
     "give each instance its own GPUs (gpus)."),
    (re.compile(r"trust_remote_code|execute the configuration file in that repo|contains custom code", re.I),
     "The model ships its own code: set trust_remote_code: true in the instance's options if you trust it."),
    (re.compile(r"architectures? \[?.*\]? (?:are|is) not supported|does not recognize this architecture|"
                r"has model type `[^`]+` but Transformers does not recognize", re.I | re.S),
     "This vLLM does not know the model's architecture: use a newer vLLM image (vllm_server_image), or set "
     "trust_remote_code: true in the instance's options when the model ships its own code."),
    (re.compile(r"Bfloat16 is only supported on GPUs with compute capability|does not support bfloat16|bf16 is not supported", re.I),
     "The GPU cannot compute in bfloat16 (compute capability below 8.0): set dtype: half in the instance's options."),
    (re.compile(r"attention heads \(\d+\) must be divisible by tensor parallel size", re.I),
     "The model's attention heads do not divide evenly over the instance's GPUs: give the instance a number of GPUs "
     "(gpus) that divides them, or set tensor_parallel_size in its options."),
    (re.compile(r"Failed to infer device type|Found no NVIDIA driver|No CUDA GPUs are available|could not select device driver", re.I),
     "The container sees no usable GPU: check that the nvidia_container_toolkit role ran on the host, which GPUs the "
     "instance asks for (vllm_server_gpus or its gpus; a host marked llmops_cpu_only gets none and needs a vLLM CPU "
     "image), and that CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES in vllm_server_env (or the instance's env) do "
     "not hide them."),
    (re.compile(r"NVIDIA driver on your system is too old|CUDA driver version is insufficient for CUDA runtime version|"
                r"system has unsupported display driver / cuda driver combination|"
                r"forward compatibility was attempted on non supported HW", re.I),
     "The host's NVIDIA driver is older than the CUDA that the image was built with: use a vLLM image built for the "
     "driver's CUDA (vllm_server_image, or the instance's image; nvidia-smi shows the newest CUDA the driver supports), "
     "or upgrade the host's driver."),
    (re.compile(r"quantization method .* is not supported|Unknown quantization method|Quantization method specified in the model config|"
                r"quantization is currently not supported in|Cannot find the config file for \w+", re.I),
     "The quantization in the instance's options does not match the model or this GPU: leave quantization out for a "
     "pre-quantized model (vLLM reads it from the model's config), or choose a method this GPU supports."),
    (re.compile(r"ValidationError: \d+ validation errors? for \w*Config", re.I),
     "vLLM refused an option value: correct the field named above in the instance's options (vllm_server_options)."),
]
# Said only when nothing more precise was: the last entry of ADVICE.
FALLBACK = 1


def advice(messages):
    """The distinct sentences that say what to change, for a list of exception messages (see exceptions())."""
    text = "\n".join(messages)
    found = []
    for pattern, sentence in ADVICE[:-FALLBACK]:
        if pattern.search(text) and sentence not in found:
            found.append(sentence)
    if not found:
        found = [sentence for pattern, sentence in ADVICE[-FALLBACK:] if pattern.search(text)]
    return found


# ---- a start that hangs in the GPUs' collective communication ----------------------------------------
#
# With tensor (or pipeline) parallelism over GPUs whose peer-to-peer path is broken (PCIe ACS or an IOMMU
# in the way, a VM's passthrough, consumer cards), NCCL's first all-reduce, or vLLM's custom all-reduce
# later, waits forever: nothing fails, the server never listens, and a verification would wait out its
# whole timeout. vLLM's log shows where it stopped. The patterns quote vLLM 0.32.0 (the unit tests cite
# each source line) and NCCL.

# `docker logs --timestamps`: "2026-12-07T03:20:01.123456789Z <line>" (Docker's clock, UTC)
DOCKER_TIMESTAMP = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z ")
# vllm/distributed/device_communicators/pynccl.py:148, rank 0 only, right before ncclCommInitRank and a
# one-element warm-up all-reduce; in a healthy start the next lines follow within seconds.
NCCL_STARTED = re.compile(r"vLLM is using nccl==(\S+)")
# vllm/distributed/device_communicators/shm_broadcast.py:109, logged (INFO) every 60 s
# (VLLM_RINGBUFFER_WARNING_INTERVAL) while the engine waits for its workers: a heartbeat, not progress.
HEARTBEAT = re.compile(r"No available shared memory broadcast block found in \d+ seconds")
# What names the peer-to-peer path as the cause: vLLM's own P2P test
# (device_communicators/custom_all_reduce.py:286, all_reduce_utils.py:317) and NCCL's warnings
# ("host:pid:tid [rank] NCCL WARN ...", printed with NCCL_DEBUG=WARN or INFO).
P2P_TROUBLE = re.compile(r"Custom allreduce is disabled because your platform lacks GPU P2P capability or P2P test failed|"
                         r"Two processes do not agree on the P2P access status|NCCL WARN .*")
# NCCL's own lines, printed with NCCL_DEBUG: "gpu-1:215:230 [0] NCCL INFO ...", "NCCL version 2.28.9+cuda12.9"
NCCL_OWN = re.compile(r"^\S+:\d+:\d+ \[\d+\] NCCL (?:INFO|WARN|TRACE) |^NCCL version ")
# How long the log may stay quiet before the start counts as hung: after NCCL started (its warm-up
# takes milliseconds, its set-up seconds even on 8 GPUs); after vLLM warned about the P2P path, while
# the engine waits for its workers (a long torch.compile of a big model is quiet for minutes too).
NCCL_QUIET = 180
P2P_QUIET = 600

HANG_ADVICE = (
    "The instance's GPUs hang in their collective communication (NCCL or vLLM's custom all-reduce), which happens "
    "where the GPUs' peer-to-peer path is broken (PCIe ACS or an IOMMU in the way, a VM's passthrough, consumer "
    "GPUs): set NCCL_P2P_DISABLE: \"1\" in vllm_server_env (or the instance's env), and disable_custom_all_reduce: true "
    "in the instance's options (vllm_server_options) if it still hangs; or give the instance one GPU (gpus: 1).")


def docker_time(line):
    """(seconds since the epoch, the line without the timestamp) of a `docker logs --timestamps` line,
    or (None, line) for a line without one."""
    match = DOCKER_TIMESTAMP.match(line)
    if not match:
        return None, line
    import calendar

    parts = match.groups()
    seconds = calendar.timegm(tuple(int(p) for p in parts[:6]) + (0, 0, 0))
    return seconds + float("0." + (parts[6] or "0")), line[match.end():]


class HangWatch(object):
    """Whether a vLLM start hangs in the GPUs' collective communication, from its log as it grows.

    feed() takes the new lines of `docker logs --timestamps` (stdout and stderr in any order: they are
    sorted by time); hang(now) says why the start hangs, or None. Only what the decision needs is kept.
    """

    def __init__(self):
        self.last_time = None       # timestamp of the newest line seen
        self.last_stamp = None      # the same as Docker wrote it: where the next read starts (docker logs --since)
        self.last_lines = set()     # the lines with that timestamp, not to count twice
        self.progress = None        # (time, text) of the newest line that is not a heartbeat
        self.heartbeats = 0         # heartbeats since that line
        self.nccl = None            # (time, version) of "vLLM is using nccl==..."
        self.trouble = []           # P2P warnings and NCCL WARN lines, in order, distinct (at most 5)

    def feed(self, lines):
        stamped = []
        line_of = {}
        for line in lines:
            when, text = docker_time(line)
            if when is not None:
                stamped.append((when, text))
                line_of[(when, text)] = line
        for when, text in sorted(stamped, key=lambda entry: entry[0]):
            if self.last_time is not None and (when < self.last_time or (when == self.last_time and text in self.last_lines)):
                continue
            if when != self.last_time:
                self.last_time, self.last_lines = when, set()
                self.last_stamp = DOCKER_TIMESTAMP.match(line_of[(when, text)]).group(0).strip()
            self.last_lines.add(text)
            message = _split(text)[2]
            trouble = P2P_TROUBLE.search(message)
            if trouble and trouble.group(0) not in self.trouble and len(self.trouble) < 5:
                self.trouble.append(trouble.group(0))
            if HEARTBEAT.search(message):
                self.heartbeats += 1
                continue
            if NCCL_OWN.search(message):
                # NCCL talking about its set-up (NCCL_DEBUG) is not vLLM getting past it
                continue
            self.progress, self.heartbeats = (when, message), 0
            nccl = NCCL_STARTED.search(message)
            if nccl:
                self.nccl = (when, nccl.group(1))

    def hang(self, now):
        """A sentence saying where the start hangs, or None while it may still be working."""
        if self.nccl is None or self.progress is None:
            return None
        quiet = now - self.progress[0]
        if NCCL_STARTED.search(self.progress[1]) and quiet >= NCCL_QUIET:
            return ("vLLM started NCCL %s for the instance's GPUs and has logged nothing for %.0fs since (its set-up and "
                    "warm-up all-reduce take seconds): the GPUs hang in NCCL, and waiting longer will not help."
                    % (self.nccl[1], quiet))
        if self.trouble and self.heartbeats and quiet >= P2P_QUIET:
            return ("vLLM's engine has waited for its GPU workers with nothing logged for %.0fs but its 'No available shared "
                    "memory broadcast block found' heartbeat, after it warned about the GPUs' peer-to-peer path (%s): the "
                    "workers hang in a collective, and waiting longer will not help." % (quiet, " | ".join(self.trouble)))
        return None
