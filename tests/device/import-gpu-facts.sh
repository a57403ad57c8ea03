#!/usr/bin/env bash
# Turn what tests/device/run-gpu-facts.sh recorded on a real GPU host into test data:
#
#   bash tests/device/import-gpu-facts.sh RECORDED_OUT [NAME]
#
# copies RECORDED_OUT/fixture/{query.csv,banner.txt,list.txt,mig-mode.csv,...} to
# tests/unit/fixtures/nvidia_smi/NAME/ (default: h100-<driver>; test_nvidia_gpu_info.py
# checks every h100-* directory), and makes it the GPU dataset of the fake driver
# (tests/doubles/nvidia/driver/dataset): query.csv, banner.txt, list.txt, and
# unsupported_fields when the driver rejected the cuda_version field.
set -euo pipefail
SRC="${1:?usage: $0 RECORDED_OUT [NAME]}/fixture"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
[[ -s "${SRC}/query.csv" && "$(cat "${SRC}/query.csv.rc")" == 0 ]] || { echo "no successful query.csv in ${SRC}" >&2; exit 1; }
driver="$(awk -F', *' 'NR == 2 {print $4}' "${SRC}/query.csv")"
NAME="${2:-h100-${driver%%.*}}"
DEST="${REPO}/tests/unit/fixtures/nvidia_smi/${NAME}"
mkdir -p "${DEST}"
for f in query.csv query-noheader.csv query-units.csv banner.txt list.txt mig-mode.csv cuda_version-field.out \
  query-module-fields.out help-query-gpu.txt; do
  [[ -e "${SRC}/${f}" ]] || continue
  cp "${SRC}/${f}" "${DEST}/${f}"
  [[ -e "${SRC}/${f}.rc" ]] && cp "${SRC}/${f}.rc" "${DEST}/${f}.rc"
done
echo "fixtures: ${DEST}"

DATA="${REPO}/tests/doubles/nvidia/driver/dataset"
find "${DATA}" -mindepth 1 ! -name README.md -delete
if [[ "$(cat "${SRC}/query-module-fields.out.rc")" == 0 ]]; then
  cp "${SRC}/query-module-fields.out" "${DATA}/query.csv"
else
  cp "${SRC}/query.csv" "${DATA}/query.csv"
  grep -o 'Field "[^"]*" is not a valid field' "${SRC}/query-module-fields.out" | cut -d'"' -f2 >"${DATA}/unsupported_fields"
fi
cp "${SRC}/banner.txt" "${SRC}/list.txt" "${DATA}/"
echo "fake driver dataset: ${DATA} (update its README.md: the source is now ${NAME})"
