# liboutbox: the library, the outbox-relay, the tests, the demo and the benchmarks.
# Plain GNU make; every dependency comes through pkg-config.  `make help` lists the targets.

PREFIX   ?= /usr/local
LIBDIR   ?= $(PREFIX)/lib
INCDIR   ?= $(PREFIX)/include
BINDIR   ?= $(PREFIX)/bin
MANDIR   ?= $(PREFIX)/share/man
DATADIR  ?= $(PREFIX)/share/liboutbox
UNITDIR  ?= $(PREFIX)/lib/systemd/system
DESTDIR  ?=
CC       ?= cc
WERROR   ?= 1
SANITIZE ?=
PKG_CONFIG ?= pkg-config

# Sanitizer builds live apart so they never mix objects with the normal build.
BUILD ?= build$(if $(SANITIZE),/sanitize)
B := $(BUILD)

HDR := include/outbox/outbox.h
VERSION_MAJOR := $(shell sed -n 's/^\#define OUTBOX_VERSION_MAJOR \([0-9]*\).*/\1/p' $(HDR))
VERSION_MINOR := $(shell sed -n 's/^\#define OUTBOX_VERSION_MINOR \([0-9]*\).*/\1/p' $(HDR))
VERSION_PATCH := $(shell sed -n 's/^\#define OUTBOX_VERSION_PATCH \([0-9]*\).*/\1/p' $(HDR))
VERSION  := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)
SONAME   := liboutbox.so.$(VERSION_MAJOR)

LIB_PKGS  := libpq rdkafka libprotobuf-c
TEST_PKGS := check

