.PHONY: run test bench bench-idle bench-relay bench-replay bench-upload

# Sets up Postgres, Redis and RabbitMQ if missing, then runs `chatd serve` on 127.0.0.1:8080.
run:
	./scripts/run.sh

# The whole suite (what CI runs).
test:
	./scripts/test.sh

# The standard load runs with loadgen against chatd serve; writes docs/benchmarks-loadgen.md.
bench:
	./scripts/bench.sh

# Idle connections over six socket-push processes (CONNECTIONS=19000 NODES=1 for one process).
bench-idle:
	./scripts/bench-idle-fleet.sh

# chatd replay on 1,000,000 seeded events, twice, then replay --verify.
bench-replay:
	./scripts/bench-replay.sh

# Outbox relay throughput: events/s from the outbox to the broker's confirm.
bench-relay:
	cargo run --release --locked -p chatd --example relay_bench -- 100000

# Image uploads per second: a 2 MB JPEG through POST /api/v1/media.
bench-upload:
	cargo run --release --locked -p chatd --example upload_bench -- 200 4
