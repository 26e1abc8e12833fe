#!/usr/bin/env bash
# `make bench`: prints catch-up throughput (the watcher end to end and its steady rate, with
# the bloom check on and off; cryo and a tuned ethereum-etl on the same replay server, each
# on one core and unpinned; anvil), the per-block decode cost, block-to-event latency, restart
# time with millions of addresses and the address index's memory. Generates the benchmark
# chain (and the restart benchmark's registration topics), and tunes the peers, on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
./deploy/local/bootstrap.sh
python3 deploy/local/devstack.py install
echo "== catch-up"; .venv/bin/python -m bench.catchup
echo "== decode, check and scan per block"; .venv/bin/python -m bench.decode
echo "== latency"; .venv/bin/python -m bench.latency
echo "== bitcoin catch-up (btcd regtest)"; .venv/bin/python -m bench.btc_catchup
echo "== restart with 1 M / 10 M registered addresses"; .venv/bin/python -m bench.restart --sizes 1000000,10000000
echo "== address index memory"; .venv/bin/python -m bench.address_memory --sizes 1000000,10000000
echo "== address index memory, 34-byte UTXO keys"; .venv/bin/python -m bench.address_memory --sizes 10000000 --impls index --key-size 34
echo "== bitcoin block scan"; .venv/bin/python -m bench.btc_scan
echo "== withdrawals (request to broadcast, sustained rate)"; .venv/bin/python -m bench.withdrawals
