# Two commands for a newcomer: `make demo` and `make test`. Both install what they need first.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD ?= build
CMAKE_FLAGS ?=
# The venv scripts/install-deps.sh sets up: the Python package is built for it and its tests run in it.
VENV ?= $(CURDIR)/.venv
PY = $(VENV)/bin/python
PY_FLAGS = -DFLASHRING_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(PY) -DPython3_EXECUTABLE=$(PY)
# The CUDA kernels are built (and their tests run, skipping without a GPU) wherever nvcc is found; CUDA=OFF
# turns them off, CUDA=ON insists.
NVCC := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA ?= $(if $(NVCC),ON,OFF)
# The NCCL transport, where NCCL's header sits beside the toolkit (NCCL=OFF turns it off).
NCCL ?= $(if $(and $(filter ON,$(CUDA)),$(wildcard $(dir $(NVCC))../include/nccl.h)),ON,OFF)
CUDA_FLAGS = -DFLASHRING_WITH_CUDA=$(CUDA) -DFLASHRING_WITH_NCCL=$(NCCL) $(if $(NVCC),-DCMAKE_CUDA_COMPILER=$(NVCC))

.PHONY: deps build demo test pip-check sanitize asan tsan format format-check bench-kernels clean help

help:
	@echo "make demo      install dependencies (and the default model), build, run SmolLM2-135M on 4 in-process ranks"
	@echo "make test      install dependencies, build (warnings are errors), run every test with CTest"
	@echo "make build     Release build; the tool is build/bin/flashring"
	@echo "make pip-check pip install . into a fresh venv and run the Python tests against the installed package"
	@echo "make sanitize  ASan+UBSan and TSan builds running the unit and thread-rank tests"
	@echo "make format    apply clang-format;  make format-check  verify it"

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DFLASHRING_WERROR=ON $(PY_FLAGS) $(CUDA_FLAGS) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/bin/flashring demo

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 900

# `pip install .` from this checkout into a fresh venv, then the package's tests against the installed copy
# (not the build tree's): what a user of the package gets. CI runs it after `make test`.
pip-check: deps
	rm -rf $(BUILD)/pip-venv
	$(PY) -m venv $(BUILD)/pip-venv
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BUILD)/pip-venv/bin/pip install -q ".[test]"
	cd python/tests && ../../$(BUILD)/pip-venv/bin/python -c \
	  "import flashring; assert 'site-packages' in flashring.__file__, flashring.__file__; print('pip-check: installed', flashring.__file__)"
	cd python/tests && FLASHRING_PY_REFERENCE=$(CURDIR)/$(BUILD)/bin/flashring_py_reference \
	  ../../$(BUILD)/pip-venv/bin/python -m pytest -q -p no:cacheprovider test_comm.py test_allreduce.py

# Sanitizers. MPI tests are left out: OpenMPI's own allocations drown ASan's reports.
asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLASHRING_WERROR=ON -DFLASHRING_WITH_MPI=OFF \
	  -DFLASHRING_BUILD_BENCH=OFF -DFLASHRING_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS) --target flashring_unit_tests flashring_multirank_tests
	$(PY) tests/tools/make_tiny_models.py build-asan/fixtures  # the engine tests' tiny models (skips without gguf)
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
	  build-asan/bin/flashring_unit_tests --gtest_brief=1
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 build-asan/bin/flashring_multirank_tests --gtest_brief=1

tsan: deps
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLASHRING_WERROR=ON -DFLASHRING_WITH_MPI=OFF \
	  -DFLASHRING_BUILD_BENCH=OFF -DFLASHRING_SANITIZE=thread
	cmake --build build-tsan -j $(JOBS) --target flashring_multirank_tests flashring_unit_tests
	$(PY) tests/tools/make_tiny_models.py build-tsan/fixtures
	# OPENBLAS_NUM_THREADS=1: OpenBLAS is not instrumented, so TSan cannot see its workers' own synchronization
	# and reports their writes to sgemm outputs as races with the rank thread that reads them afterwards.
	OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  build-tsan/bin/flashring_multirank_tests --gtest_brief=1 \
	  --gtest_filter='ThreadComm.*:Allreduce.*:AllreduceWithError.*:*AllreduceSweep.*_r4_*:*AllreduceSweep.*_r3_*:*SpAttentionSweep.*_r3_*:SpAttention.*:*EngineGrid.*tiny_uneven*:EngineTp.*:EngineErrors.*:EngineSampling.*:TokenChoiceTp.*:LlamaSession*:Hierarchical*:Workspace*'
	# The kernel thread pool (lock-free hand-off) and the quantized matmuls on 1-3 threads.
	OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 build-tsan/bin/flashring_unit_tests \
	  --gtest_brief=1 \
	  --gtest_filter='CpuPool.*:*Qmm*Matmul*:Workspace*'

sanitize: asan tsan

# libFuzzer on the GGUF reader (tests/fuzz): clang, ASan+UBSan, FUZZ_TIME seconds over a
# copy of the regression corpus (new inputs go to the copy; crashers to build-fuzz/crash-*, to be added to
# tests/fuzz/corpus/gguf once fixed).
.PHONY: fuzz
FUZZ_TIME ?= 60
fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLASHRING_WITH_MPI=OFF \
	  -DFLASHRING_BUILD_BENCH=OFF -DFLASHRING_BUILD_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS) --target flashring_fuzz_gguf
	rm -rf build-fuzz/corpus-gguf && mkdir -p build-fuzz/corpus-gguf && cp tests/fuzz/corpus/gguf/* build-fuzz/corpus-gguf/
	ASAN_OPTIONS=detect_leaks=1 build-fuzz/bin/flashring_fuzz_gguf -max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 \
	  -artifact_prefix=build-fuzz/ build-fuzz/corpus-gguf

FORMAT_FILES = $(shell git ls-files '*.h' '*.cc' '*.cu' 2>/dev/null)
format:
	clang-format -i $(FORMAT_FILES)
format-check:
	clang-format --dry-run -Werror $(FORMAT_FILES)

bench-kernels: build
	$(BUILD)/bin/flashring_kernel_bench --benchmark_min_time=0.2

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
