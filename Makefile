# scapgate — the two commands: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STATE := .state
CONTENT := $(STATE)/content/manifest.json
CERTS := $(STATE)/certs

.PHONY: run test bench demo deps venv content certs lint clean

REACH := $(STATE)/content/.scapgate-reach/.warm

deps: $(STATE)/.deps $(VENV)/.installed $(CONTENT) $(REACH)

$(STATE)/.deps: scripts/install-deps.sh
	@mkdir -p $(STATE)
	bash scripts/install-deps.sh
	@touch $@

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

$(CONTENT): scripts/install-content.sh
	bash scripts/install-content.sh $(STATE)/content

# Each shipped profile's partial-unpack filter (scan/reach.py), computed once beside the content.
$(REACH): $(CONTENT) $(VENV)/.installed webhook/scan/reach.py $(wildcard policies/*.yaml policies/examples/*)
	$(VENV)/bin/scapgate policy reads policies policies/examples > /dev/null
	@mkdir -p $(dir $@) && touch $@

certs: deps
	@test -s $(CERTS)/tls.crt || $(VENV)/bin/scapgate certs --service scapgate --namespace scapgate --out $(CERTS)

$(STATE)/console-token:
	@mkdir -p $(STATE)
	@umask 077 && $(PY) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@.tmp && mv $@.tmp $@

run: deps certs $(STATE)/console-token
	@echo "console: https://127.0.0.1:8444/api/v1/inventory  (Authorization: Bearer \$$(cat $(STATE)/console-token))"
	$(VENV)/bin/scapgate serve --bind 127.0.0.1:8443 --cert $(CERTS)/tls.crt --key $(CERTS)/tls.key \
	  --policy policies --state-dir $(STATE) \
	  --console-bind 127.0.0.1:8444 --console-token-file $(STATE)/console-token

test: deps
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: deps
	$(PY) -m benchmarks.run

demo: deps certs
	$(PY) -m scripts.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(STATE)/certs
