# `make run`: start `vxmirror serve` on loopback with the embedded default forwarders, replay the
# bundled sample captures into it once, show live figures; Ctrl-C stops the service cleanly
# (every open flow exported with end_reason "shutdown", forwarders flushed).
RUN_DIR ?= var/run
RUN_VXLAN ?= 127.0.0.1:4789
RUN_GENEVE ?= 127.0.0.1:6081
RUN_METRICS_PORT ?= 9109
RUN_SAMPLES ?= $(wildcard receiver/data/samples/*.pcap)

.PHONY: run
run: setup
	@# make run's own scratch directory under var/ starts empty on each run (never a directory elsewhere)
	@case "$(RUN_DIR)" in var/*) rm -rf "$(RUN_DIR)";; esac; mkdir -p $(RUN_DIR)
	@set -u; fig=""; \
	$(VENV)/bin/vxmirror check-config mk/run.toml -q || exit 2; \
	$(VENV)/bin/vxmirror serve --config mk/run.toml --listen $(RUN_VXLAN) --listen $(RUN_GENEVE) \
	  --metrics 127.0.0.1:$(RUN_METRICS_PORT) --data-dir $(RUN_DIR) 2>$(RUN_DIR)/serve.log & pid=$$!; \
	stop() { trap '' INT TERM; [ -n "$$fig" ] && kill $$fig 2>/dev/null; echo; echo "stopping vxmirror serve (pid $$pid)..."; kill -TERM $$pid 2>/dev/null; \
	  wait $$pid; rc=$$?; tail -n 3 $(RUN_DIR)/serve.log; \
	  echo "exit status $$rc; flow records in $(RUN_DIR)/flows/, pcaps in $(RUN_DIR)/pcap/, log $(RUN_DIR)/serve.log"; \
	  exit $$rc; }; \
	trap stop INT TERM; \
	for i in $$(seq 100); do \
	  $(PY) -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$(RUN_METRICS_PORT)/healthz', timeout=1)" \
	    2>/dev/null && break; \
	  kill -0 $$pid 2>/dev/null || { cat $(RUN_DIR)/serve.log; exit 1; }; sleep 0.2; \
	done; \
	echo "vxmirror serve is up: VXLAN $(RUN_VXLAN), GENEVE $(RUN_GENEVE), http://127.0.0.1:$(RUN_METRICS_PORT)/metrics"; \
	echo "replaying $(words $(RUN_SAMPLES)) sample captures once:"; \
	$(VENV)/bin/vxmirror replay $(RUN_SAMPLES) --to $(RUN_VXLAN) --geneve-to $(RUN_GENEVE) --pps 2000; \
	$(PY) mk/run_figures.py $(RUN_METRICS_PORT) $(RUN_DIR) & fig=$$!; \
	wait $$fig; stop
