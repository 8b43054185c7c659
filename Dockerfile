# kgate in a container: a Debian bookworm build stage, then a slim runtime running as a non-root
# user. Build:  docker build -t kgate .      Run with everything around it: docker compose up
# (compose.yaml). Not built in this repository's CI (it has no Docker engine); the build command
# below is the one CI's release build runs, and tests/deploy.rs checks that the apt packages
# here are scripts/lib/packages.sh's build packages.

# ---------------------------------------------------------------- build
FROM rust:bookworm AS build
# The build packages of scripts/lib/packages.sh (rdkafka builds its bundled librdkafka with
# configure + make against the system OpenSSL).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential make pkg-config perl python3 ca-certificates \
      libssl-dev zlib1g-dev libzstd-dev libsasl2-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && cp target/release/kgate /usr/local/bin/kgate \
 && /usr/local/bin/kgate --version

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim
# The binary links the system OpenSSL (libssl3) and zstd; CA certificates for TLS to brokers,
# registries and feeds.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libzstd1 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/kgate --create-home --shell /usr/sbin/nologin kgate
COPY --from=build /usr/local/bin/kgate /usr/local/bin/kgate
USER kgate
WORKDIR /var/lib/kgate
# Metrics/health, the HTTP ingest server and the device WebSocket server (as the examples use).
EXPOSE 9000 8082 8090
ENV KGATE_LOG_FORMAT=json
ENTRYPOINT ["kgate"]
CMD ["run", "--config", "/etc/kgate/kgate.yaml"]
