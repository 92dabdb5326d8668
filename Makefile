# airbundle — the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (Debian packages as root, the package in .venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests and the demo drive for real (see ../shared/TESTBED.md).
DEB_PACKAGES := python3 python3-venv openssh-client openssh-server tar coreutils sed diffutils openssl time \
                iproute2 util-linux \
                docker.io busybox-static skopeo docker-registry containerd \
                dpkg-dev apt-utils gpg gpgv python3-yaml debootstrap debian-archive-keyring \
                rpm createrepo-c python3-solv dnf dnf-plugins-core \
                haproxy keepalived curl iptables
PYTEST_ARGS ?=

.PHONY: all install debs test lint fix demo demo-k0s bench clean

all: test

debs:
	@tools/ensure-debs.sh $(DEB_PACKAGES)

$(BIN)/.installed: setup.cfg pyproject.toml | debs
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: debs $(BIN)/.installed

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check bundler tests bench tools
	$(BIN)/ruff format --check bundler tests bench tools
	$(BIN)/mypy bundler
	# The installer and the core it carries into bundles must run on python3 3.6 (Rocky Linux 8 platform-python) and later.
	$(BIN)/vermin --target=3.6- --no-tips --eval-annotations=no --violations --quiet \
	    bundler/__init__.py bundler/compat.py bundler/text.py bundler/errors.py bundler/oci.py bundler/lock.py bundler/signing.py bundler/versions.py \
	    bundler/files.py bundler/trust.py bundler/archive.py bundler/rkeimages.py bundler/kinds.py bundler/k0simages.py bundler/installer

fix: install
	$(BIN)/ruff check --fix bundler tests bench tools
	$(BIN)/ruff format bundler tests bench tools

# make demo: the rke journey (tools/demo.sh); make demo KIND=k0s (or make demo-k0s): the k0s kind's.
KIND ?= rke
demo: install
ifeq ($(KIND),k0s)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/demo_k0s.py
else
	PATH="$(CURDIR)/$(BIN):$$PATH" tools/demo.sh
endif

demo-k0s:
	$(MAKE) demo KIND=k0s

bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/verify_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/build_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/images_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/debs_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/debs_real_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/rpms_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/parts_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/images_mode_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/verify_many_bench.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/scale_bench.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache *.egg-info
