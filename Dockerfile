# Multi-stage build: compile with the official Swift image, run on a slim Debian with only the
# shared libraries the binaries need.
#
#   docker build -t prompt-r1-gateway .
#   docker run -p 8080:8080 -p 8081:8081 -e OPENAI_API_KEY -e GATEWAY_ADMIN_TOKEN=change-me \
#     -v gateway-data:/var/lib/gateway \
#     -v "$PWD/data/models/qwen3-0.6b:/policy:ro" -e GATEWAY_POLICY=/policy \
#     prompt-r1-gateway --upstream-url https://api.openai.com/v1
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
# Tests/ too: the manifest declares the test targets, whose folders must exist.
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --static-swift-stdlib --product gateway \
 && swift build -c release --static-swift-stdlib --product gateway-train \
 && mkdir -p /out && cp .build/release/gateway .build/release/gateway-train /out/

FROM debian:bookworm-slim
# curl: only for the HEALTHCHECK below.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopenblas0-pthread libsqlite3-0 libssl3 libcurl4 ca-certificates tzdata curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/gateway gateway \
 && mkdir -p /var/lib/gateway/models && chown -R gateway:gateway /var/lib/gateway
COPY --from=build /out/gateway /out/gateway-train /usr/local/bin/
COPY gateway.json /etc/gateway/gateway.json
# The data directory: traffic log, generated admin token (when GATEWAY_ADMIN_TOKEN is not set),
# and admin.models_dir (models/), the only place POST /admin/policy loads checkpoints from.
ENV GATEWAY_DATA_DIR=/var/lib/gateway
VOLUME ["/var/lib/gateway"]
# The policy checkpoint served at start: mount its folder anywhere (e.g. -v ...:/policy:ro) and
# name it in GATEWAY_POLICY, or pass --policy DIR. Unset: collaboration routes answer 503 until
# a policy is loaded through the admin API.
USER gateway
WORKDIR /var/lib/gateway
# 8080: the OpenAI-compatible API. 8081: the admin listener (/ready, /metrics, /admin/*), which
# listens on all addresses here and so needs GATEWAY_ADMIN_TOKEN in the environment.
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["gateway", "serve", "--config", "/etc/gateway/gateway.json", "--host", "0.0.0.0", "--admin-host", "0.0.0.0"]
