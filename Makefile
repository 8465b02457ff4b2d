# The page server's make targets. `make demo` and `make test` install what they need.
SHELL := /bin/bash
SWIFT ?= swift
APT_PACKAGES := liblz4-dev liburing-dev libzstd-dev postgresql-15 curl python3

.PHONY: deps build release test demo bench bench-deps bench-rocksdb clean

# Installs the system libraries (and tools) the build needs, only when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test 2>&1 | tee .build/test.log; exit $${PIPESTATUS[0]}

demo: release
	./scripts/demo.sh

# fio and librocksdb-dev (the RocksDB baseline of issue 8) are needed by the benchmarks only.
bench-deps:
	@dpkg -s fio >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio; }
	@dpkg -s librocksdb-dev >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq librocksdb-dev; }

bench: release bench-deps
	./scripts/bench.sh
	$(MAKE) bench-rocksdb

# Our store against the seed's RocksDB design: a separate package (Benchmarks/RocksBaseline), so that
# the server build and `make test` never need RocksDB.
bench-rocksdb: deps bench-deps
	$(SWIFT) build -c release --package-path Benchmarks/RocksBaseline
	./scripts/bench_rocksdb.sh
	for scale in 10 50 100; do \
	  PGBENCH_SCALE=$$scale MARKER=rocksdb-scale$$scale RESULTS_JSON=.build/bench_rocksdb_scale$$scale.json \
	    RESULTS_MD=.build/bench_rocksdb_scale$$scale.md ./scripts/bench_rocksdb.sh || exit 1; \
	done

clean:
	rm -rf .build .demo Benchmarks/RocksBaseline/.build
