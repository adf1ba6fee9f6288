# The study's two commands: `make study` and `make test`. Both set up everything they need.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
PRESET ?= default
JOBS   ?= 2

.PHONY: study test setup data sweep report bench clean-runs lock slurm slurm-stop caption-probe view-probe study-bilinear \
	study-bicubic rerun rerun-all rerun-lp

study: setup data
	$(VENV)/bin/nmtune sweep --preset $(PRESET) --jobs $(JOBS)
	$(VENV)/bin/nmtune report --preset $(PRESET)

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
data:
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
	       "(python -c 'from nmtune_lib.data import load_dataset; load_dataset(\"fashion_mnist\", \"train\", root=\"DIR\", download=True)'" \
	       "downloads them into DIR; then NMTUNE_DATA=DIR)." >&2; \
	  exit 1; \
	fi
	@$(PY) -c "from nmtune_lib.data import load_dataset; load_dataset('fashion_mnist', 'test')" \
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

# Probes: small sweeps that change one setting (README, "What the CLIP sketch gain needs" and "Why the matched
# protocol scores the sketch task lower"). Each is noise 0 and 30 %, 5 seeds, no ablation or robustness heads, one
# sweep in its own run root (resumable; `make caption-probe-class` or `make view-probe-uncropped` runs one); its
# per-task scores and effects, timing and configuration go to reports/<preset>/<family>/<name>/ (nmtune scores,
# nmtune effects --by-task and nmtune contrast print them).
PROBE_GRID := --seeds 0 1 2 3 4 --noise-ratios 0 0.3 --set ablation=false --set 'robustness=[]' --jobs $(JOBS)
SKETCH := --set 'tasks=["fmnist_domains_sketch"]'

# views less their crop, flips kept
UNCROPPED := --set 'view_crop_scale=[1, 1]' --set 'view_crop_ratio=[1, 1]'
# The caption probe: CLIP pre-trained on captions that name all three attributes (attributes), none (class), all
# but brightness (no_brightness) or brightness alone (brightness), the linear probe only, on fmnist_domains_sketch
# alone; and class-only captions again with uncropped views (class_uncropped). About 14 min each on 2 cores.
CAPTION_PROBES := attributes class no_brightness brightness class_uncropped
PROBE_attributes := --set 'caption_attributes=["brightness", "size", "shape"]'
PROBE_class := --set 'caption_attributes=[]'
PROBE_no_brightness := --set 'caption_attributes=["size", "shape"]'
PROBE_brightness := --set 'caption_attributes=["brightness"]'
PROBE_class_uncropped := $(PROBE_class) $(UNCROPPED)
# The view probe: supervised pre-training (default preset), all three heads, every task of the default suite, with
# the reference's views (cropped) and without their crop (uncropped); claim 4's decomposition.csv is kept too. zoom:
# the crop's scale without its aspect ratio (ratio fixed at 1), on digits_shift alone, where the crop helps. nearest:
# zoom with the crop resampled by nearest neighbour instead of bilinearly (larger digits, no blur); bicubic: by
# bicubic interpolation, as the reference's timm transforms mostly do; cropped_bicubic: the reference's views on
# every task, resampled bicubically. bicubic_blur and sketch_bicubic_blur test why bilinear views beat bicubic ones
# on digits_shift and lose on the sketch task: bicubic views blurred by a Gaussian of bilinear's mean smoothing (a
# linear interpolation at a uniform sub-pixel phase t averages with variance t(1 − t), 1/6 on average: σ = 0.41 px);
# bicubic_blur08: twice that σ (0.82 px), the dose's second point.
VIEW_PROBES := cropped uncropped zoom nearest bicubic cropped_bicubic bicubic_blur sketch_bicubic_blur bicubic_blur08
VIEWS_cropped :=
VIEWS_uncropped := $(UNCROPPED)
VIEWS_zoom := --set 'view_crop_ratio=[1, 1]' --set 'tasks=["digits_shift"]'
VIEWS_nearest := $(VIEWS_zoom) --set view_interpolation=nearest
VIEWS_bicubic := $(VIEWS_zoom) --set view_interpolation=bicubic
VIEWS_cropped_bicubic := --set view_interpolation=bicubic
VIEWS_bicubic_blur := $(VIEWS_bicubic) --set view_blur=0.41
VIEWS_bicubic_blur08 := $(VIEWS_bicubic) --set view_blur=0.82
VIEWS_sketch_bicubic_blur := $(VIEWS_cropped_bicubic) --set view_blur=0.41 $(SKETCH)
# $(call probe,RUN ROOT NAME,PRESET AND HEADS,SETTINGS,REPORT FOLDER)
define probe
	$(VENV)/bin/nmtune sweep $(2) $(PROBE_GRID) $(3) --run-root runs/probe_$(1)
	mkdir -p $(4)
	cp runs/probe_$(1)/*/{config.yaml,timing.csv,noise_effects_by_task.csv,task_scores.csv} $(4)/
	$(VENV)/bin/nmtune scores $(4)
	$(VENV)/bin/nmtune effects --by-task $(4)
endef
caption-probe: $(addprefix caption-probe-,$(CAPTION_PROBES))
caption-probe-%: setup data
	$(call probe,clip_$*,--preset clip --set 'methods=["lp"]' $(SKETCH),$(PROBE_$*),reports/clip/caption_probe/$*)
view-probe: $(addprefix view-probe-,$(VIEW_PROBES))
view-probe-%: setup data
	$(call probe,views_$*,--preset default,$(VIEWS_$*),reports/default/view_probe/$*)
	cp runs/probe_views_$*/default/decomposition.csv reports/default/view_probe/$*/  # the MLP and NMTune heads

