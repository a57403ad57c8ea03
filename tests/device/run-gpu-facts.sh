#!/usr/bin/env bash
# Record what a real NVIDIA GPU host says, and run the collection's GPU facts module and
# preflight checks on it, for the unit-test fixtures (tests/unit/fixtures/nvidia_smi).
#
# Made for the lent H100 machine: Ubuntu 24.04, driver 580, Python 3.12, no Docker, no
# network, no pip needed. Run from the repository root:
#
#   OUT=/some/dir bash tests/device/run-gpu-facts.sh [WHEEL_DIR]
#
# WHEEL_DIR (default .whl) holds ansible-core and its dependencies as wheels for Python 3.12
# on manylinux x86_64 (README: "Recording a real GPU host"); they are unpacked into
# /tmp/site, no installer runs. Everything goes to $OUT:
#   fixture/                 raw nvidia-smi outputs, named as the fixtures are
#                            (query.csv, banner.txt, list.txt, ... and each command's .rc)
#   module.json, module.log  llmops.vllm.nvidia_gpu_info run through ansible (connection local)
#   preflight.log            the preflight role in check mode (gpu, disk, ports, docker)
#   environment.txt          OS, kernel, Python, driver
#   summary.txt              what ran and how it ended
# The script never stops half-way: each step's exit code is recorded and it goes on.
set -uo pipefail

OUT="${OUT:?set OUT to the directory to write into}"
WHEELS="${1:-.whl}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
SITE=/tmp/site
FIX="${OUT}/fixture"
mkdir -p "${FIX}"
export LC_ALL=C.UTF-8 LANG=C.UTF-8
SUMMARY="${OUT}/summary.txt"
: >"${SUMMARY}"

note() { printf '%s\n' "$*" | tee -a "${SUMMARY}"; }

# record NAME CMD...: stdout to fixture/NAME, stderr to fixture/NAME.stderr, exit code to fixture/NAME.rc
record() {
  local name=$1
  shift
  "$@" >"${FIX}/${name}" 2>"${FIX}/${name}.stderr"
  local rc=$?
  echo "${rc}" >"${FIX}/${name}.rc"
  [[ -s "${FIX}/${name}.stderr" ]] || rm -f "${FIX}/${name}.stderr"
  note "rc=${rc} ${name}: $*"
}