# Deferred (=) so that a machine without the packages can still run `make deps` and `make clean`.
PKG_CFLAGS  = $(shell $(PKG_CONFIG) --cflags $(LIB_PKGS) 2>/dev/null)
PKG_LIBS    = $(shell $(PKG_CONFIG) --libs $(LIB_PKGS) 2>/dev/null)
# The relay alone serves HTTP (metrics and health).
MHD_CFLAGS  = $(shell $(PKG_CONFIG) --cflags libmicrohttpd 2>/dev/null)
MHD_LIBS    = $(shell $(PKG_CONFIG) --libs libmicrohttpd 2>/dev/null)
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(TEST_PKGS) 2>/dev/null)
CHECK_LIBS   = $(shell $(PKG_CONFIG) --libs $(TEST_PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Wstrict-prototypes -Wmissing-prototypes -Wwrite-strings -Wshadow
ifeq ($(WERROR),1)
WARN += -Werror
endif
OPT ?= -O2 -g
SAN_FLAGS := $(if $(SANITIZE),-fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all)
BASE_CFLAGS = -std=c11 -D_GNU_SOURCE -pthread $(OPT) $(SAN_FLAGS) -Iinclude -Ilib -I$(B)/gen $(PKG_CFLAGS)
LIB_CFLAGS  = $(BASE_CFLAGS) $(WARN) -fPIC -fvisibility=hidden $(CFLAGS)
# protoc-c's output is not ours to fix: compile it without the extra prototype warnings.
GEN_CFLAGS  = $(BASE_CFLAGS) -Wall -fPIC -fvisibility=hidden $(CFLAGS)
PROG_CFLAGS = $(BASE_CFLAGS) $(WARN) $(CFLAGS)
LINK_FLAGS  = -pthread $(SAN_FLAGS) $(LDFLAGS)

PROTO     := proto/outbox/v1/envelope.proto
GEN_C     := $(B)/gen/outbox/v1/envelope.pb-c.c
GEN_H     := $(B)/gen/outbox/v1/envelope.pb-c.h
LIB_SRCS  := $(wildcard lib/*.c)
LIB_OBJS  := $(patsubst lib/%.c,$(B)/lib/%.o,$(LIB_SRCS)) $(B)/gen/envelope.pb-c.o
SHLIB     := $(B)/liboutbox.so.$(VERSION)
STLIB     := $(B)/liboutbox.a
PCFILE    := $(B)/liboutbox.pc
RELAY_SRCS := $(wildcard relay/*.c)
RELAY     := $(B)/outbox-relay
MOCK      := $(B)/mock-kafka
FREEZE_PROXY := $(B)/freeze-proxy
TEST_CONSUMER := $(B)/test-consumer
TEST_SRCS := $(wildcard tests/check_*.c)
TESTS     := $(patsubst tests/%.c,$(B)/tests/%,$(TEST_SRCS))
JS_READER := $(B)/js/ce_read.mjs
TESTLIB_SRCS := $(wildcard tests/support/testutil*.c)
BENCH_SRCS := $(wildcard tests/bench/*.c)
BENCHES   := $(patsubst tests/bench/%.c,$(B)/bench/%,$(BENCH_SRCS))
DEPCHECK  := $(B)/.depcheck

.PHONY: all lib relay tests examples check check-faults check-valgrind bench bench-ab demo deps install uninstall clean help
.DEFAULT_GOAL := all

all: lib $(RELAY) $(MOCK)

lib: $(SHLIB) $(STLIB) $(PCFILE)

help:
	@echo "make            build build/liboutbox.so, liboutbox.a, liboutbox.pc, outbox-relay"
	@echo "make demo       run the end-to-end demo (throwaway PostgreSQL + local Kafka-protocol broker)"
	@echo "make check      run every test suite (add SANITIZE=address,undefined for ASan/UBSan)"
	@echo "make check-faults  run the fault-injection scenario (SEEDS=N seeds, or SEED=S to replay one; MODE=wal for outbox.mode=wal)"
	@echo "make check-valgrind  run the relay under valgrind memcheck for a 10,000-message drain"
	@echo "make bench      run the benchmarks (QUICK=1 for a short run, BENCH='longtx drain' for some)"
	@echo "make fuzz       fuzz the input parsers with clang's libFuzzer, FUZZ_SECONDS=60 per target (build/fuzz)"
	@echo "make deps       install the Debian packages the build and tests need (as root)"
	@echo "make install    install under PREFIX=$(PREFIX) (DESTDIR honoured)"
	@echo "make clean      remove build/"

# ---- dependencies ------------------------------------------------------------------------
deps:
	@tests/support/deps.sh install

$(DEPCHECK):
	@tests/support/deps.sh check
	@mkdir -p $(@D) && touch $@

# ---- code generation ---------------------------------------------------------------------
$(GEN_C) $(GEN_H) &: $(PROTO) | $(DEPCHECK)
	@mkdir -p $(B)/gen
	protoc-c --proto_path=proto --c_out=$(B)/gen $(PROTO)

# ---- the library -------------------------------------------------------------------------
$(B)/lib/%.o: lib/%.c lib/outbox_int.h $(HDR) $(GEN_H) | $(DEPCHECK)
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -c -o $@ $<

$(B)/gen/envelope.pb-c.o: $(GEN_C) $(GEN_H)
	$(CC) $(GEN_CFLAGS) -c -o $@ $<

$(SHLIB): $(LIB_OBJS)
	$(CC) -shared -Wl,-soname,$(SONAME) -o $@ $^ $(LINK_FLAGS) $(PKG_LIBS)
	ln -sf liboutbox.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $(B)/liboutbox.so

$(STLIB): $(LIB_OBJS)
	rm -f $@
	$(AR) rcs $@ $^

# liboutbox.pc's lines for the PREFIX, LIBDIR and INCDIR of the make that expands them (deferred,
# so `make install PREFIX=...` writes its own; DESTDIR is where files are staged, never where they
# are used, so it has no place here).  build/liboutbox.pc is written for the PREFIX of the build.
PC_LINES = "prefix=$(PREFIX)" "libdir=$(patsubst $(PREFIX)%,\$${prefix}%,$(LIBDIR))" \
	  "includedir=$(patsubst $(PREFIX)%,\$${prefix}%,$(INCDIR))" "" \
	  "Name: liboutbox" \
	  "Description: Transactional messaging (outbox) on PostgreSQL and Kafka" \
	  "Version: $(VERSION)" \
	  "Requires: libpq >= 14" \
	  "Requires.private: libprotobuf-c rdkafka" \
	  "Cflags: -I\$${includedir}" \
	  "Libs: -L\$${libdir} -loutbox"

$(PCFILE): $(HDR) Makefile | $(DEPCHECK)
	@mkdir -p $(@D)
	@printf '%s\n' $(PC_LINES) > $@

# ---- programs ----------------------------------------------------------------------------
# Programs link the static library: the relay uses internal helpers that the .so does not export.
$(RELAY): $(RELAY_SRCS) $(wildcard relay/*.h) $(STLIB)
	$(CC) $(PROG_CFLAGS) $(MHD_CFLAGS) -o $@ $(RELAY_SRCS) $(STLIB) $(LINK_FLAGS) $(PKG_LIBS) $(MHD_LIBS)

$(MOCK): tests/support/mock-kafka.c | $(DEPCHECK)
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) -o $@ $< $(LINK_FLAGS) $(PKG_LIBS)

# A TCP forwarder that can go silent on a signal (network partition, hung pooler): plain C.
$(FREEZE_PROXY): tests/support/freeze-proxy.c
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) -o $@ $< $(LINK_FLAGS)

$(B)/tests/%: tests/%.c $(TESTLIB_SRCS) $(wildcard tests/support/testutil*.h) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) $(CHECK_CFLAGS) -Itests/support -Irelay -o $@ $< $(TEST_EXTRA_$*) $(TESTLIB_SRCS) \
	  $(STLIB) $(LINK_FLAGS) $(PKG_LIBS) $(CHECK_LIBS)

# The id arithmetic suite links the relay's pure idranges.c.
TEST_EXTRA_check_idranges := relay/idranges.c
$(B)/tests/check_idranges: relay/idranges.c relay/idranges.h

# The replication stream suite links the relay's pure walproto.c.
TEST_EXTRA_check_walproto := relay/walproto.c
$(B)/tests/check_walproto: relay/walproto.c relay/walproto.h

# check_install runs `make install` on this very build and links a program to the installed library,
# which when sanitized needs the same compiler and sanitizer runtime: tell it which those are.
$(B)/tests/check_install: PROG_CFLAGS += -DCHECK_INSTALL_BUILD='"$(B)"' -DCHECK_INSTALL_CC='"$(CC)"' \
  -DCHECK_INSTALL_SANITIZE='"$(SANITIZE)"' -DCHECK_INSTALL_SAN_FLAGS='"$(SAN_FLAGS)"'

# Suites with their own make targets (long or needing extra tools): not part of `make check`.
EXTRA_TESTS := $(B)/faults/check_faults $(B)/valgrind/check_valgrind
$(EXTRA_TESTS): $(B)/%: tests/%.c $(TESTLIB_SRCS) $(wildcard tests/support/testutil*.h) $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) $(CHECK_CFLAGS) -Itests/support -o $@ $< $(TESTLIB_SRCS) $(STLIB) \
	  $(LINK_FLAGS) $(PKG_LIBS) $(CHECK_LIBS)

$(B)/bench/%: tests/bench/%.c tests/bench/bench.h $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) -o $@ $< $(STLIB) $(LINK_FLAGS) $(PKG_LIBS)

# ---- examples (the demo) --------------------------------------------------------------------
EX_GEN_C := $(B)/examples/gen/orders.pb-c.c
EX_GEN_H := $(B)/examples/gen/orders.pb-c.h
EXAMPLES := $(B)/examples/order-service $(B)/examples/customer-service $(B)/examples/demo-check

$(EX_GEN_C) $(EX_GEN_H) &: examples/proto/orders.proto | $(DEPCHECK)
	@mkdir -p $(B)/examples/gen
	protoc-c --proto_path=examples/proto --c_out=$(B)/examples/gen examples/proto/orders.proto

$(B)/examples/%: examples/%/*.c $(EX_GEN_C) $(EX_GEN_H) $(STLIB)
	$(CC) $(PROG_CFLAGS) -I$(B)/examples/gen -o $@ $(filter %.c,$^) $(STLIB) $(LINK_FLAGS) $(PKG_LIBS)

examples: $(EXAMPLES)

$(TEST_CONSUMER): tests/support/test-consumer.c $(STLIB)
	$(CC) $(PROG_CFLAGS) -o $@ $< $(STLIB) $(LINK_FLAGS) $(PKG_LIBS)

tests: all $(FREEZE_PROXY) $(TESTS) $(if $(wildcard tests/support/test-consumer.c),$(TEST_CONSUMER)) $(JS_READER)

# check_cloudevents reads the relay's records with the official CloudEvents JavaScript SDK: the npm
# packages of tests/js/package.json go into build/js (Node.js 20 and the npm registry needed).
$(B)/js/node_modules/.installed: tests/js/package.json
	@mkdir -p $(@D)
	cp tests/js/package.json $(B)/js/
	cd $(B)/js && npm install --no-audit --no-fund --loglevel=error
	touch $@

$(JS_READER): tests/js/ce_read.mjs $(B)/js/node_modules/.installed
	cp $< $@

# ---- fuzzing -----------------------------------------------------------------------------
# tests/fuzz/fuzz_<target>.c are libFuzzer targets for the parsers of untrusted bytes.  `make check`
# replays their corpus and regressions through fuzz_replay_<target> (any compiler, any SANITIZE);
# `make fuzz` builds them with clang in build/fuzz, whose objects carry the fuzzer's coverage
# instrumentation and so never mix with another build, then fuzzes each for FUZZ_SECONDS.
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_REPLAYS := $(patsubst %,$(B)/tests/fuzz_replay_%,$(FUZZ_TARGETS))
FUZZERS      := $(patsubst %,$(B)/fuzz_%,$(FUZZ_TARGETS))
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
# The configuration target links the relay's file parser, the stream target its pure parser.
FUZZ_EXTRA_conf := relay/conffile.c
FUZZ_EXTRA_walproto := relay/walproto.c

.PHONY: fuzz fuzz-build
tests: $(FUZZ_REPLAYS)

$(B)/tests/fuzz_replay_%: tests/fuzz/replay.c tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(STLIB)
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) -Irelay -o $@ tests/fuzz/replay.c tests/fuzz/fuzz_$*.c $(FUZZ_EXTRA_$*) $(STLIB) \
	  $(LINK_FLAGS) $(PKG_LIBS)

$(B)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(STLIB)
	$(CC) $(PROG_CFLAGS) -Irelay -fsanitize=fuzzer -o $@ $< $(FUZZ_EXTRA_$*) $(STLIB) $(LINK_FLAGS) $(PKG_LIBS)

$(B)/tests/fuzz_replay_conf $(B)/fuzz_conf: relay/conffile.c relay/relay.h
$(B)/tests/fuzz_replay_walproto $(B)/fuzz_walproto: relay/walproto.c relay/walproto.h

# Internal: run by `make fuzz` with the variables below.
fuzz-build: $(FUZZERS)

fuzz:
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=$(FUZZ_CC) \
	  SANITIZE=fuzzer-no-link,address,undefined fuzz-build
	tests/fuzz/run.sh build/fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# ---- running -----------------------------------------------------------------------------
check: deps
	@$(MAKE) --no-print-directory tests
	tests/support/run-tests.sh $(B) $(TESTS)
	$(foreach t,$(FUZZ_TARGETS),$(B)/tests/fuzz_replay_$(t) $(wildcard tests/fuzz/corpus/$(t) tests/fuzz/regressions/$(t)) &&) true

check-faults: deps
	@$(MAKE) --no-print-directory all $(TEST_CONSUMER) $(FREEZE_PROXY) $(B)/faults/check_faults
	$(if $(MODE),OUTBOX_FAULT_MODE=$(MODE) )tests/faults/run.sh $(B) $(SEED)

check-valgrind: deps
	@tests/support/deps.sh install valgrind
	@$(MAKE) --no-print-directory all $(B)/valgrind/check_valgrind
	tests/support/run-tests.sh $(B) $(B)/valgrind/check_valgrind

demo: deps
	@$(MAKE) --no-print-directory all examples
	examples/demo.sh $(B)

bench: deps
	@tests/support/deps.sh install bench
	@$(MAKE) --no-print-directory all $(BENCHES)
	OUTBOX_PG_DURABLE=1 tests/support/with-services.sh tests/bench/run.sh $(B) $(if $(QUICK),quick,full) $(BENCH)

# Old against new: make bench-ab OLD=/path/to/old/outbox-relay [ROUNDS=3]
bench-ab: deps
	@test -x "$(OLD)" || { echo "make bench-ab: set OLD to the relay binary to compare with" >&2; exit 2; }
	@$(MAKE) --no-print-directory all $(BENCHES)
	OUTBOX_PG_DURABLE=1 tests/support/with-services.sh tests/bench/ab.sh $(B) $(OLD) $(RELAY) $(or $(ROUNDS),3)

# ---- install -----------------------------------------------------------------------------
# INSTALL_PREBUILT=1 installs what is built without looking at the sources (check_install runs it
# while the suites run: a rebuild then would swap binaries under them).
install: $(if $(INSTALL_PREBUILT),,lib $(RELAY))
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/outbox $(DESTDIR)$(BINDIR)
	install -m 644 $(HDR) $(DESTDIR)$(INCDIR)/outbox/
	install -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf liboutbox.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/liboutbox.so
	install -m 644 $(STLIB) $(DESTDIR)$(LIBDIR)/
	printf '%s\n' $(PC_LINES) > $(DESTDIR)$(LIBDIR)/pkgconfig/liboutbox.pc
	chmod 644 $(DESTDIR)$(LIBDIR)/pkgconfig/liboutbox.pc
	install -m 755 $(RELAY) $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(DATADIR) $(DESTDIR)$(UNITDIR)
	install -m 644 relay/outbox-relay.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 relay/relay.conf $(DESTDIR)$(DATADIR)/relay.conf.example
	sed 's|@BINDIR@|$(BINDIR)|' relay/outbox-relay.service > $(DESTDIR)$(UNITDIR)/outbox-relay.service
	chmod 644 $(DESTDIR)$(UNITDIR)/outbox-relay.service

uninstall:
	rm -f $(DESTDIR)$(INCDIR)/outbox/outbox.h $(DESTDIR)$(LIBDIR)/liboutbox.* \
	  $(DESTDIR)$(LIBDIR)/pkgconfig/liboutbox.pc $(DESTDIR)$(BINDIR)/outbox-relay \
	  $(DESTDIR)$(MANDIR)/man1/outbox-relay.1 $(DESTDIR)$(DATADIR)/relay.conf.example \
	  $(DESTDIR)$(UNITDIR)/outbox-relay.service

clean:
	rm -rf build
