# The two commands of the README, and the steps they are made of.
#   make demo   a local throwaway host served by site.yml, ending with a chat reply
#   make test   lint, unit tests, sanity, integration tests against vLLM, molecule scenarios
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
TOOLING := tests/tooling
# The vLLM release the collection ships, named once in the vllm_server role's defaults.
VLLM_VERSION := $(shell sed -n 's/^vllm_server_version: *//p' roles/vllm_server/defaults/main.yml)
SCENARIOS ?= $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))

.PHONY: help deps docker images testbed models demo demo-down clean distclean lint unit sanity integration bench molecule test

help:
	@echo "make demo       serve the tiny test model on a local throwaway host through site.yml"
	@echo "make test       lint, unit, sanity and integration tests, and every molecule scenario ($(SCENARIOS))"
	@echo "make bench      how soon verify_endpoint and an ansible.builtin.uri loop notice a vLLM start (minutes)"
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

# Everything the scenarios and the demo share: images, the registry mirror holding the
# vLLM test image, and the tiny models.
testbed: deps images models
	$(TOOLING)/registry up
	$(TOOLING)/registry push

demo: testbed
	$(TOOLING)/demo up

demo-down:
	$(TOOLING)/demo down

lint: deps
	ansible-lint

unit: deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

# ansible-test sanity on the plugins, on a copy laid out as ansible_collections/llmops/vllm.
sanity: deps
	$(TOOLING)/sanity

# verify_endpoint and the verify playbook against the real vLLM server (the CPU image, tiny models).
integration: deps images models
	$(BIN)/python -m pytest -v -p no:cacheprovider --durations=0 tests/integration

# Not a test: prints how long after readiness each way of waiting returns.
bench: deps images models
	$(BIN)/python benchmarks/readiness.py

molecule: testbed
	for scenario in $(SCENARIOS); do molecule test --scenario-name "$$scenario"; done

test: lint unit sanity integration molecule

clean: demo-down
	-for scenario in $(SCENARIOS); do [ -x $(BIN)/molecule ] && molecule destroy --scenario-name "$$scenario"; done
	tests/doubles/package-repos down
	-docker rm -f llmops-auth-registry
	$(TOOLING)/registry down

distclean: clean
	-docker image rm llmops-test/vllm-openai-cpu:v$(VLLM_VERSION) llmops-test/vllm-openai-cpu:v$(VLLM_VERSION)-broken llmops-test/debian12-systemd:latest llmops-test/debian12:latest llmops-test/registry:latest
	-docker volume rm llmops-test-registry
	rm -rf .cache $(VENV) /var/cache/llmops-test