# The fields llmops.vllm.nvidia_gpu_info asks for, in its order (plugins/module_utils/_nvidia_smi.py).
FIELDS="$(cd "${REPO}/plugins/module_utils" && python3 -c '
import importlib.util, sys
spec = importlib.util.spec_from_file_location("s", "_nvidia_smi.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
print(",".join(m.QUERY_FIELDS))')"
WITHOUT_CUDA="${FIELDS/,cuda_version/}"

note "== nvidia-smi, raw =="
record banner.txt nvidia-smi
record list.txt nvidia-smi -L
record q.txt nvidia-smi -q
record help-query-gpu.txt nvidia-smi --help-query-gpu
record query-module-fields.out nvidia-smi "--query-gpu=${FIELDS}" --format=csv,nounits
record query.csv nvidia-smi "--query-gpu=${WITHOUT_CUDA}" --format=csv,nounits
record query-noheader.csv nvidia-smi "--query-gpu=${WITHOUT_CUDA}" --format=csv,noheader,nounits
record query-units.csv nvidia-smi "--query-gpu=${WITHOUT_CUDA}" --format=csv
record cuda_version-field.out nvidia-smi --query-gpu=cuda_version --format=csv
record mig-mode.csv nvidia-smi --query-gpu=index,mig.mode.current,mig.mode.pending --format=csv
record compute-apps.csv nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
record proc-driver-version.txt cat /proc/driver/nvidia/version

{
  echo "== os-release"; cat /etc/os-release
  echo "== uname"; uname -a
  echo "== python3"; python3 --version; command -v python3
  echo "== nvidia-smi"; command -v nvidia-smi
  echo "== docker"; command -v docker || echo "no docker"
  echo "== df"; df -h / /tmp /var/lib 2>/dev/null
} >"${OUT}/environment.txt" 2>&1

note "== ansible-core from ${WHEELS} into ${SITE} =="
rm -rf "${SITE}" && mkdir -p "${SITE}"
shopt -s nullglob
wheels=("${WHEELS}"/*.whl)
if ((${#wheels[@]} == 0)); then
  note "no wheels in ${WHEELS}: the module and preflight runs are skipped"
  exit 0
fi
for wheel in "${wheels[@]}"; do
  python3 -m zipfile -e "${wheel}" "${SITE}" || note "could not unpack ${wheel}"
done
export PYTHONPATH="${SITE}"
export ANSIBLE_HOME=/tmp/ansible-home ANSIBLE_LOCAL_TEMP=/tmp/ansible-local ANSIBLE_REMOTE_TEMP=/tmp/ansible-remote
export ANSIBLE_CONFIG="${REPO}/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="${REPO}/collections"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0
python3 -m ansible adhoc --version >"${OUT}/ansible-version.txt" 2>&1
note "rc=$? ansible-version.txt"

note "== llmops.vllm.nvidia_gpu_info =="
cat >/tmp/gpu-facts-play.yml <<'YAML'
- name: GPU facts of this host
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
  tasks:
    - name: Gather the GPUs
      llmops.vllm.nvidia_gpu_info:
        return_raw: true
      register: gpu
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ gpu | to_nice_json }}\n"
        dest: "{{ out }}/module.json"
        mode: "0644"
YAML
python3 -m ansible playbook -i localhost, -e "out=${OUT}" /tmp/gpu-facts-play.yml >"${OUT}/module.log" 2>&1
note "rc=$? module.json (log: module.log)"
python3 - "${OUT}/module.json" <<'PY' | tee -a "${SUMMARY}"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    print("available=%s count=%s driver=%s cuda=%s (%s) unsupported=%s mig=%s" % (
        r.get("available"), r.get("count"), r.get("driver_version"), r.get("cuda_version"),
        r.get("cuda_version_source"), r.get("unsupported_fields"), r.get("mig_enabled")))
    for gpu in r.get("gpus", []):
        print("  %s" % json.dumps(gpu, sort_keys=True))
    if r.get("error"):
        print("error: %s" % json.dumps(r["error"]))
except Exception as e:
    print("module.json is not what was expected: %s" % e)
PY

note "== preflight role, check mode =="
cat >/tmp/preflight-play.yml <<'YAML'
- name: Preflight of a GPU host
  hosts: localhost
  connection: local
  gather_facts: true
  gather_subset: [min]
  vars:
    ansible_python_interpreter: /usr/bin/python3
    preflight_model_space_gb: 10
  roles:
    - role: llmops.vllm.preflight
YAML
python3 -m ansible playbook --check -i localhost, /tmp/preflight-play.yml >"${OUT}/preflight.log" 2>&1
note "rc=$? preflight.log"
grep -E "msg:|fatal|ok=" "${OUT}/preflight.log" | head -20 | tee -a "${SUMMARY}"

# vllm_server's own preflight on real GPUs: which GPUs exist, tensor_parallel_size from them, and
# the weight fit estimate against the real memory. A 70B model in bf16 on one 80 GB GPU must be
# refused; an 8B one must pass.
note "== vllm_server preflight: fit check =="
cat >/tmp/vllm-fit-play.yml <<'YAML'
- name: vllm_server preflight on a real GPU host
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
    vllm_server_api_key: device-test-key
    vllm_server_base_dir: /tmp/vllm-fit
  tasks:
    - name: Run the role's preflight
      ansible.builtin.include_role:
        name: llmops.vllm.vllm_server
        tasks_from: preflight.yml
        public: true
    - name: Show what the role derived
      ansible.builtin.debug:
        msg: "{{ _vllm_server_host_gpus }} / {{ _vllm_server_instances | map(attribute='options') | list }}"
YAML
python3 -m ansible playbook -i localhost, /tmp/vllm-fit-play.yml \
  -e '{"vllm_server_instances": [{"name": "llama-8b", "model": "meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B", "gpus": "all"}]}' \
  >"${OUT}/vllm-fit-pass.log" 2>&1
note "rc=$? vllm-fit-pass.log (expected 0)"
python3 -m ansible playbook -i localhost, /tmp/vllm-fit-play.yml \
  -e '{"vllm_server_instances": [{"name": "llama-70b", "model": "meta-llama/Llama-3.3-70B-Instruct", "parameters": "70B", "gpus": [0]}]}' \
  >"${OUT}/vllm-fit-refuse.log" 2>&1
note "rc=$? vllm-fit-refuse.log (expected 2)"
python3 -m ansible playbook -i localhost, /tmp/vllm-fit-play.yml \
  -e '{"vllm_server_instances": [{"name": "two-gpus", "model": "m/m", "gpus": [0, 1]}]}' \
  >"${OUT}/vllm-fit-missing-gpu.log" 2>&1
note "rc=$? vllm-fit-missing-gpu.log (expected 2: the host has one GPU)"
grep -hE "needs about|does not have|msg:" "${OUT}"/vllm-fit-*.log | head -12 | tee -a "${SUMMARY}"
exit 0
