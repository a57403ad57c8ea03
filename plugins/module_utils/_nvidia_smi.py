# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# This module_utils is PRIVATE to the collection. It can change without notice
# and must not be used by anything outside llmops.vllm.
#
# Parsers for what nvidia-smi prints: the CSV of --query-gpu (read by its header,
# so any subset and order of fields parses, with or without units), the banner of
# a plain `nvidia-smi` (the only place older drivers show the CUDA version), the
# GPU and MIG device list of `nvidia-smi -L`, and the errors it reports instead.

from __future__ import annotations

import csv
import re

# What the module asks for. The first five exist on every driver this collection
# supports; the others are dropped one by one when a driver rejects them
# ('Field "cuda_version" is not a valid field to query.'), so an older driver
# still answers with what it knows.
REQUIRED_FIELDS = ("index", "uuid", "name", "driver_version", "memory.total")
OPTIONAL_FIELDS = ("pci.bus_id", "memory.used", "memory.free", "compute_cap", "mig.mode.current", "cuda_version")
QUERY_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS

# Values nvidia-smi prints when it has none; the text in brackets says why.
_NO_VALUE = re.compile(r"^\[?(N/A|Not Supported|Unknown Error|Insufficient Permissions|GPU requires reset|"
                       r"Requested functionality has been deprecated|Not Available)\]?$", re.IGNORECASE)
_UNIT = re.compile(r"^(-?[0-9]+(?:\.[0-9]+)?)\s*(MiB|MHz|W|%|C)?$")
_INVALID_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query', re.IGNORECASE)
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*([0-9]+\.[0-9]+)")
_GPU_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[0-9a-zA-Z/-]+)\)\s*$")

# Keys of a parsed GPU, by query field.
_KEYS = {
    "index": "index",
    "uuid": "uuid",
    "name": "name",
    "pci.bus_id": "pci_bus_id",
    "driver_version": "driver_version",
    "memory.total": "memory_total_mib",
    "memory.used": "memory_used_mib",
    "memory.free": "memory_free_mib",
    "compute_cap": "compute_capability",
    "mig.mode.current": "mig_mode",
    "cuda_version": "cuda_version",
}
_INTEGER_KEYS = ("index", "memory_total_mib", "memory_used_mib", "memory_free_mib")


class NvidiaSmiError(Exception):
    """nvidia-smi did not list GPUs. kind names the cause, hint what to do."""

    def __init__(self, kind, message, hint):
        super(NvidiaSmiError, self).__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint

    def as_dict(self):
        return {"kind": self.kind, "message": self.message, "hint": self.hint}


# (kind, pattern in the output, hint). The first match wins.
_ERRORS = (
    ("driver_library_mismatch", re.compile(r"Driver/library version mismatch", re.I),
     "The NVIDIA kernel module that is loaded is older or newer than the driver's libraries, usually after a "
     "driver upgrade without a reboot. Reboot the host (or unload and reload the nvidia modules)."),
    ("driver_not_loaded", re.compile(r"couldn't communicate with the NVIDIA driver|NVIDIA driver is not loaded|"
                                     r"Failed to initialize NVML: Driver Not Loaded", re.I),
     "The NVIDIA kernel driver is not loaded. Install the driver that matches the running kernel "
     "(for example nvidia-driver-580-server on Ubuntu), reboot, and check `lsmod | grep nvidia` and `dmesg | grep -i nvrm`."),
    ("no_devices", re.compile(r"No devices were found", re.I),
     "The driver is loaded but sees no GPU. Check `lspci -nn | grep -i nvidia`, that the GPUs are not "
     "passed through to a VM or bound to vfio-pci, and `dmesg | grep -i nvrm` for GPUs that fell off the bus."),
    ("insufficient_permissions", re.compile(r"Insufficient Permissions", re.I),
     "nvidia-smi ran without access to /dev/nvidia*. Run it as root (become: true)."),
    ("nvml_error", re.compile(r"Failed to initialize NVML", re.I),
     "NVML could not talk to the GPUs. On the host this usually needs a reboot after a driver change; "
     "inside a container it means the container lost its GPUs (see the README on `systemctl daemon-reload`)."),
)


