# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole workspace: manifests, lock file, every member crate and the SQL migrations
# (embedded into the binary by sqlx::migrate!, so the runtime image needs no files).
COPY Cargo.toml Cargo.lock ./
COPY domain ./domain
COPY store ./store
COPY bus ./bus
COPY sessions ./sessions
COPY web ./web
COPY command-api ./command-api
COPY query-api ./query-api
COPY projector ./projector
COPY socket-push ./socket-push
COPY chatd ./chatd
COPY migrations ./migrations

# Cache mounts keep the registry and target directory between builds (BuildKit). The target
# directory is a cache, not an image layer, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chatd \
    && install -D -m 0755 target/release/chatd /out/chatd

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 chatd \
    && useradd --system --uid 10001 --gid chatd --no-create-home --shell /usr/sbin/nologin chatd

COPY --from=builder /out/chatd /usr/local/bin/chatd

ENV CHAT_BIND=0.0.0.0:8080
EXPOSE 8080
USER 10001:10001

ENTRYPOINT ["/usr/local/bin/chatd"]
CMD ["serve"]