# The whole default study (5 ratios, 5 seeds, every head) with bilinear views (ours, the default: `make study` in
# its own run root, so it can re-make the default on this machine beside the committed one) or bicubic views (the
# reference's resampling for most timm models): summary tables only, for `nmtune compare reports/default
# reports/default/view_probe/study_bilinear reports/default/view_probe/study_bicubic`.
STUDY_TABLES := config.yaml timing.csv claims.csv decomposition.csv noise_effects.csv noise_effects_by_task.csv \
	task_scores.csv sensitivity.csv robustness.csv stability.csv
STUDY_bilinear :=
STUDY_bicubic := --set view_interpolation=bicubic
# $(call beside,PRESET,SETTINGS,RUN ROOT,TABLES,REPORT FOLDER,COMPARE LABELS): a whole set swept in a run root of
# its own, its summary tables copied into REPORT FOLDER and compared with the committed reports/PRESET.
define beside
	$(VENV)/bin/nmtune sweep --preset $(1) $(2) --jobs $(JOBS) --run-root $(3)
	mkdir -p $(5)
	cp $(addprefix $(3)/$(1)/,$(4)) $(5)/
	$(VENV)/bin/nmtune compare reports/$(1) $(5) $(6)
endef
study-bilinear study-bicubic: study-%: setup data
	$(call beside,default,$(STUDY_$*),runs/probe_views_study_$*,$(STUDY_TABLES),reports/default/view_probe/study_$*,)

# A rerun of a committed set beside it, to see which verdicts survive another machine's kernels (CPU numbers are
# bit-identical only on the same machine): `make rerun PRESET=asymmetric` re-makes the whole set in a run root of its
# own and copies its summary tables to reports/$(PRESET)/rerun_all/; `make rerun-lp PRESET=...` re-makes only what
# claims 1-3 read (the spectrum and the linear probe, under both protocols and the robustness settings; no MLP,
# NMTune, ablation or sensitivity heads) into reports/$(PRESET)/rerun_lp/. The default's whole rerun is study-bilinear.
RERUN_all :=
RERUN_lp := --set 'methods=["lp"]' --set ablation=false
RERUN_TABLES_all := $(STUDY_TABLES)
RERUN_TABLES_lp := $(filter-out decomposition.csv sensitivity.csv,$(STUDY_TABLES))  # those two need MLP and NMTune
rerun: rerun-all
rerun-all rerun-lp: rerun-%: setup data
	$(call beside,$(PRESET),$(RERUN_$*),runs/rerun_$*_$(PRESET),$(RERUN_TABLES_$*),reports/$(PRESET)/rerun_$*,\
	  --labels committed rerun)

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

clean-runs:
	rm -rf runs/$(PRESET)
