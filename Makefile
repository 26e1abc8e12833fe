# The two commands of the README: `make up` and `make test`.
.PHONY: up down status test bench

up:      ## install and start Kafka, anvil, btcd, Prometheus and the watcher; show events flowing
	./deploy/local/up.sh

down:    ## stop everything `make up` started
	./deploy/local/down.sh

status:
	python3 deploy/local/devstack.py status

test:    ## install everything and run lint, types and the whole test suite
	./deploy/local/test.sh

bench:   ## catch-up throughput, latency and address-set memory figures
	./deploy/local/bench.sh
