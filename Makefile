# busgate: one entry point. `make run` starts the gateway on its embedded default; `make test` runs
# every test. Each target installs its own prerequisites (scripts/bootstrap) when they are missing.

BUILD_DIR ?= build
FUZZ_DIR ?= build-fuzz
JOBS ?= 2
CMAKE_FLAGS ?=
ifeq ($(CI),true)
  CMAKE_FLAGS += -DBUSGATE_WERROR=ON
endif
FUZZ_SECONDS ?= 20

.PHONY: all bootstrap build run test test-cpp fuzz vectors clean

all: build

bootstrap:
	@scripts/bootstrap

build: bootstrap
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD_DIR) -j$(JOBS)

run: build
	$(BUILD_DIR)/bin/busgate --dev

test-cpp: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS)

vectors: bootstrap
	python3 conformance/vectors/generate.py --check

# Short libFuzzer runs of the stream parser, decoder and JSON mapping; any crash fails the target.
fuzz: bootstrap
	@CC=clang CXX=clang++ cmake -S . -B $(FUZZ_DIR) -DBUSGATE_FUZZ=ON -DBUSGATE_TESTS=OFF \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(FUZZ_DIR) -j$(JOBS)
	@scripts/fuzz $(FUZZ_DIR)/bin $(FUZZ_SECONDS)

test: vectors test-cpp fuzz

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR)
