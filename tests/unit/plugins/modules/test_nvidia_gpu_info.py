"""nvidia_gpu_info: parsing of recorded nvidia-smi outputs (tests/unit/fixtures/nvidia_smi) and the module's fallbacks."""

import os

import pytest

from ansible_collections.llmops.vllm.plugins.module_utils import _nvidia_smi as smi
from ansible_collections.llmops.vllm.plugins.modules import nvidia_gpu_info as mod

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "nvidia_smi")


def fixture(case, name):
    with open(os.path.join(FIXTURES, case, name)) as f:
        return f.read()


def has(case, name):
    return os.path.exists(os.path.join(FIXTURES, case, name))


# --- the parser, on recorded outputs of several GPU models -------------------------------


def test_v100_with_units_and_na_mig():
    gpus = smi.parse_query_csv(fixture("v100-x2-570", "query.csv"))
    assert len(gpus) == 2
    assert gpus[0] == {
        "index": 0, "name": "Tesla V100-PCIE-32GB", "compute_capability": "7.0", "memory_total_mib": 32768,
        "driver_version": "570.144", "compute_mode": "Default", "mig_mode": None,
    }
    assert gpus[1]["index"] == 1


def test_l40():
    facts = smi.summarize(smi.parse_query_csv(fixture("l40-x2-570", "query.csv")))
    assert facts["count"] == 2 and facts["names"] == ["NVIDIA L40", "NVIDIA L40"]
    assert facts["compute_capabilities"] == ["8.9"] and facts["memory_total_mib"] == 2 * 46068
    assert facts["driver_version"] == "570.144" and facts["mig_enabled"] is False


@pytest.mark.parametrize("case, name, cc, mib, driver", [
    ("t4-615", "Tesla T4", "7.5", 15360, "615.71.09"),
    ("rtx5070ti-610", "NVIDIA GeForce RTX 5070 Ti", "12.0", 16303, "610.43.02"),
])
def test_single_gpu_hosts_without_index_column(case, name, cc, mib, driver):
    [gpu] = smi.parse_query_csv(fixture(case, "query.csv"))
    assert (gpu["name"], gpu["compute_capability"], gpu["memory_total_mib"], gpu["driver_version"]) == (name, cc, mib, driver)


def test_mixed_gpu_host_keeps_uuids_and_unrequested_columns():
    gpus = smi.parse_query_csv(fixture("a5000-ada-mixed-610", "query.csv"))
    assert [g["uuid"] for g in gpus] == ["GPU-30667114-4567-bc4a-029b-3375d117048e", "GPU-fbe2dd5d-3644-5c37-3179-8ad50079b7d4"]
    assert [g["name"] for g in gpus] == ["NVIDIA RTX A5000", "NVIDIA RTX 4500 Ada Generation"]
    assert gpus[0]["power.limit"] == "230.00"


def test_nounits_output_parses_the_same():
    with_units = smi.parse_query_csv(fixture("l40-x2-570", "query.csv"))
    without = smi.parse_query_csv(fixture("l40-x2-570", "query.csv").replace(" MiB", ""))
    assert with_units == without


def test_mig_mode_enabled():
    [gpu] = smi.parse_query_csv(fixture("mig-mode", "query.csv"))
    assert gpu["mig_mode"] == "Enabled"
    assert gpu["mig.mode.pending"] == "Enabled"
    assert smi.summarize([gpu])["mig_enabled"] is True


def test_mig_devices_from_the_gpu_list():
    gpus, migs = smi.parse_gpu_list(fixture("a100-mig-list", "list.txt"))
    assert gpus == [{"index": 0, "name": "NVIDIA A100 80GB PCIe", "uuid": "GPU-295b72d2-e23d-baa4-1b87-88bc3b68fd08"}]
    assert len(migs) == 7
    assert migs[0] == {"gpu_index": 0, "gpu_uuid": "GPU-295b72d2-e23d-baa4-1b87-88bc3b68fd08", "profile": "1g.10gb",
                       "device_index": 0, "uuid": "MIG-c1d3d074-7dc1-5e89-8a5f-6d0b08327092"}
    assert migs[6]["device_index"] == 6


