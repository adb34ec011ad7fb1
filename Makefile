# Sightline — one binary, two contracts: `make demo` and `make test`.
GO       ?= go
BIN      := bin/sightline
PKGS     := ./...
# Fuzz time per target for `make fuzz`.
FUZZTIME ?= 60s

.PHONY: all build demo test test-fast vet fmt-check bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/sightline

demo: build
	./$(BIN) demo --data-dir .demo

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './node_modules/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Everything: format, vet, and every test with the race detector, including
# the multi-process crash and outage suites in cmd/sightline.
test: fmt-check vet
	$(GO) test -race -timeout 30m -count=1 $(PKGS)

# The quick set for development: everything but the process-level suites.
test-fast: fmt-check vet
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /cmd/)

# Each figure beside its target and the raw baselines measured in the same run.
bench: build
	$(GO) run ./cmd/sightline-bench

# Every Fuzz target for FUZZTIME each (go test runs one fuzz target at a time).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf bin .demo
