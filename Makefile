# Chorus developer entry points. Everything installs what it needs from Debian first.
#   make run    build (dev) and start `chorus up` with the embedded defaults
#   make test   build (dev) and run every test through ctest
#   make build  configure + build (PRESET=dev|release|asan)
#   make asan   build and test with AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench  build (release) and run the benchmarks in bench/ with their peers
PRESET ?= dev
JOBS ?= $(shell nproc)
RUN_ARGS ?=
export CCACHE_DIR ?= $(HOME)/.cache/ccache

.PHONY: deps configure build test run asan bench clean

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

clean:
	rm -rf build
