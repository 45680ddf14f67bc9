# Multi-stage build: compile with the official Swift image, run on a slim Debian with only the
# shared libraries the binaries need.
ARG SWIFT_VERSION=6.3
FROM swift:${SWIFT_VERSION}-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopenblas-dev libsqlite3-dev libssl-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Resolve dependencies in their own layer so source edits don't refetch them.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --static-swift-stdlib --product gateway \
 && swift build -c release --static-swift-stdlib --product gateway-train \
 && mkdir -p /out && cp .build/release/gateway .build/release/gateway-train /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopenblas0-pthread libsqlite3-0 libssl3 libcurl4 ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/gateway gateway
COPY --from=build /out/gateway /out/gateway-train /usr/local/bin/
COPY gateway.json /etc/gateway/gateway.json
USER gateway
WORKDIR /var/lib/gateway
EXPOSE 8080
# The traffic log lives in the working directory (mount a volume at /var/lib/gateway).
ENTRYPOINT ["gateway", "serve", "--config", "/etc/gateway/gateway.json", "--host", "0.0.0.0"]
