# busgate: one entry point. `make run` starts the gateway on its embedded default; `make test` runs
# every test. Each target installs its own prerequisites (scripts/bootstrap) when they are missing.

BUILD_DIR ?= build
FUZZ_DIR ?= build-fuzz
ASAN_DIR ?= build-asan
TSAN_DIR ?= build-tsan
JOBS ?= 2
CMAKE_FLAGS ?=
ifeq ($(CI),true)
  CMAKE_FLAGS += -DBUSGATE_WERROR=ON
endif
FUZZ_SECONDS ?= 20
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)

.PHONY: all bootstrap build run test test-cpp test-python test-go test-deploy test-asan test-tsan conformance conformance-local \
        fuzz vectors bench bench-quick clean

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

# The kill -9 runner test (clients/python) runs DURABLE_JOBS jobs on each bus and checks none is lost.
DURABLE_JOBS ?= 10000
test-python: build
	python3 -m pip install -q -e 'clients/python[ws,program]'
	BUSGATE_BIN=$(abspath $(BUILD_DIR))/bin/busgate BUSGATE_DURABLE_JOBS=$(DURABLE_JOBS) \
	  python3 -m pytest clients/python/tests -q

test-go: build
	cd clients/go && BUSGATE_BIN=$(abspath $(BUILD_DIR))/bin/busgate $(GO) test -race -count=1 ./...

# The Helm charts (deploy/helm), validated offline: helm lint --strict and helm template over their
# default and example values, kubernetes-validate --strict, the custom resources' documented fields,
# the rendered gateway configuration on the real gateway, and the forecast program's commands run as
# the program chart deploys them (deploy/tests). helm is built from the Go module proxy into
# $(BUILD_DIR)/tools/bin the first time (about 2 minutes).
HELM_VERSION ?= v3.16.3
HELM ?= $(abspath $(BUILD_DIR))/tools/bin/helm
test-deploy: build
	@test -x $(HELM) || { echo "building helm $(HELM_VERSION)"; GOBIN=$(dir $(HELM)) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); }
	python3 -m pip install -q -e 'clients/python[ws,program]' kubernetes-validate
	HELM=$(HELM) BUSGATE_BIN=$(abspath $(BUILD_DIR))/bin/busgate python3 -m pytest deploy/tests -q

# The conformance suite against any gateway: make conformance URL=tcp://H:P WS_URL=ws://H:P/v1/ws REPORT=dir
URL ?=
WS_URL ?=
REPORT ?= $(BUILD_DIR)/conformance-report
conformance: bootstrap
	@test -n "$(URL)" || { echo "usage: make conformance URL=tcp://HOST:PORT [WS_URL=ws://HOST:PORT/v1/ws] [REPORT=DIR]"; exit 2; }
	python3 -m conformance --url $(URL) $(if $(WS_URL),--ws-url $(WS_URL)) --cases '*' --report $(REPORT)

# The suite against this build's gateway, on the memory bus and on a real nats-server.
conformance-local: build
	BUSGATE_BIN=$(abspath $(BUILD_DIR))/bin/busgate conformance/run-local.sh memory
	BUSGATE_BIN=$(abspath $(BUILD_DIR))/bin/busgate conformance/run-local.sh nats

# Side-by-side benchmark: direct NATS, the gateway on NATS, the gateway on the memory bus.
bench: build
	python3 bench/run.py --build $(BUILD_DIR)

bench-quick: build
	python3 bench/run.py --build $(BUILD_DIR) --quick

# Sanitizer runs (scripts/sanitize), each in its own build folder: the C++ unit tests (ctest) and the
# gateway's black-box suites (pytest: gateway/tests/integration, webpy, nats; not the browser test of
# the web console) against busgate built with -fsanitize=address,undefined (test-asan, LeakSanitizer
# included) or -fsanitize=thread (test-tsan). Any sanitizer report fails the target, also one from a
# gateway process no test looked at: the runtimes write reports to $(ASAN_DIR)/sanitizer-reports
# (log_path) and the script fails when a file appears there. Suppressions: gateway/sanitizers/.
# TSan: GCC 12's runtime stops with "unexpected memory mapping" under a high ASLR entropy
# (vm.mmap_rnd_bits above 28); the script runs the TSan build, its tests and the gateways they start
# under `setarch $(uname -m) -R` (no address randomization for that process tree), which it accepts.
# Wall time on the 2-core machine, from an empty folder, every suite: test-asan 16 min (build 14.5,
# tests 1.5), test-tsan 10 min (build 8.5, tests 1.5); the rest of `make test` about 13 min.
# Both are part of `make test`; SKIP_SANITIZERS=1 leaves them out of a quick local run.
test-asan: bootstrap
	JOBS=$(JOBS) scripts/sanitize asan $(ASAN_DIR)

test-tsan: bootstrap
	JOBS=$(JOBS) scripts/sanitize tsan $(TSAN_DIR)

SANITIZER_RUNS := $(if $(SKIP_SANITIZERS),,test-asan test-tsan)
test: vectors test-cpp test-python test-go test-deploy conformance-local fuzz $(SANITIZER_RUNS)

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR) $(ASAN_DIR) $(TSAN_DIR)
