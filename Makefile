# The two commands of the README. Both create the environment first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup clean

$(VENV)/.ready: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

setup: $(VENV)/.ready

# The main job on the default device (the CPU here, plus any GPU present): the environment report, the
# four-step demonstration, then the quick benchmark (about a minute on a 2-core CPU), with its JSON and PNG in out/.
# doctor exits 1 when it finds problems; they are printed, and the rest still runs.
run: $(VENV)/.ready
	-$(VENV)/bin/tangtoc doctor
	$(PY) examples/quickstart.py
	$(VENV)/bin/tangtoc bench --json out/bench.json --plot out/bench.png

test: $(VENV)/.ready
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
