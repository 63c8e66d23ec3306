# Live receive benchmark (bench/live_sweep.py): vxmirror serve against the C recvmmsg reference.
.PHONY: bench-live bench-live-quick

bench-live: setup
	$(PY) bench/live_sweep.py

bench-live-quick: setup
	$(PY) bench/live_sweep.py --quick

# Churn: loss-free new flows/s of vxmirror serve (default workers, JSON lines only, 2 s idle
# timeouts), a new flow every 2 (DNS, opaque UDP) or 10 (opaque UDP) datagrams of 128 bytes
.PHONY: bench-churn
bench-churn: setup
	$(PY) bench/live_sweep.py --receivers "" --churn 2:dns,2:udp,10:udp --seconds 8 --max-trials 5 --churn-steps 2 \
		--out bench/out/churn_sweep.json --plot bench/out/churn_sweep.png
