# Two commands do all the set-up themselves: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned: the exact version has a CPU build here; a range pulls CUDA.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[torch,test,data,interop]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m reference demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_cpu_port_vs_reference.py
	$(PY) benchmarks/bench_unet_cpu.py
	$(PY) benchmarks/bench_sampling.py
	$(PY) benchmarks/bench_train_gpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
