# The two commands of the README. Both create the environment first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup clean

$(VENV)/.ready: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

setup: $(VENV)/.ready

# The main job on the default device (the CPU here, a GPU where there is one).
# doctor exits 1 when it finds problems; they are printed, and the demonstration still runs.
run: $(VENV)/.ready
	-$(VENV)/bin/tangtoc doctor
	$(PY) examples/quickstart.py

test: $(VENV)/.ready
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
