# Benchmark harness (bench/harness.py, receiver/benchkit/): see bench/README.md.
#   make bench         full profile (about 20 min on 2 cores): JSON, plots, README table
#   make bench-quick   quick profile (about 5 min)
#   make bench-check   quick run compared with bench/results/latest.json; fails when a ratio
#                      dropped by more than BENCH_MARGIN (for reviewers; not part of make test)
BENCH_MARGIN ?= 0.25
BENCH_ARGS ?=
.PHONY: bench bench-quick bench-check

bench: setup system-deps
	$(PY) bench/harness.py --profile full --command "make bench" $(BENCH_ARGS)

bench-quick: setup system-deps
	$(PY) bench/harness.py --profile quick --command "make bench-quick" $(BENCH_ARGS)

bench-check: setup system-deps
	$(PY) bench/harness.py --check --margin $(BENCH_MARGIN) $(BENCH_ARGS)
