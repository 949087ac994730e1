# The two commands of the README. Both set everything up on a fresh Debian machine first.
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test setup lint clean mutation

$(STAMP): requirements.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlpipe demo --output demo_out

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q

# Slow (about an hour on 2 cores), not part of `test`: see scripts/mutation.sh.
mutation: $(STAMP)
	bash scripts/mutation.sh

clean:
	rm -rf demo_out .pytest_cache mutants mutants.log
