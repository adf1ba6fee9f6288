# `make study` and `make test` set up everything they need; the other targets are their parts and the experiments.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
PRESET ?= default
JOBS   ?= 2

.PHONY: study test setup data sweep report bench clean lock slurm slurm-stop experiment

# The report set of a preset (experiments.yaml: default, converged, asymmetric, instance, fine, clip): its sweep in
# runs/, its tables, memorisation and HTML pages in reports/$(PRESET)/, then the findings (reports/README.md).
study: setup data
	$(VENV)/bin/nmtune experiment $(PRESET) --jobs $(JOBS)

# Two pytest workers (pytest-xdist), whole test files to each: most of the suite's time is single-threaded
# (notebook kernels starting and importing torch): on 2 cores two at a time took 10 min 16 s, one at a time 17-20 min.
# The smoke sweep the tests share is run once for both workers (tests/conftest.py).
TEST_JOBS ?= 2
test: setup data
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile tests

setup: $(STAMP)

# Idempotent: the venv is made once and re-installed only when pyproject.toml or constraints.txt changes. Every
# package is pinned by constraints.txt, so a rerun in a year resolves the same versions (make lock renews it).
# The kernelspec goes into the venv (--sys-prefix), never into the user's home.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nmtune-study)" >/dev/null
	touch $(STAMP)

# Fashion-MNIST comes from Debian's package dataset-fashion-mnist (offline). As root (CI) it is installed when
# missing; otherwise we say how to get it. $NMTUNE_DATA may point at a folder holding the idx .gz files instead.
# Debian's chromium and chromium-driver (the reports' browser test) come the same way, as root, when missing.
data:
	@if ! command -v chromedriver >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "data: installing Debian packages chromium and chromium-driver (the reports' browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	fi
	@if [ -n "$$NMTUNE_DATA" ] && [ -f "$$NMTUNE_DATA/train-images-idx3-ubyte.gz" ]; then \
	  echo "data: Fashion-MNIST from NMTUNE_DATA=$$NMTUNE_DATA"; \
	elif [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "data: Fashion-MNIST from $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "data: installing Debian package dataset-fashion-mnist"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null; \
	else \
	  echo "data: Fashion-MNIST not found. Either 'sudo apt-get install dataset-fashion-mnist'," \
	       "or set NMTUNE_DATA to a folder with the four idx .gz files" \
	       "(python -c 'from nmtune_lib.data.datasets import load_dataset; load_dataset(\"fashion_mnist\", \"train\", root=\"DIR\", download=True)'" \
	       "downloads them into DIR; then NMTUNE_DATA=DIR)." >&2; \
	  exit 1; \
	fi
	@$(PY) -c "from nmtune_lib.data.datasets import load_dataset; load_dataset('fashion_mnist', 'test')" \
	  || { echo "data: Fashion-MNIST is not readable where the study looks for it (see the error above)" >&2; exit 1; }

# A real one-node Slurm cluster on this machine (munge, MariaDB + slurmdbd, slurmctld, slurmd; as root), for
# `nmtune sweep --executor slurm` and its test. Idempotent; slurm-stop ends it.
slurm:
	bash slurm/cluster.sh up

slurm-stop:
	bash slurm/cluster.sh down

sweep: setup data
	$(VENV)/bin/nmtune sweep --preset $(PRESET) --jobs $(JOBS)

report: setup
	$(VENV)/bin/nmtune report --preset $(PRESET)

# One experiment of experiments.yaml (a report set, a rerun or a probe): `make experiment NAME=view_uncropped`;
# `.venv/bin/nmtune experiment --list` lists them. Each runs in its own run root and regenerates reports/README.md.
NAME ?=
experiment: setup data
	@test -n "$(NAME)" || { echo "make experiment NAME=...; the experiments:" >&2; $(VENV)/bin/nmtune experiment --list >&2; exit 2; }
	$(VENV)/bin/nmtune experiment $(NAME) --jobs $(JOBS)

bench: setup data
	$(PY) bench/pretrain_throughput.py
	$(PY) bench/spectrum_speed.py
	$(PY) bench/head_tuning.py
	$(PY) bench/head_step_profile.py --out bench/results/head_step_profile.json
	$(PY) bench/svd_routes.py --out bench/results/svd_routes.json

# Re-resolve the environment from pyproject.toml alone, in a scratch venv, and pin the result.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	{ echo "# Every package of the study's environment, pinned (make lock regenerates it; make setup installs with it)."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf runs/$(PRESET)
