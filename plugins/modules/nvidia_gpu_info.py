#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_gpu_info
short_description: The host's NVIDIA GPUs, driver and CUDA version, as nvidia-smi reports them
version_added: 0.1.0
description:
  - Runs C(nvidia-smi --query-gpu=... --format=csv,nounits) and returns each GPU's index, UUID,
    name, PCI bus id, memory (total, used, free, in MiB), compute capability and MIG mode, and the
    driver version.
  - The CSV is read by its header, so a driver that rejects a field (older drivers do not know
    C(cuda_version), for example) is asked again without it, and the rest is still reported.
  - The CUDA version (the newest CUDA the driver supports) comes from the C(cuda_version) field
    where the driver has it, and otherwise from the banner of a plain C(nvidia-smi).
  - When a GPU is in MIG mode, its MIG devices come from C(nvidia-smi -L).
  - A host without a working driver is not an error for this module. RV(available) is false and
    RV(error) says what is wrong and what to do, unless O(require=true).
  - Changes nothing on the host.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
  - llmops.vllm.attributes.read_only
options:
  nvidia_smi:
    description: The nvidia-smi binary. Looked up on C(PATH) when not given.
    type: path
  require:
    description:
      - Fail when nvidia-smi lists no usable GPU, with RV(error)'s message and hint and the way out for a host
        without NVIDIA GPUs (C(llmops_cpu_only)). The collection's roles gate on this, so the sentence is written once.
    type: bool
    default: false
  host:
    description: The host's name in the failure message of O(require) (the roles pass C(inventory_hostname)).
    type: str
    default: this host
  return_raw:
    description: Also return the commands run and their raw output (RV(raw)), for recording fixtures.
    type: bool
    default: false
notes:
  - Run it with C(become) on hosts where C(/dev/nvidia*) is not readable by the connecting user.
seealso:
  - name: nvidia-smi documentation
    description: The fields of C(--query-gpu) (C(nvidia-smi --help-query-gpu) lists what a driver knows).
    link: https://docs.nvidia.com/deploy/nvidia-smi/index.html
"""

EXAMPLES = r"""
- name: Gather the GPUs
  llmops.vllm.nvidia_gpu_info:
  become: true
  register: gpu

- name: Show them
  ansible.builtin.debug:
    msg: "{{ gpu.count }} x {{ gpu.names | unique | join(', ') }}, driver {{ gpu.driver_version }}, CUDA {{ gpu.cuda_version }}"
  when: gpu.available

- name: Stop on a host whose driver is broken
  llmops.vllm.nvidia_gpu_info:
    require: true
  become: true
"""

RETURN = r"""
available:
  description: Whether nvidia-smi listed at least one GPU.
  returned: always
  type: bool
  sample: true
count:
  description: Number of GPUs.
  returned: always
  type: int
  sample: 8
gpus:
  description: One entry per GPU; values nvidia-smi reported as unavailable (C([N/A])) are null.
  returned: always
  type: list
  elements: dict
  sample:
    - index: 0
      uuid: GPU-5d4a3a9e-6d0e-2f4f-9f0c-6e1f0c1a2b3c
      name: NVIDIA H100 80GB HBM3
      pci_bus_id: "00000000:18:00.0"
      driver_version: "580.95.05"
      memory_total_mib: 81559
      memory_used_mib: 0
      memory_free_mib: 81079
      compute_capability: "9.0"
      mig_mode: Disabled
names:
  description: GPU names, in index order.
  returned: always
  type: list
  elements: str
uuids:
  description: GPU UUIDs, in index order.
  returned: always
  type: list
  elements: str
driver_version:
  description: The NVIDIA driver version.
  returned: always
  type: str
  sample: "580.95.05"
cuda_version:
  description: The newest CUDA version the driver supports (what the banner shows as CUDA Version).
  returned: always
  type: str
  sample: "13.0"
cuda_version_source:
  description: Where RV(cuda_version) came from, C(query) (the cuda_version field), C(banner) or C(none).
  returned: always
  type: str
  sample: banner
memory_total_mib:
  description: Sum of the GPUs' memory in MiB.
  returned: always
  type: int
compute_capabilities:
  description: The distinct compute capabilities of the GPUs.
  returned: always
  type: list
  elements: str
  sample: ["9.0"]
mig_enabled:
  description: Whether any GPU is in MIG mode.
  returned: always
  type: bool
mig_devices:
  description: MIG devices (from C(nvidia-smi -L)) of GPUs in MIG mode.
  returned: always
  type: list
  elements: dict
  sample:
    - gpu_index: 0
      gpu_uuid: GPU-9f0cc172-1db7-8b47-7302-fa9b2ade0c7b
      profile: 1g.10gb
      device_index: 0
      uuid: MIG-5a6ef5fb-e69b-5021-a35e-ad1781308f59