@pytest.mark.parametrize("case, version", [("banner-570", "12.8"), ("banner-510", "11.6")])
def test_cuda_version_from_the_banner(case, version):
    assert smi.parse_cuda_version(fixture(case, "banner.txt")) == version


def test_cuda_version_from_q_output():
    assert smi.parse_cuda_version("Driver Version                            : 566.36\nCUDA Version                              : 12.7\n") == "12.7"


def test_rejected_field_is_named():
    assert smi.invalid_field(fixture("cuda-version-field-rejected", "query.out")) == "cuda_version"
    assert smi.invalid_field(fixture("l40-x2-570", "query.csv")) is None


@pytest.mark.parametrize("case, kind", [
    ("driver-not-loaded", "driver_not_loaded"),
    ("no-devices", "no_devices"),
    ("library-mismatch", "driver_library_mismatch"),
])
def test_error_cases_are_classified_with_a_hint(case, kind):
    error = smi.classify_failure(int(fixture(case, "query.rc")), fixture(case, "query.out"))
    assert error.kind == kind
    assert error.message.strip() and error.hint.strip()


def test_library_mismatch_says_reboot():
    error = smi.classify_failure(18, fixture("library-mismatch", "query.out"))
    assert "Reboot" in error.hint and "NVML library version: 580.126" in error.message


def test_unknown_failure_keeps_the_output():
    error = smi.classify_failure(3, "something odd happened\n")
    assert error.kind == "failed" and "something odd happened" in error.message and "3" in error.message


def test_a_row_that_does_not_fit_the_header_is_an_error():
    with pytest.raises(ValueError):
        smi.parse_query_csv("index, name\n0, A, extra\n")


def test_output_without_header_is_an_error():
    with pytest.raises(ValueError):
        smi.parse_query_csv("0, Tesla T4, 15360\n")


# --- the module: the commands it runs and its fallbacks -------------------------------------


class FakeSmi(object):
    """Answers the module's nvidia-smi calls from a recorded case."""

    def __init__(self, case, rejects=(), banner=None, gpu_list=None):
        self.case = case
        self.rejects = rejects
        self.banner = banner
        self.gpu_list = gpu_list
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        if not args:
            return (0, fixture(self.banner, "banner.txt"), "") if self.banner else (0, "", "")
        if args == ("-L",):
            return (0, fixture(self.gpu_list, "list.txt"), "") if self.gpu_list else (0, "", "")
        fields = args[0].split("=", 1)[1].split(",")
        for field in self.rejects:
            if field in fields:
                return 2, 'Field "%s" is not a valid field to query.\n\n' % field, ""
        if has(self.case, "query.rc"):
            return int(fixture(self.case, "query.rc")), fixture(self.case, "query.out"), ""
        return 0, fixture(self.case, "query.csv"), ""


def test_module_drops_a_rejected_field_and_reads_cuda_from_the_banner():
    run = FakeSmi("l40-x2-570", rejects=("cuda_version",), banner="banner-570")
    facts = mod.gather(run)
    assert facts["available"] is True and facts["count"] == 2
    assert facts["unsupported_fields"] == ["cuda_version"]
    assert facts["cuda_version"] == "12.8" and facts["cuda_version_source"] == "banner"
    first, second = run.calls[0][0], run.calls[1][0]
    assert "cuda_version" in first and "cuda_version" not in second
    assert run.calls[0][1] == "--format=csv,nounits"
    assert run.calls[2] == ()


