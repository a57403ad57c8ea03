# The two commands of the README, and the steps they are made of.
#   make demo   a local throwaway host served by site.yml, ending with a chat reply
#   make test   lint, unit tests, sanity, integration tests against vLLM, molecule scenarios,
#               the execution environment
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 0
export PY_COLORS ?= 0
export ANSIBLE_NOCOLOR ?= 1
# Test traffic stays on this machine: a model that a test serves online and that no cache holds would
# make the vllm_server preflight ask huggingface.co about it from the control node (hf_model_config).
# Nothing listens on this port, so the question fails at once and the check is skipped with a warning;
# tests that want answers point vllm_server_hf_endpoint at the hub stand-in (tests/doubles/hf-hub).
export HF_ENDPOINT := http://127.0.0.1:9
TOOLING := tests/tooling
# The vLLM release the collection ships, named once in the vllm_server role's defaults.
VLLM_VERSION := $(shell sed -n 's/^vllm_server_version: *//p' roles/vllm_server/defaults/main.yml)
SCENARIOS ?= $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))

.PHONY: help deps docker images testbed models demo demo-down clean distclean lint unit sanity integration integration-tests integration-multinode integration-multinode-tests bench bench-fleet bench-gateway bench-routing molecule ee test

help:
	@echo "make demo       serve the tiny test model on a local throwaway host through site.yml"
	@echo "make test       lint, unit, sanity and integration tests, and every molecule scenario ($(SCENARIOS)), the EE"
	@echo "make ee         build the execution environment (tests/ee/) and run site.yml from inside it"
	@echo "make bench      how soon verify_endpoint and an ansible.builtin.uri loop notice a vLLM start (minutes)"
	@echo "make bench-fleet  cold and no-op site.yml runs and upstream bytes for fleets of 1, 2 and 4 hosts (about an hour)"
	@echo "make bench-gateway  what the gateway adds to one vLLM server's p50 latency and throughput"
	@echo "make bench-routing  leastconn, header affinity and prefix hash through the gateway: prefix-cache hits, TTFT, throughput (about 15 minutes)"
	@echo "make clean      remove what the demo and the tests started (containers), keep caches"
	@echo "make distclean  also remove the test images, the registry's blobs, the caches and .venv"

deps: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt requirements-dev.lock
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c requirements-dev.lock
	touch $@

docker:
	$(TOOLING)/ensure-docker

images: docker
	$(TOOLING)/build-images all

models: images
	$(TOOLING)/tiny-model .cache/models
	$(TOOLING)/tiny-lora .cache/lora

# Everything the scenarios and the demo share: images, the registry mirror holding the
# vLLM test image, and the tiny models.
testbed: deps images models
	$(TOOLING)/control-node
	$(TOOLING)/registry up
	$(TOOLING)/registry push

demo: testbed
	$(TOOLING)/demo up

demo-down:
	$(TOOLING)/demo down

# ansible-lint, then the changelog: fragments and changelog.yaml well-formed, CHANGELOG.md generated
# from them (antsibull-changelog generate writes the same file).
lint: deps
	ansible-lint
	antsibull-changelog lint
	antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
	tmp="$$(mktemp)"; trap 'rm -f "$$tmp"' EXIT; antsibull-changelog generate --output "$$tmp" --output-format md; \
	  cmp -s "$$tmp" CHANGELOG.md || { echo "CHANGELOG.md is not what changelogs/changelog.yaml gives: run antsibull-changelog generate"; exit 1; }

unit: deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

# ansible-test sanity on the plugins, on a copy laid out as ansible_collections/llmops/vllm.
sanity: deps
	$(TOOLING)/sanity

# verify_endpoint and the verify playbook against the real vLLM server (the CPU image, tiny models).
# The testbed, not only the images: the multi-node test converges two host stand-ins that pull the
# vLLM image through the registry mirror.
integration: testbed
	$(MAKE) --no-print-directory integration-tests

