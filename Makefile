# exaq build.
#
#   make            bin/exaqd bin/exaqctl bin/exaq-worker (release build)
#   make deps       apt-installs the missing Debian -dev packages (as root; else prints the command)
#   make test       unit, kernel-reference and integration tests (no GPU needed)
#   make check      the same tests under ASan+UBSan, then the daemon tests under TSan
#   make fuzz       libFuzzer targets (clang), FUZZ_SECONDS each (default 60)
#   make demo       a whole sweep on the small model kept in tests/data/tiny-exaone4
#   make bench      CPU (and GPU where present) benchmarks, one table
#   make format     clang-format --dry-run -Werror;  make lint: format + loop-blocking grep
#
# One build directory per configuration (build/release, build/asan, build/tsan, build/fuzz)
# so objects built with different flags never mix. V=1 shows the commands.

CFG ?= release
PREFIX ?= /usr/local
O ?= build/$(CFG)
Q := $(if $(V),,@)

CC ?= cc
ifeq ($(CC),cc)
CC := gcc
endif

DEB_PKGS := gcc make pkg-config libyaml-dev libsqlite3-dev libuv1-dev libcjson-dev libzip-dev \
            libcmocka-dev libssl-dev zip unzip procps jq libmicrohttpd-dev
# Needed only by tests: the browser tests (report.html, the dashboard) skip without it. `make
# deps` installs it as root (CI); for other users a missing one is a note, not an error.
DEB_TEST_PKGS := chromium

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
        -Wno-format-nonliteral
ifneq ($(NO_WERROR),1)
WARN += -Werror
endif
CPPFLAGS := -I. -I/usr/include/cjson -D_GNU_SOURCE -MMD -MP
BASE_CFLAGS := -std=gnu11 -g -pthread $(WARN)
LIBS := -lyaml -lsqlite3 -luv -lcjson -lzip -lcrypto -lm -lpthread -ldl

ifeq ($(CFG),release)
OPT := -O2
KOPT := -O3 -march=native
else ifeq ($(CFG),asan)
SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT := -O1 $(SAN)
KOPT := -O2 $(SAN)
LDSAN := $(SAN)
else ifeq ($(CFG),tsan)
SAN := -fsanitize=thread
OPT := -O1 $(SAN)
KOPT := -O2 $(SAN)
LDSAN := $(SAN)
else ifeq ($(CFG),fuzz)
CC := clang
SAN := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
OPT := -O1 $(SAN)
KOPT := -O1 $(SAN)
LDSAN := -fsanitize=address,undefined
else
$(error unknown CFG '$(CFG)': use release, asan, tsan or fuzz)
endif

CFLAGS := $(BASE_CFLAGS) $(OPT)
KCFLAGS := $(BASE_CFLAGS) $(KOPT)

