# Clusterra. Quick start: `make demo` (run the portal) and `make test` (run the whole suite).
.PHONY: demo test test-fast bench check

demo:  ## set everything up and serve the portal on http://127.0.0.1:$${CLUSTERRA_PORT:-8000}
	scripts/demo.sh

test:  ## set up and run the whole test suite (PTY, PostgreSQL and browser tests included)
	scripts/test.sh

test-fast:  ## the quick tests only (no real shells, no browser)
	scripts/test.sh -m "not slow and not browser"

bench:  ## terminal benchmark: echo latency and throughput vs raw PTY and terminado
	scripts/venv.sh test
	.venv/bin/python bench/terminal.py