# The same without the testbed's check (make test's lanes run it once before them).
integration-tests:
	$(BIN)/python -m pytest -v -p no:cacheprovider --durations=0 tests/integration

# The multi-node end-to-end test: two host stand-ins converged by site.yml, a gateway, a worker killed under load
# (docs/testing.md). Not in `make integration` (its stand-ins and memory), nor in `make test` (see there).
integration-multinode: testbed
	$(MAKE) --no-print-directory integration-multinode-tests

integration-multinode-tests:
	LLMOPS_IT_MULTINODE=1 $(BIN)/python -m pytest -v -p no:cacheprovider --durations=0 tests/integration/test_multinode_dp.py

# Not a test: prints how long after readiness each way of waiting returns.
bench: deps images models
	$(BIN)/python benchmarks/readiness.py

# Not a test: a fleet of 1, 2 and 4 hosts, with the registry cache and without; times and upstream bytes.
bench-fleet: testbed
	$(BIN)/python benchmarks/fleet.py

# Not a test: the p50 latency and throughput the gateway (HAProxy on loopback) adds to one vLLM server.
bench-gateway: deps images models
	$(BIN)/python benchmarks/gateway.py

# Not a test: the gateway's balance policies in front of two vLLM CPU servers with prefix caching, alternating.
bench-routing: deps images
	$(BIN)/python benchmarks/routing.py

# The scenarios run in two lanes side by side (tests/tooling/lanes; LLMOPS_LANES=1 for one after the
# other): the fleet scenario, the longest (its upgrades under load included), alone in one; the others in
# the second lane, longest first (make test adds the EE's test there).
LANE_FLEET := fleet
LANE_OTHERS := multi-instance default compose bad-input gpu-host docker-merge
lane_fleet = $(strip $(foreach s,$(LANE_FLEET),$(filter $(s),$(SCENARIOS))))
lane_others = $(strip $(foreach s,$(LANE_OTHERS),$(filter $(s),$(SCENARIOS))) $(filter-out $(LANE_FLEET) $(LANE_OTHERS),$(SCENARIOS)))

molecule: testbed
	$(TOOLING)/lanes "$(lane_fleet)" "$(lane_others)"

# The execution environment's local variant (tests/ee/execution-environment.yml), built with
# ansible-builder (only when its content changed), and site.yml run from inside it against a
# throwaway host, verified with a chat completion.
ee: testbed
	$(TOOLING)/ee all

# Everything in the two lanes, once the testbed is up: the fleet scenario, then docker-merge, the EE's test,
# bad-input and gpu-host in the first; the static checks first in the second (a broken lint shows in minutes),
# then the other scenarios and the integration tests. About even by the CI run of 2026-12-07 (docs/testing.md).
# The multi-node end-to-end test (make integration-multinode) is not in it: its killed-worker test fails on the
# test machine since 2026-12-08 (docs/testing.md, "Instances spanning several hosts").
LANE_TEST_FIRST_AFTER := docker-merge ee bad-input gpu-host
test: deps testbed
	$(TOOLING)/lanes "$(lane_fleet) $(LANE_TEST_FIRST_AFTER)" "static $(filter-out $(LANE_TEST_FIRST_AFTER),$(lane_others)) integration"

clean: demo-down
	$(TOOLING)/ee down
	-for scenario in $(SCENARIOS); do [ -x $(BIN)/molecule ] && molecule destroy --scenario-name "$$scenario"; done
	tests/doubles/package-repos down
	tests/doubles/hf-hub down
	-docker rm -f llmops-auth-registry
	$(TOOLING)/registry down

distclean: clean
	-docker image rm llmops-test/vllm-openai-cpu:v$(VLLM_VERSION) llmops-test/vllm-openai-cpu:v$(VLLM_VERSION)-broken llmops-test/debian12-systemd:latest llmops-test/debian12:latest llmops-test/registry:latest llmops-test/ee:latest llmops-test/ee-base-debian12:latest
	-docker volume rm llmops-test-registry llmops-ee-host-docker
	rm -rf .cache $(VENV) /var/cache/llmops-test