def classify_failure(rc, output):
    """The NvidiaSmiError for a failed nvidia-smi run (rc != 0 or no GPU rows)."""
    text = (output or "").strip()
    for kind, pattern, hint in _ERRORS:
        if pattern.search(text):
            return NvidiaSmiError(kind, _first_lines(text), hint)
    return NvidiaSmiError(
        "failed",
        "nvidia-smi exited with %s: %s" % (rc, _first_lines(text) or "no output"),
        "Run `nvidia-smi` on the host and fix what it reports; the NVIDIA driver must list the GPUs.",
    )


def _first_lines(text, count=3):
    return " ".join(line.strip() for line in text.splitlines()[:count] if line.strip())


def invalid_field(output):
    """The field name a driver rejected, or None."""
    match = _INVALID_FIELD.search(output or "")
    return match.group(1) if match else None


def _header_key(column):
    # "memory.total [MiB]" -> "memory.total"; nvidia-smi keeps the unit in the header even with nounits.
    return re.sub(r"\s*\[[^\]]*\]\s*$", "", column.strip()).strip().lower()


def _value(raw):
    text = raw.strip()
    if not text or _NO_VALUE.match(text):
        return None
    match = _UNIT.match(text)
    if match and match.group(2):
        return match.group(1)
    return text


def parse_query_csv(text):
    """Parse `nvidia-smi --query-gpu=... --format=csv[,nounits]` output (with its header).

    Returns a list of GPU dicts keyed as in _KEYS (unknown columns keep their field name),
    integers for indexes and MiB, None where nvidia-smi printed [N/A] or the like.
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return []
    rows = list(csv.reader(lines, skipinitialspace=True))
    header = [_header_key(column) for column in rows[0]]
    if not all(_FIELD_NAME.match(column) for column in header):
        raise ValueError("nvidia-smi printed no CSV header: %s" % _first_lines(text))
    gpus = []
    for row in rows[1:]:
        if len(row) != len(header):
            raise ValueError("nvidia-smi printed a row with %d values for %d columns: %s" % (len(row), len(header), ", ".join(row)))
        gpu = {}
        for field, raw in zip(header, row):
            key = _KEYS.get(field, field)
            value = _value(raw)
            if value is not None and key in _INTEGER_KEYS:
                value = int(float(value))
            gpu[key] = value
        gpus.append(gpu)
    return gpus


def parse_cuda_version(banner):
    """The CUDA version in a plain `nvidia-smi` (or `nvidia-smi -q`) output, or None."""
    match = _CUDA_VERSION.search(banner or "")
    return match.group(1) if match else None


def parse_gpu_list(text):
    """Parse `nvidia-smi -L`: the GPUs and, under a GPU in MIG mode, its MIG devices."""
    gpus, mig_devices = [], []
    current = None
    for line in (text or "").splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu:
            current = {"index": int(gpu.group(1)), "name": gpu.group(2), "uuid": gpu.group(3)}
            gpus.append(current)
            continue
        mig = _MIG_LINE.match(line)
        if mig and current is not None:
            mig_devices.append({
                "gpu_index": current["index"],
                "gpu_uuid": current["uuid"],
                "profile": mig.group(1),
                "device_index": int(mig.group(2)),
                "uuid": mig.group(3),
            })
    return gpus, mig_devices


def summarize(gpus, cuda_version=None, mig_devices=None):
    """The facts a role checks, from parsed GPUs."""
    drivers = sorted(set(g.get("driver_version") for g in gpus if g.get("driver_version")))
    cudas = sorted(set(g.get("cuda_version") for g in gpus if g.get("cuda_version")))
    return {
        "count": len(gpus),
        "names": [g.get("name") for g in gpus],
        "uuids": [g.get("uuid") for g in gpus],
        "driver_version": drivers[0] if drivers else None,
        "cuda_version": cudas[0] if cudas else cuda_version,
        "memory_total_mib": sum(g.get("memory_total_mib") or 0 for g in gpus),
        "compute_capabilities": sorted(set(g.get("compute_capability") for g in gpus if g.get("compute_capability"))),
        "mig_enabled": any((g.get("mig_mode") or "").lower() == "enabled" for g in gpus),
        "mig_devices": mig_devices or [],
    }