unsupported_fields:
  description: Query fields this driver rejected; they are missing from RV(gpus).
  returned: always
  type: list
  elements: str
  sample: ["cuda_version"]
error:
  description: Why no GPU is listed. C(kind) is one of C(not_installed), C(driver_not_loaded), C(no_devices),
    C(driver_library_mismatch), C(insufficient_permissions), C(nvml_error), C(failed); C(hint) says what to do.
  returned: when RV(available) is false
  type: dict
  sample: {"kind": "driver_not_loaded", "message": "NVIDIA-SMI has failed ...", "hint": "Install the driver ..."}
raw:
  description: Each command run, its exit code and output.
  returned: when O(return_raw=true)
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmops.vllm.plugins.module_utils._nvidia_smi import (
    OPTIONAL_FIELDS,
    QUERY_FIELDS,
    NvidiaSmiError,
    classify_failure,
    invalid_field,
    parse_cuda_version,
    parse_gpu_list,
    parse_query_csv,
    summarize,
)


class Runner(object):
    def __init__(self, module, binary, keep_raw):
        self.module = module
        self.binary = binary
        self.raw = [] if keep_raw else None

    def __call__(self, *args):
        command = [self.binary] + list(args)
        rc, out, err = self.module.run_command(command, environ_update={"LC_ALL": "C"})
        if self.raw is not None:
            self.raw.append({"command": command, "rc": rc, "stdout": out, "stderr": err})
        return rc, out, err


def query(run):
    """Query the GPUs, dropping fields the driver rejects. Returns (gpus, unsupported fields)."""
    fields = list(QUERY_FIELDS)
    unsupported = []
    while True:
        rc, out, err = run("--query-gpu=" + ",".join(fields), "--format=csv,nounits")
        rejected = invalid_field(out + "\n" + err)
        if rc != 0 and rejected and rejected in fields and rejected in OPTIONAL_FIELDS:
            fields.remove(rejected)
            unsupported.append(rejected)
            continue
        if rc != 0:
            raise classify_failure(rc, out + "\n" + err)
        try:
            gpus = parse_query_csv(out)
        except ValueError:
            raise classify_failure(rc, out + "\n" + err)
        if not gpus:
            raise classify_failure(rc, out + "\n" + err)
        return gpus, unsupported


def gather(run):
    gpus, unsupported = query(run)
    cuda_version, source = None, "none"
    if any(g.get("cuda_version") for g in gpus):
        source = "query"
    else:
        rc, out, err = run()
        cuda_version = parse_cuda_version(out) if rc == 0 else None
        source = "banner" if cuda_version else "none"
    mig_devices = []
    if any((g.get("mig_mode") or "").lower() == "enabled" for g in gpus):
        rc, out, err = run("-L")
        if rc == 0:
            mig_devices = parse_gpu_list(out)[1]
    facts = summarize(gpus, cuda_version, mig_devices)
    facts.update(gpus=gpus, unsupported_fields=unsupported, cuda_version_source=source, available=True)
    return facts


def empty(error):
    facts = summarize([])
    facts.update(gpus=[], unsupported_fields=[], cuda_version_source="none", available=False, error=error.as_dict())
    return facts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            nvidia_smi=dict(type="path"),
            require=dict(type="bool", default=False),
            host=dict(type="str", default="this host"),
            return_raw=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    binary = module.params["nvidia_smi"] or module.get_bin_path("nvidia-smi", opt_dirs=["/usr/bin", "/usr/local/nvidia/bin"])
    runner = Runner(module, binary, module.params["return_raw"])
    if not binary or not os.access(binary, os.X_OK):
        facts = empty(NvidiaSmiError(
            "not_installed",
            "nvidia-smi is not installed" if not binary else "%s is not an executable file" % binary,
            "Install the NVIDIA driver (it brings nvidia-smi) until `nvidia-smi` lists the GPUs.",
        ))
    else:
        try:
            facts = gather(runner)
        except NvidiaSmiError as e:
            facts = empty(e)
        except OSError as e:
            facts = empty(NvidiaSmiError("failed", "could not run %s: %s" % (binary, e), "Check that nvidia-smi is executable."))
    if runner.raw is not None:
        facts["raw"] = runner.raw
    if module.params["require"] and not facts["available"]:
        error = facts["error"]
        module.fail_json(msg="%s has no usable NVIDIA GPU: %s. %s If this host has no NVIDIA GPU, mark it CPU-only "
                             "(llmops_cpu_only: true in the inventory) and serve a vLLM CPU image there." % (
                                 module.params["host"], error["message"], error["hint"]), **facts)
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
