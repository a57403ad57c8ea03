# Shared helpers for the scripts in tests/tooling. Sourced, never executed.
# shellcheck shell=bash
# The names below are used by the scripts that source this file.
# shellcheck disable=SC2034

TOOLING_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${TOOLING_DIR}/../.." && pwd)"
IMAGES_DIR="${REPO_ROOT}/tests/images"
PROG="$(basename "$0")"

# Everything that is downloaded or built outside the git tree lives here, so
# that `git status` stays clean and a second run reuses it.
LLMOPS_TEST_CACHE="${LLMOPS_TEST_CACHE:-/var/cache/llmops-test}"

# Image names shared by build-images, registry, tiny-model and the molecule scenarios.
IMAGE_DEBIAN="llmops-test/debian12:latest"
IMAGE_SYSTEMD="llmops-test/debian12-systemd:latest"
IMAGE_REGISTRY="llmops-test/registry:latest"
# The vLLM release the collection ships, named once: vllm_server_version in the role's defaults.
VLLM_VERSION="$(sed -n 's/^vllm_server_version: *//p' "${REPO_ROOT}/roles/vllm_server/defaults/main.yml")"
IMAGE_VLLM="llmops-test/vllm-openai-cpu:v${VLLM_VERSION}"
# The same image with a `vllm` that exits at once: a release that never becomes ready.
IMAGE_VLLM_BROKEN="llmops-test/vllm-openai-cpu:v${VLLM_VERSION}-broken"
# Ray from PyPI in the vLLM test image (tests/images/vllm-ray); the version test_multinode_ray ran with.
RAY_VERSION="2.60.0"
IMAGE_VLLM_RAY="llmops-test/vllm-openai-cpu:v${VLLM_VERSION}-ray"
HASH_LABEL="org.llmops.recipe-hash"
# Debian 13's Docker Engine 26.1.5 (daemon, CLI): a Docker newer than Debian 12's 20.10. Its
# packages need libc6 >= 2.34 and install on Debian 12. fetch_deb takes these pairs.
DEBIAN13_DOCKER_IO=(pool/main/d/docker.io/docker.io_26.1.5+dfsg1-9+deb13u1+b1_amd64.deb
  53ae1a99f15113f0a0d2226808ec0d24ee31b3b87b87ab8ec35be09a1a2ee13b)
DEBIAN13_DOCKER_CLI=(pool/main/d/docker.io/docker-cli_26.1.5+dfsg1-9+deb13u1+b1_amd64.deb
  596647bc4ffaaaf2e2321116b8a10f6a6086ada797c17a7117798cb391a72776)

step() { printf '%s: %s\n' "${PROG}" "$*"; }
die() {
  printf '%s: error: %s\n' "${PROG}" "$*" >&2
  exit 1
}

require_docker() {
  docker info >/dev/null 2>&1 || die "docker does not answer; run tests/tooling/ensure-docker first"
}

# recipe_hash FILE... [-- EXTRA_STRING...]
# sha256 over the repo-relative names and contents of FILEs plus any EXTRA
# strings (hashes of parent images, versions), so that renaming a file or
# changing a parent also changes the hash.
recipe_hash() {
  local f extra=()
  local files=()
  while (($#)); do
    if [[ $1 == -- ]]; then
      shift
      extra=("$@")
      break
    fi
    files+=("$1")
    shift
  done
  {
    for f in "${files[@]}"; do
      [[ -f $f ]] || die "recipe file ${f} is missing"
      printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "${f#"${REPO_ROOT}/"}"
    done | LC_ALL=C sort -k2
    if ((${#extra[@]})); then printf '%s\n' "${extra[@]}"; fi
  } | sha256sum | cut -d' ' -f1
}

# image_hash IMAGE: the recipe hash label of a local image, empty when the image is absent.
image_hash() {
  docker image inspect --format "{{ index .Config.Labels \"${HASH_LABEL}\" }}" "$1" 2>/dev/null || true
}

# ensure_commands COMMAND:PACKAGE...: installs, with apt, the Debian package of
# each command that is not on PATH (a fresh machine of this kind lacks some).
ensure_commands() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || die "missing Debian packages ${missing[*]}: apt-get install ${missing[*]} (needs root)"
  step "installing ${missing[*]} with apt"
  local apt_log
  apt_log="$(mktemp)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"${apt_log}" 2>&1; then
    tail -n 10 "${apt_log}" >&2
    die "apt-get install ${missing[*]} failed (log above)"
  fi
  rm -f "${apt_log}"
}

# fetch_deb POOL_PATH SHA256: downloads a package from Debian's archive into the cache once,
# checks its sha256, and prints the cached file's path.
fetch_deb() {
  local pool_path=$1 sha256=$2 mirror="${LLMOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  local target
  target="${LLMOPS_TEST_CACHE}/$(basename "${pool_path}")"
  mkdir -p "${LLMOPS_TEST_CACHE}"
  if ! echo "${sha256}  ${target}" | sha256sum --check --status 2>/dev/null; then
    curl -fsS --retry 3 -o "${target}.part" "${mirror}/${pool_path}" ||
      die "could not download ${pool_path} from ${mirror}"
    echo "${sha256}  ${target}.part" | sha256sum --check --status || die "${pool_path} does not have the expected sha256"
    mv "${target}.part" "${target}"
    step "downloaded $(basename "${pool_path}")" >&2
  fi
  echo "${target}"
}
