# syntax=docker/dockerfile:1.7
# reflow-dataplane, in two variants (build targets):
#   runtime (default): the static (musl) binary on distroless/static, non-root, no shell. Serves
#                      HTTP/SSE Targets and STDIO Targets whose program is in the image.
#   stdio:             the same binary on Debian slim with Node.js and Python (uv/uvx), so STDIO
#                      Targets like `npx -y @modelcontextprotocol/server-github` or `uvx mcp-server-git`
#                      run as children of the gateway.
# Build from the repository root:
#   docker build -f images/dataplane.Dockerfile -t ghcr.io/reflow-mcp/reflow-dataplane:0.1.0 .
#   docker build -f images/dataplane.Dockerfile --target stdio -t ghcr.io/reflow-mcp/reflow-dataplane:0.1.0-stdio .
# The binary is static on purpose: as the MCPInstance bridge it is copied into the STDIO
# server's own image (`install-bridge`), whatever libc that image has.

ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot
ARG STDIO_IMAGE=docker.io/library/node:22.21.1-bookworm-slim
ARG UV_VERSION=0.13.9

FROM ${RUST_IMAGE} AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl > /rust-target ;; \
      arm64) echo aarch64-unknown-linux-musl > /rust-target ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p reflow-dataplane --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/reflow-dataplane" /reflow-dataplane

FROM ${STDIO_IMAGE} AS stdio
ARG UV_VERSION
# Python for `python -m …` servers, uv for `uvx …` (installed into its own venv, pinned).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}" \
 && ln -s /opt/uv/bin/uv /usr/local/bin/uv \
 && ln -s /opt/uv/bin/uvx /usr/local/bin/uvx
# The reference server, so a STDIO Target works out of the box (`command: mcp-server-everything`,
# `args: [stdio]`); the pin matches the e2e tests' SERVER_EVERYTHING_SPEC.
RUN npm install -g --no-audit --no-fund @modelcontextprotocol/server-everything@2026.8.31 \
 && npm cache clean --force
COPY --from=build /reflow-dataplane /usr/local/bin/reflow-dataplane
# Each STDIO child gets a fresh HOME under TMPDIR (an emptyDir in the chart), so npm and uv
# caches land there and the root filesystem can stay read-only.
ENV TMPDIR=/tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/reflow-dataplane"]

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /reflow-dataplane /usr/local/bin/reflow-dataplane
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/reflow-dataplane"]
