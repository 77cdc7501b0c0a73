# make demo: set up and run the lab demo (root).   make test: set up and run every test (root).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test unit lint bench bench-mediator-backends clean rpm rpm-check

setup:
	./scripts/install-deps

demo: setup
	$(VENV)/bin/iscsi-ha-lab demo

lint: setup
	$(VENV)/bin/vermin -q --no-tips --violations --backport dataclasses -t=3.6- iscsi_ha

# setup installed the real tools (drbd-utils...): the tests that need one must not skip.
test: lint
	ISCSI_HA_REQUIRE_TOOLS=1 $(PY) -m pytest -ra

unit: setup
	$(PY) -m pytest -ra -m "not lab and not netns"

rpm: setup
	./scripts/build-rpm

rpm-check: setup
	./scripts/rpm-payload-check

bench: setup
	$(PY) bench/pass_time.py

bench-mediator-backends: setup
	$(PY) bench/mediator_backends.py $(ARGS)

clean:
	$(VENV)/bin/iscsi-ha-lab down 2>/dev/null || true
	rm -rf build dist *.egg-info