# ---- sources -------------------------------------------------------------------------------
# libexaq.a: common/ (helpers, the safetensors reader), lanes/ and proto/: no compute code.
# exaqctl links only it; exaqd adds libexaqd.a; exaq-worker adds libexaqw.a (engine,
# algorithms, trainer (worker/train/), stages, kernels). docs/design.md has the map of the folders.
LIB_SRC := $(wildcard common/*.c) $(wildcard lanes/*.c) $(wildcard proto/*.c)
DAEMON_LIB_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CTL_SRC := $(wildcard ctl/*.c)
WORKER_LIB_SRC := $(filter-out worker/main.c,$(wildcard worker/*.c) $(wildcard worker/*/*.c))
KERNEL_SRC := $(wildcard kernels/*.c kernels/ref/*.c kernels/cpu/*.c)
UNIT_SRC := $(wildcard tests/unit/*/test_*.c) $(wildcard tests/kernels/test_*.c) $(wildcard tests/integ/test_*.c)
FUZZ_SRC := $(wildcard tests/fuzz/*_fuzz.c)

obj = $(patsubst %.c,$(O)/obj/%.o,$(1))

LIB_A := $(O)/libexaq.a
DAEMON_A := $(O)/libexaqd.a
WORKER_A := $(O)/libexaqw.a
ALL_A := $(DAEMON_A) $(WORKER_A) $(LIB_A)

BINDIR := $(O)/bin
BINS := $(BINDIR)/exaqd $(BINDIR)/exaqctl $(BINDIR)/exaq-worker
UNIT_BINS := $(patsubst tests/%.c,$(O)/tests/%,$(UNIT_SRC))
# Helper programs of the integration tests (not tests themselves): the DevTools driver.
TOOL_BINS := $(O)/tests/integ/cdp
# Integration scripts (tests/integ/lib.sh is their shared library, not a test).
INTEG_SH := $(sort $(filter-out tests/integ/lib.sh,$(wildcard tests/integ/*.sh)))

ALL_OBJ := $(call obj,$(LIB_SRC) $(DAEMON_LIB_SRC) daemon/main.c $(CTL_SRC) $(WORKER_LIB_SRC) \
             worker/main.c $(KERNEL_SRC) $(UNIT_SRC))

# ---- CUDA (optional; built whenever nvcc exists, loaded at run time) ------------------------
# libexaq_cuda.so is dlopened by kernels/cuda_loader.c (docs/cuda.md): no binary links CUDA, so
# the same binaries run without it. `make NVCC=` builds without CUDA even where nvcc exists.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CU_SRC := $(wildcard kernels/cuda/*.cu)
CUDA_SO := $(O)/lib/libexaq_cuda.so
CUDA_ARCHS ?= 80 89 90
ifneq ($(NVCC),)
ifneq ($(CU_SRC),)
ifeq ($(CFG),release)
CUDA_TARGET := $(CUDA_SO)
endif
endif
endif
# The toolkit's libraries, recorded as the .so's RUNPATH so dlopen finds cuBLAS without
# LD_LIBRARY_PATH; compute-sanitizer for `make test-gpu`.
CUDA_LIBDIR := $(if $(NVCC),$(abspath $(dir $(NVCC))../lib64))
COMPUTE_SANITIZER ?= $(shell command -v compute-sanitizer 2>/dev/null || \
                       ls $(dir $(NVCC))compute-sanitizer 2>/dev/null)
# SASS for each of CUDA_ARCHS plus PTX of the last one (newer GPUs JIT it).
NVCCFLAGS := -O3 -std=c++17 -lineinfo -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra -I. \
             $(if $(filter 1,$(NO_WERROR)),,-Werror all-warnings -Xcompiler -Werror) \
             -DEXAQ_CUDA_ARCHS='"$(strip $(foreach a,$(CUDA_ARCHS),sm_$(a)))"' \
             $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
             -gencode arch=compute_$(lastword $(CUDA_ARCHS)),code=compute_$(lastword $(CUDA_ARCHS))
CUDA_LDFLAGS := -cudart shared $(if $(CUDA_LIBDIR),-Xlinker -rpath=$(CUDA_LIBDIR)) -lcublas -lcublasLt

.PHONY: all deps test check test-gpu bench fuzz format lint demo clean install unit-bins
all: $(BINS) $(CUDA_TARGET)
ifeq ($(O),build/release)
	$(Q)mkdir -p bin && for b in $(BINS); do ln -sf ../$$b bin/; done
endif

$(O)/obj/kernels/%.o: kernels/%.c
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) $(KCFLAGS) -c $< -o $@

$(O)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

SCHEMA_C := $(O)/gen/schema_sql.c
$(SCHEMA_C): schema.sql
	@mkdir -p $(dir $@)
	$(Q){ echo '/* generated from schema.sql by make; do not edit */'; \
	  echo 'const char exaq_schema_sql[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' schema.sql; echo ';'; } > $@
$(O)/gen/schema_sql.o: $(SCHEMA_C)
	$(Q)$(CC) $(CFLAGS) -Wno-missing-variable-declarations -c $< -o $@

# The dashboard's assets (daemon/web/: HTML, CSS, JS) compiled in as byte arrays, named by file
# (daemon/http.c serves them; no CDN, nothing read from disk at run time).
WEB_ASSETS := $(sort $(wildcard daemon/web/*))
WEB_C := $(O)/gen/web_assets.c
$(WEB_C): $(WEB_ASSETS) Makefile
	@mkdir -p $(dir $@)
	$(Q){ echo '/* generated from daemon/web/ by make; do not edit */'; echo '#include <stddef.h>'; \
	  i=0; for f in $(WEB_ASSETS); do \
	    echo "static const unsigned char a$$i[] = {"; \
	    od -An -v -tx1 $$f | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0};'; i=$$((i+1)); \
	  done; \
	  echo 'struct web_asset { const char *name, *type; const unsigned char *data; size_t len; };'; \
	  echo 'extern const struct web_asset exaq_web_assets[];'; \
	  echo 'const struct web_asset exaq_web_assets[] = {'; \
	  i=0; for f in $(WEB_ASSETS); do n=$$(basename $$f); \
	    case $$n in *.html) t='text/html; charset=utf-8';; *.css) t='text/css; charset=utf-8';; \
	      *.js) t='text/javascript; charset=utf-8';; *) t='application/octet-stream';; esac; \
	    echo "{\"$$n\", \"$$t\", a$$i, sizeof(a$$i) - 1},"; i=$$((i+1)); \
	  done; echo '{0, 0, 0, 0}};'; } > $@
$(O)/gen/web_assets.o: $(WEB_C)
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(LIB_A): $(call obj,$(LIB_SRC))
$(DAEMON_A): $(call obj,$(DAEMON_LIB_SRC)) $(O)/gen/schema_sql.o $(O)/gen/web_assets.o
$(WORKER_A): $(call obj,$(WORKER_LIB_SRC) $(KERNEL_SRC))
$(O)/%.a:
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BINDIR)/exaqd: $(call obj,daemon/main.c) $(DAEMON_A) $(LIB_A)
$(BINDIR)/exaqd: LIBS += -lmicrohttpd
$(BINDIR)/exaqctl: $(call obj,$(CTL_SRC)) $(LIB_A)
$(BINDIR)/exaq-worker: $(call obj,worker/main.c) $(WORKER_A) $(LIB_A)
$(BINDIR)/%:
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  LINK    $@")
	$(Q)$(CC) $(LDSAN) -pthread -rdynamic -o $@ $^ $(LIBS)

$(O)/tests/%: tests/%.c $(ALL_A)
	@mkdir -p $(dir $@) $(dir $(O)/obj/tests/$*)
	@$(if $(V),,echo "  TEST    $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $(O)/obj/tests/$*.o
	$(Q)$(CC) $(LDSAN) -pthread -rdynamic -o $@ $(O)/obj/tests/$*.o $(ALL_A) $(LIBS) -lcmocka

$(CUDA_SO): $(CU_SRC) kernels/cuda.h
	@mkdir -p $(dir $@)
	@echo "  NVCC    $@"
	$(Q)$(NVCC) $(NVCCFLAGS) -shared -o $@ $(CU_SRC) $(CUDA_LDFLAGS)

unit-bins: $(UNIT_BINS) $(TOOL_BINS)

# ---- dependencies ---------------------------------------------------------------------------
deps:
	@command -v dpkg >/dev/null 2>&1 || { echo "deps: not a Debian system; install: $(DEB_PKGS)"; exit 0; }; \
	missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done | tr '\n' ' '); \
	tmissing=$$(for p in $(DEB_TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done | tr '\n' ' '); \
	if [ -z "$$missing$$tmissing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "deps: installing $$missing$$tmissing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing $$tmissing >/dev/null || exit 1; \
	elif [ -n "$$missing" ]; then \
	  echo "deps: missing Debian packages: $$missing$$tmissing"; \
	  echo "deps: run: sudo apt-get install -y $$missing$$tmissing"; exit 1; \
	else \
	  echo "deps: the browser tests will skip without: $$tmissing(sudo apt-get install -y $$tmissing)"; \
	fi

# ---- tests ----------------------------------------------------------------------------------
# Sanitized builds run 5-20x slower: EXAQ_SANITIZED=1 tells the compute-heavy integration tests
# to shrink their data (tests/integ/lib.sh).
test: deps
	$(Q)$(MAKE) --no-print-directory CFG=$(CFG) all unit-bins
	$(Q)EXAQ_BIN=$(CURDIR)/$(BINDIR) EXAQ_TEST_BIN=$(CURDIR)/$(O)/tests \
	  EXAQ_SANITIZED=$(if $(filter asan tsan,$(CFG)),1,0) \
	  sh tests/run.sh $(UNIT_BINS) $(INTEG_SH)

# The sanitized kernels run without AVX: a compute-heavy unit test (test_awq, test_heal) that
# takes 20-30 s in release takes 2-4 min here, more on a loaded machine, so the per-test limit
# is 1500 s instead of 600 s.
check: deps
	$(Q)EXAQ_TEST_TIMEOUT=$${EXAQ_TEST_TIMEOUT:-1500} $(MAKE) --no-print-directory CFG=asan test
	$(Q)$(MAKE) --no-print-directory CFG=tsan all
	$(Q)EXAQ_BIN=$(CURDIR)/build/tsan/bin EXAQ_TSAN=1 EXAQ_SANITIZED=1 \
	  EXAQ_TEST_TIMEOUT=$${EXAQ_TEST_TIMEOUT:-1500} sh tests/run.sh $(INTEG_SH)

fuzz: deps
	@command -v clang >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq clang libclang-rt-14-dev >/dev/null; \
	  else echo "fuzz: needs clang and libFuzzer: sudo apt-get install -y clang libclang-rt-14-dev"; exit 1; fi; }
	$(Q)$(MAKE) --no-print-directory CFG=fuzz O=build/fuzz build/fuzz/libexaqd.a build/fuzz/libexaqw.a \
	  build/fuzz/libexaq.a
	$(Q)for f in $(FUZZ_SRC); do \
	  n=$$(basename $$f .c); \
	  clang $(CPPFLAGS) -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -o build/fuzz/$$n $$f \
	    build/fuzz/libexaqd.a build/fuzz/libexaqw.a build/fuzz/libexaq.a $(LIBS) || exit 1; \
	done
	$(Q)for f in $(FUZZ_SRC); do \
	  n=$$(basename $$f .c); c=tests/fuzz/corpus/$${n%_fuzz}; mkdir -p $$c build/fuzz/corpus-$$n; \
	  echo "fuzz: $$n for $${FUZZ_SECONDS:-60}s"; \
	  build/fuzz/$$n -max_total_time=$${FUZZ_SECONDS:-60} -max_len=65536 -timeout=10 \
	    -rss_limit_mb=2048 -print_final_stats=1 build/fuzz/corpus-$$n $$c 2>build/fuzz/$$n.log \
	    || { tail -40 build/fuzz/$$n.log; exit 1; }; \
	  grep -E 'stat::number_of_executed_units' build/fuzz/$$n.log; \
	done

# The *_gpu tests (they skip, exit 77, without a usable device), then the same binaries under
# compute-sanitizer's memcheck when it exists.
GPU_BINS := $(filter %_gpu,$(UNIT_BINS))
GPU_ENV := EXAQ_GPU_TESTS=1 EXAQ_CUDA_LIB=$(CURDIR)/$(CUDA_SO)
test-gpu: all unit-bins
	$(Q)EXAQ_BIN=$(CURDIR)/$(BINDIR) EXAQ_TEST_BIN=$(CURDIR)/$(O)/tests $(GPU_ENV) \
	  sh tests/run.sh $(GPU_BINS) $(sort $(wildcard tests/gpu/*.sh))
	$(Q)if [ -z "$(COMPUTE_SANITIZER)" ]; then \
	  echo "# test-gpu: compute-sanitizer not found, memcheck pass skipped"; exit 0; fi; \
	mkdir -p build/test-logs; fail=0; \
	for t in $(GPU_BINS); do \
	  n=$$(basename $$t); log=build/test-logs/$$n.memcheck.log; \
	  $(GPU_ENV) $(COMPUTE_SANITIZER) --tool memcheck --error-exitcode 99 --leak-check full \
	    $$t >$$log 2>&1; rc=$$?; \
	  if [ $$rc -eq 0 ]; then echo "ok memcheck $$n"; \
	  elif [ $$rc -eq 77 ]; then echo "skip memcheck $$n - $$(grep -m1 '^SKIP' $$log)"; \
	  else echo "not ok memcheck $$n (exit $$rc)"; tail -n 40 $$log | sed 's/^/#   /'; fail=1; fi; \
	done; exit $$fail

# Bench programs (tests/bench/*.c) link against the libraries like the tests; tests/bench.sh
# finds them in $(O)/bench/ next to $(BINDIR).
BENCH_SRC := $(wildcard tests/bench/*.c)
BENCH_BINS := $(patsubst tests/bench/%.c,$(O)/bench/%,$(BENCH_SRC))
$(O)/bench/%: tests/bench/%.c $(ALL_A)
	@mkdir -p $(dir $@) $(O)/obj/tests/bench
	@$(if $(V),,echo "  BENCH   $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $(O)/obj/tests/bench/$*.o
	$(Q)$(CC) $(LDSAN) -pthread -rdynamic -o $@ $(O)/obj/tests/bench/$*.o $(ALL_A) $(LIBS)

bench: all $(BENCH_BINS)
	$(Q)sh tests/bench.sh $(CURDIR)/$(BINDIR)

demo: deps
	$(Q)$(MAKE) --no-print-directory CFG=release all
	$(Q)sh tests/demo.sh $(CURDIR)/$(BINDIR)

# Fault injection, not part of `make test`: kill -9 storm, full-disk home (root only), slow
# clients, malformed inputs, for EXAQ_TORTURE_S seconds (default 300, at most 600).
.PHONY: torture
torture: deps
	$(Q)$(MAKE) --no-print-directory CFG=$(CFG) all $(O)/tests/integ/test_slow_client \
	  $(O)/tests/integ/test_proto_robust
	$(Q)EXAQ_BIN=$(CURDIR)/$(BINDIR) EXAQ_TEST_BIN=$(CURDIR)/$(O)/tests sh tests/torture.sh

FMT_SRC = $(shell git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null)
format:
	$(Q)clang-format --dry-run -Werror $(FMT_SRC)

LOOP_FILES := $(wildcard daemon/server.c proto/proto.c daemon/handlers*.c daemon/sched.c daemon/workers.c daemon/slurm.c)
lint: format all
	$(Q)if grep -nE 'sqlite3_|zip_|fopen|fsync|sleep\(|system\(|popen|waitpid|[^_]statv?fs\(' $(LOOP_FILES); then \
	  echo "lint: blocking call on the loop thread (see docs/design.md)"; exit 1; fi
	$(Q)sh tests/lint_protocol.sh $(BINDIR)

install: all
	install -d $(PREFIX)/bin
	install -m 0755 $(BINS) $(PREFIX)/bin/
	$(if $(CUDA_TARGET),install -d $(PREFIX)/lib && install -m 0755 $(CUDA_SO) $(PREFIX)/lib/)

clean:
	rm -rf build bin

-include $(ALL_OBJ:.o=.d)

# A single-node Slurm cluster on this machine for tests/integ/slurm*.sh (root; docs/slurm.md).
.PHONY: slurm-up slurm-down
slurm-up:
	sh tests/slurm/up.sh
slurm-down:
	sh tests/slurm/down.sh
