# syntax=docker/dockerfile:1.7
# reflow-controller: a static (musl) binary on distroless/static, non-root, no shell.
# Build from the repository root:
#   docker build -f images/controller.Dockerfile -t ghcr.io/reflow-mcp/reflow-controller:0.1.0 .
# Base images are pinned by version tag; pin them by digest as well in your registry mirror
# (`docker buildx imagetools inspect <image>` prints it) — see images/README.md.

ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ARG TARGETARCH
# musl-tools: ring's C and assembly parts for the static target.
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
    cargo build --release --locked -p reflow-controller --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/reflow-controller" /reflow-controller

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /reflow-controller /usr/local/bin/reflow-controller
# distroless "nonroot": uid/gid 65532, the ids the Helm chart's securityContext sets too.
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/reflow-controller"]
