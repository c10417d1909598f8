# Chorus developer entry points. Everything installs what it needs from Debian first.
#   make run    build (dev) and start `chorus up` with the embedded defaults
#   make test   build (dev) and run every test through ctest
#   make build  configure + build (PRESET=dev|release|asan)
#   make asan   build and test with AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench  build (release) and run the benchmarks in bench/ with their peers
#   make fuzz   build the libFuzzer targets (clang) and run each for FUZZ_SECONDS (fuzz/README.md)
PRESET ?= dev
JOBS ?= $(shell nproc)
RUN_ARGS ?=
FUZZ_SECONDS ?= 60
FUZZERS := query token config ws_frame
export CCACHE_DIR ?= $(HOME)/.cache/ccache

.PHONY: deps configure build test run asan bench fuzz clean

deps:
	@./scripts/install-deps.sh

configure: deps
	@cmake --preset $(PRESET) >/dev/null

build: configure
	cmake --build --preset $(PRESET) -j $(JOBS)

test: build
	ctest --preset $(PRESET) -j $(JOBS)

run: build
	./build/$(PRESET)/src/chorus/chorus up $(RUN_ARGS)

asan:
	$(MAKE) test PRESET=asan

bench:
	$(MAKE) build PRESET=release
	./bench/run-all.sh

# New inputs go to build/fuzz/corpus/<name> (the checked-in fuzz/corpus/<name> is only read),
# crashes to build/fuzz/artifacts/. Runs every fuzzer, then fails if any of them found something.
fuzz: deps
	@cmake --preset fuzz >/dev/null
	cmake --build --preset fuzz -j $(JOBS)
	@failed=""; for f in $(FUZZERS); do \
	  mkdir -p build/fuzz/corpus/$$f build/fuzz/artifacts; \
	  echo "fuzz: $${f}_fuzzer for $(FUZZ_SECONDS)s"; \
	  ./build/fuzz/fuzz/$${f}_fuzzer -max_total_time=$(FUZZ_SECONDS) -timeout=25 -rss_limit_mb=2048 \
	    -dict=fuzz/$$f.dict -artifact_prefix=build/fuzz/artifacts/$$f- -print_final_stats=1 \
	    build/fuzz/corpus/$$f fuzz/corpus/$$f || failed="$$failed $$f"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: findings from:$$failed (see build/fuzz/artifacts/)"; exit 1; fi

clean:
	rm -rf build