def test_module_does_not_ask_the_banner_when_the_query_had_the_cuda_version():
    run = FakeSmi("l40-x2-570")
    original = run.__call__

    def with_cuda(*args):
        rc, out, err = original(*args)
        if args and args[0].startswith("--query-gpu"):
            lines = out.splitlines()
            out = "\n".join([lines[0] + ", cuda_version"] + [line + ", 13.0" for line in lines[1:]]) + "\n"
        return rc, out, err

    facts = mod.gather(with_cuda)
    assert facts["cuda_version"] == "13.0" and facts["cuda_version_source"] == "query"
    assert len(run.calls) == 1


def test_module_lists_mig_devices_when_a_gpu_is_in_mig_mode():
    # The query output and the device list come from two different recorded hosts.
    facts = mod.gather(FakeSmi("mig-mode", gpu_list="a100-mig-list", banner="banner-570"))
    assert facts["mig_enabled"] is True and len(facts["mig_devices"]) == 7


def test_module_does_not_run_the_list_without_mig():
    run = FakeSmi("v100-x2-570", banner="banner-570")
    mod.gather(run)
    assert ("-L",) not in run.calls


@pytest.mark.parametrize("case, kind", [
    ("driver-not-loaded", "driver_not_loaded"),
    ("no-devices", "no_devices"),
    ("library-mismatch", "driver_library_mismatch"),
])
def test_module_reports_errors(case, kind):
    with pytest.raises(smi.NvidiaSmiError) as e:
        mod.gather(FakeSmi(case))
    assert e.value.kind == kind


def test_module_without_nvidia_smi_is_not_available(run_module, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda self, *a, **k: None)
    kind, result = run_module(mod.main, {})
    assert kind == "exit" and result["available"] is False and result["count"] == 0
    assert result["error"]["kind"] == "not_installed"


def test_module_require_fails_with_message_and_hint(run_module, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n")
    fake.chmod(0o755)
    kind, result = run_module(mod.main, {"nvidia_smi": str(fake), "require": True})
    assert kind == "fail"
    assert "couldn't communicate" in result["msg"] and "Install the driver" in result["msg"]
    assert result["msg"].startswith("this host has no usable NVIDIA GPU: ") and "llmops_cpu_only: true" in result["msg"]
    kind, result = run_module(mod.main, {"nvidia_smi": str(fake), "require": True, "host": "gpu-7"})
    assert kind == "fail" and result["msg"].startswith("gpu-7 has no usable NVIDIA GPU: ")


def test_module_runs_a_real_binary_and_returns_raw(run_module, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\ncase \"$1\" in\n  --query-gpu=*) cat %s ;;\n  '') cat %s ;;\nesac\n" % (
        os.path.join(FIXTURES, "a5000-ada-mixed-610", "query.csv"), os.path.join(FIXTURES, "banner-570", "banner.txt")))
    fake.chmod(0o755)
    kind, result = run_module(mod.main, {"nvidia_smi": str(fake), "return_raw": True})
    assert kind == "exit" and result["changed"] is False
    assert result["uuids"] == ["GPU-30667114-4567-bc4a-029b-3375d117048e", "GPU-fbe2dd5d-3644-5c37-3179-8ad50079b7d4"]
    assert result["driver_version"] == "610.57.04"
    assert result["raw"][0]["command"][1].startswith("--query-gpu=index,uuid,name,driver_version,memory.total")


def _recorded_h100_cases():
    return sorted(d for d in os.listdir(FIXTURES) if d.startswith("h100-"))


@pytest.mark.parametrize("case", _recorded_h100_cases())
def test_recorded_h100_run(case):
    # The project's own recording on the lent H100 machine, with the module's exact query.
    gpus = smi.parse_query_csv(fixture(case, "query.csv"))
    assert gpus and all(g["name"].startswith("NVIDIA H100") for g in gpus)
    assert all(g["uuid"].startswith("GPU-") and g["compute_capability"] == "9.0" for g in gpus)
    assert all(g["driver_version"].startswith("580.") for g in gpus)
