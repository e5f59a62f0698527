# Builds the three binaries. The local demo runs without Docker (README).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p adapter -p upstream-test-server -p test-app

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/adapter /src/target/release/upstream-test-server /src/target/release/test-app /usr/local/bin/
COPY config /etc/auth-adapter
WORKDIR /var/lib/auth-adapter
