# pgnats: PGXS build and install, plus the development targets.
#
#   make install [PG_CONFIG=...]  install the extension (control, SQL, Python) into PostgreSQL
#   make uninstall                remove all of it again
#   make setup                    one-time machine setup (apt packages, .venv, nats-server)
#   make demo                     local stack + worker + the guide's user registration example
#   make test                     the whole test suite (starts its own PostgreSQL and NATS)
#   make stack-up / stack-down    the local development stack (.stack/)
#   make lint                     ruff and mypy

EXTENSION = pgnats
DATA = pgnats--1.0.sql

PG_CONFIG ?= pg_config
# Python used to fetch the extension's dependencies (needs pip); the venv when there is one.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
# The interpreter PL/Python embeds, to byte-compile the installed code for it.
PLPYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,$(PYTHON))
VENV_BIN = .venv/bin

PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
else
$(info pg_config not found: PGXS targets (install, uninstall) need postgresql-server-dev; run make setup)
endif

# The extension's own Python folder; pgnats._load_python() puts it on sys.path.
pgnats_pydir = $(datadir)/pgnats/python

install: install-python
uninstall: uninstall-python

.PHONY: install-python uninstall-python setup demo test stack-up stack-down lint dist

install-python:
	rm -rf '$(DESTDIR)$(pgnats_pydir)'
	mkdir -p '$(DESTDIR)$(pgnats_pydir)'
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
	    --target '$(DESTDIR)$(pgnats_pydir)' -r extension/requirements.txt
	cd extension && find pgnats -name '*.py' -exec install -D -m 644 {} '$(DESTDIR)$(pgnats_pydir)/{}' \;
	$(PLPYTHON) -m compileall -q '$(DESTDIR)$(pgnats_pydir)' > /dev/null
	chmod -R a+rX '$(DESTDIR)$(datadir)/pgnats'

uninstall-python:
	rm -rf '$(DESTDIR)$(datadir)/pgnats'

SETUP_DONE = .venv/.pgnats-setup-done

setup:
	./scripts/setup

$(SETUP_DONE):
	./scripts/setup

demo: $(SETUP_DONE)
	$(VENV_BIN)/python -m devstack.demo

stack-up: $(SETUP_DONE)
	$(VENV_BIN)/python -m devstack up

stack-down:
	$(VENV_BIN)/python -m devstack down

test: $(SETUP_DONE)
	$(VENV_BIN)/python -m pytest

lint:
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/mypy

# A PGXN distribution (zip of the committed tree), installable with `pgxn install <zip>`.
dist:
	mkdir -p dist
	git archive --format zip --prefix=pgnats-1.0.0/ -o dist/pgnats-1.0.0.zip HEAD
