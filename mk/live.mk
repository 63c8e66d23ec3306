# Live receive benchmark (bench/live_sweep.py): vxmirror serve against the C recvmmsg reference.
.PHONY: bench-live bench-live-quick

bench-live: setup
	$(PY) bench/live_sweep.py

bench-live-quick: setup
	$(PY) bench/live_sweep.py --quick
