# lorad — build, test, bench, run, install. The only entry point.
CC      ?= cc
# x86-64-v3 (AVX2, FMA: every x86 server CPU since 2013-15) so a binary built on an AVX-512
# machine runs on one without; the decode kernels for AVX-512 are chosen at run time.
CFLAGS  ?= -O3 -g -march=x86-64-v3 -mtune=native -ffp-contract=fast
WARN    := -Wall -Wextra -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes
PYTHON  ?= /usr/bin/python3
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
BUILD   ?= build

# Recursive (=) so pkg-config runs after `make test` has installed the packages.
PKGS     = openblas jansson libpcre2-8 libmicrohttpd libsystemd
CPPFLAGS = -std=c11 -D_GNU_SOURCE -I. -MMD -MP $(shell pkg-config --cflags $(PKGS))
LDLIBS   = $(shell pkg-config --libs $(PKGS)) -lunistring -lm -lpthread
CHECKLIBS = $(shell pkg-config --libs check)
CURLLIBS  = $(shell pkg-config --libs libcurl)

LIB_SRC  := $(wildcard core/*.c adapters/*.c) $(filter-out server/main.c,$(wildcard server/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(filter-out bench/benchutil.c,$(wildcard bench/*.c)))
# fuzz/fuzz_NAME.c: one harness per input surface, built as $(BUILD)/fuzz/NAME (replays its
# corpus in `make check`) and, by `make fuzz` only, as build-fuzz/fuzz/NAME-libfuzzer.
FUZZ_TARGETS := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_REPLAY  := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%)
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%-libfuzzer)
FUZZ_SECONDS ?= 60

ifneq ($(V),1)
Q := @
endif

.PHONY: all test check asan bench bench-serve bench-load bench-large soak run demo-model install deb clean \
    deps fuzz

# all: the daemon/CLI binary build/lorad
all: $(BUILD)/lorad

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -c $< -o $@

$(BUILD)/liblorad.a: $(LIB_OBJ)
	@echo "  AR    $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/lorad: $(BUILD)/server/main.o $(BUILD)/liblorad.a
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(TEST_BIN): $(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/testutil.o $(BUILD)/liblorad.a
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) $^ $(CHECKLIBS) $(LDLIBS) -o $@

$(BENCH_BIN): $(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/bench/benchutil.o $(BUILD)/liblorad.a
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) $^ $(LDLIBS) $(CURLLIBS) -o $@

FUZZ_OBJ := $(BUILD)/fuzz/fuzzutil.o $(BUILD)/tests/testutil.o $(BUILD)/liblorad.a

$(FUZZ_REPLAY): $(BUILD)/fuzz/%: $(BUILD)/fuzz/fuzz_%.o $(BUILD)/fuzz/replay.o $(FUZZ_OBJ)
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) $^ $(CHECKLIBS) $(LDLIBS) -o $@

$(FUZZ_BIN): $(BUILD)/fuzz/%-libfuzzer: $(BUILD)/fuzz/fuzz_%.o $(FUZZ_OBJ)
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -fsanitize=fuzzer $^ $(CHECKLIBS) $(LDLIBS) -o $@

# deps: install missing Debian packages (apt-get, as root) — a no-op when all are there
deps:
	$(Q)tools/deps.sh

# test: install deps, build, run every test, then the whole suite again under ASan/UBSan
test: deps
	$(Q)$(MAKE) --no-print-directory check
	$(Q)$(MAKE) --no-print-directory asan

# test_faults_alloc: every allocation lorad's code makes goes through the test's counters
$(BUILD)/tests/test_faults_alloc: LDLIBS += -Wl,--wrap=malloc -Wl,--wrap=calloc \
    -Wl,--wrap=realloc -Wl,--wrap=posix_memalign -Wl,--wrap=aligned_alloc -Wl,--wrap=mmap

# tests/faultshim.so: LD_PRELOAD'ed by tests/test_faults.py; never sanitized (it must load
# before an ASan runtime without being one)
$(BUILD)/tests/faultshim.so: tests/faultshim.c
	@mkdir -p $(dir $@)
	@echo "  CC    $@"
	$(Q)$(CC) -std=c11 -O2 -g -fPIC -shared $(WARN) $< -o $@ -ldl

# check: build and run unit tests + reference/integration tests in $(BUILD)
check: $(BUILD)/lorad $(TEST_BIN) $(FUZZ_REPLAY) $(BUILD)/tests/faultshim.so
	$(Q)PYTHON=$(PYTHON) tests/run.sh $(BUILD)

# asan: the same suite built with AddressSanitizer + UndefinedBehaviorSanitizer
asan:
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan \
	    CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" check

# fuzz: every libFuzzer harness for FUZZ_SECONDS (default 60) each, in build-fuzz (clang,
# ASan/UBSan; never part of `make test`); see README "Fuzzing"
# (core/smallmm.c uses GCC's __builtin_shuffle, so gcc compiles it, uninstrumented: no
# harness reaches its kernels.)
fuzz:
	$(Q)tools/deps.sh clang libclang-rt-14-dev
	$(Q)$(MAKE) --no-print-directory BUILD=build-fuzz CFLAGS="-O2 -g -march=native" \
	    build-fuzz/core/smallmm.o
	$(Q)$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang CFLAGS="-O1 -g -march=native \
	    -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined \
	    -fno-omit-frame-pointer" $(FUZZ_TARGETS:%=build-fuzz/fuzz/%-libfuzzer)
	$(Q)tools/fuzz.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# bench: benchmarks (never part of `make test`); see README "Performance"
bench: deps $(BUILD)/lorad $(BENCH_BIN)
	$(Q)PYTHON=$(PYTHON) bench/run.sh $(BUILD)

# bench-serve: HTTP streaming vs the same requests in process (TPOT, TTFT), then the
# serving benchmark (bench-load); see README and docs/benchmarks.md
bench-serve: deps $(BUILD)/lorad $(BENCH_BIN)
	$(Q)$(BUILD)/bench/bench_engine $(BUILD)/bench-data --prepare
	$(Q)$(BUILD)/bench/bench_serve $(BUILD) $(BUILD)/bench-data $(if $(filter 1,$(BENCH_QUICK)),--quick)
	$(Q)$(MAKE) --no-print-directory bench-load

# bench-load: many clients x many adapters against `lorad serve` (tokens/s, TTFT, TPOT);
# the table also goes to BUILD/bench-load.tsv (tools/plot_bench.py draws it); then the
# same closed-loop clients in process, without the server (bench_closed), and beside a
# paced --merge auto build against alone (bench_merge)
bench-load: deps $(BUILD)/lorad $(BENCH_BIN)
	$(Q)$(BUILD)/bench/bench_engine $(BUILD)/bench-data --prepare
	$(Q)$(BUILD)/bench/bench_load $(BUILD) $(BUILD)/bench-data --tsv $(BUILD)/bench-load.tsv \
	    $(if $(filter 1,$(BENCH_QUICK)),--quick)
	$(Q)$(BUILD)/bench/bench_closed $(BUILD)/bench-data $(if $(filter 1,$(BENCH_QUICK)),--quick)
	$(Q)$(BUILD)/bench/bench_merge $(BUILD)/bench-data $(if $(filter 1,$(BENCH_QUICK)),--quick)

# soak: lorad serve under a long mixed load (streams, abandoned streams, chat, uploads,
# replaces, deletes) on the demo model; RSS, fds, errors and p99 per interval; minutes
# from SOAK_MINUTES (default 10). Not part of `make test`; see docs/benchmarks.md
SOAK_MINUTES ?= 10
soak: deps $(BUILD)/lorad $(BENCH_BIN)
	$(Q)$(BUILD)/bench/bench_soak $(BUILD) $(BUILD)/bench-data --minutes $(SOAK_MINUTES)

# bench-large: an 8B-parameter model (16 GB of BF16, written to $(BUILD)/bench-data on first
# use) in bf16 and q8 — load time, RSS, tokens/s; f32 must be refused (see README)
bench-large: deps $(BENCH_BIN)
	$(Q)$(BUILD)/bench/bench_large $(BUILD)/bench-data $(if $(filter 1,$(BENCH_QUICK)),--quick)

# run: lorad's main job on an embedded default (see README)
run: deps $(BUILD)/lorad
	$(Q)tools/run.sh $(BUILD)

# demo-model: retrain models/demo from scratch (PyTorch; ~25 min on 2 cores; not part of test)
demo-model:
	$(Q)tools/demo/deps.sh
	$(Q)$(PYTHON) tools/demo/train.py
	$(Q)cd tools/demo/goldens && npm ci --no-audit --no-fund && node gen.js

# install: binary, man page, systemd units under $(DESTDIR)$(PREFIX); lorad.env unless there
install: $(BUILD)/lorad
	install -D -m 0755 $(BUILD)/lorad $(DESTDIR)$(BINDIR)/lorad
	install -D -m 0644 man/lorad.1 $(DESTDIR)$(MANDIR)/man1/lorad.1
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/bin/lorad|$(BINDIR)/lorad|' systemd/lorad.service \
	    >$(DESTDIR)$(UNITDIR)/lorad.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/lorad.service
	install -m 0644 systemd/lorad.socket $(DESTDIR)$(UNITDIR)/lorad.socket
	[ -e $(DESTDIR)/etc/lorad/lorad.env ] || \
	    install -D -m 0644 systemd/lorad.env $(DESTDIR)/etc/lorad/lorad.env

# deb: the Debian package, built by dpkg-buildpackage in a copy of the tree: $(BUILD)/deb/
deb:
	$(Q)tools/deps.sh debhelper dpkg-dev
	$(Q)rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb/lorad
	$(Q)tar -c --exclude=./.git --exclude='./build*' --exclude=./$(BUILD) \
	    --exclude=node_modules --exclude=__pycache__ --exclude=./debian/lorad \
	    --exclude=./debian/.debhelper -f - . | tar -x -C $(BUILD)/deb/lorad
	$(Q)cd $(BUILD)/deb/lorad && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u CFLAGS \
	    -u PREFIX -u DESTDIR dpkg-buildpackage -us -uc -b
	$(Q)ls $(BUILD)/deb/*.deb

# clean: remove build outputs
clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(BUILD)/server/main.d $(BUILD)/tests/testutil.d $(TEST_BIN:=.d) \
    $(BENCH_BIN:=.d) $(BUILD)/bench/benchutil.d $(BUILD)/fuzz/fuzzutil.d $(BUILD)/fuzz/replay.d \
    $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%.d)
