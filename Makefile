# make demo: set up and run the lab demo (root).   make test: set up and run every test (root).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test unit lint bench bench-floor bench-idle bench-mediator bench-mediator-backends clean rpm rpm-check rpm-mediator
# Lab benchmarks take the lab lock (one lab at a time on this machine); ARGS='--json FILE' etc.
LAB_LOCK ?= $(if $(wildcard /work),/work/lab.lock,/tmp/iscsi-ha-lab.lock)

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

bench-floor: setup
	flock $(LAB_LOCK) $(PY) bench/floor.py $(ARGS)

bench-idle: setup
	flock $(LAB_LOCK) $(PY) bench/idle.py $(ARGS)

# One iscsi-ha-mediator process vs 100/1,000/10,000 simulated pools over TLS on 127.0.0.1.
# make bench-mediator ARGS='--json FILE' also writes the figures as JSON.
bench-mediator: setup
	$(PY) bench/mediator_scale.py $(ARGS)

rpm-mediator:
	./scripts/build-mediator-rpm

# The storage layer alone: a promote and a heartbeat on SQLite and on etcd (1 and 3 members).
bench-mediator-backends: setup
	$(PY) bench/mediator_backends.py $(ARGS)

clean:
	$(VENV)/bin/iscsi-ha-lab down 2>/dev/null || true
	rm -rf build dist *.egg-info
