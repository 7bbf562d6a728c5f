# cvp-backup-copy: `make` builds the static musl binary, `make test` installs prerequisites
# and runs every test, `make demo` runs the whole job against a throwaway local sshd.

TARGET := x86_64-unknown-linux-musl
BIN    := target/$(TARGET)/release/cvp-backup-copy
CARGO  ?= cargo

.PHONY: all build prereqs test lint unit demo clean

all: build

build: prereqs
	$(CARGO) build --release --locked
	@file $(BIN) 2>/dev/null || true

prereqs:
	@tests/prereqs.sh

lint: prereqs
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

test: lint
	$(CARGO) test --locked

demo: build
	tests/demo.sh $(BIN)

clean:
	$(CARGO) clean
