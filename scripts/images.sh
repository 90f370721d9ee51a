#!/usr/bin/env bash
# `make images`: builds the controller image and both dataplane variants (runtime, stdio) with
# whatever OCI builder this machine has (docker with a reachable engine, podman, or buildah), then
# prints how to push them and the Helm values that select them. Fails with a clear message when
# there is no builder. Settings (environment): REGISTRY (default ghcr.io/reflow-mcp), TAG (default
# the chart's appVersion), BUILDER (docker|podman|buildah, to skip detection).
set -euo pipefail
cd "$(dirname "$0")/.."

registry="${REGISTRY:-ghcr.io/reflow-mcp}"
tag="${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' chart/Chart.yaml)}"
[ -n "$tag" ] || { echo "images: no TAG and no appVersion in chart/Chart.yaml" >&2; exit 2; }

detect() {
  # The docker CLI alone is not enough: it needs an engine to talk to.
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null; then echo podman; return; fi
  if command -v buildah >/dev/null; then echo buildah; return; fi
  return 1
}
builder="${BUILDER:-}"
if [ -z "$builder" ]; then
  if ! builder=$(detect); then
    tried="docker (CLI $(command -v docker >/dev/null && echo 'present, engine unreachable' || echo absent)), podman, buildah"
    echo "images: no OCI image builder found; tried $tried." >&2
    echo "images: install Docker (with a running engine), Podman or Buildah, or build on a machine" >&2
    echo "images: that has one: see images/README.md for the plain build commands." >&2
    exit 1
  fi
fi

build() { # file target image
  echo "images: $builder building $3 (${1}, target ${2})"
  case "$builder" in
    docker) DOCKER_BUILDKIT=1 docker build -f "$1" --target "$2" -t "$3" . ;;
    podman) podman build -f "$1" --target "$2" -t "$3" . ;;
    buildah) buildah bud -f "$1" --target "$2" -t "$3" . ;;
    *) echo "images: unknown BUILDER $builder (docker, podman or buildah)" >&2; exit 2 ;;
  esac
}

controller="$registry/reflow-controller:$tag"
dataplane="$registry/reflow-dataplane:$tag"
stdio="$registry/reflow-dataplane:$tag-stdio"
build images/controller.Dockerfile runtime "$controller"
build images/dataplane.Dockerfile runtime "$dataplane"
build images/dataplane.Dockerfile stdio "$stdio"

push=$([ "$builder" = buildah ] && echo "buildah push" || echo "$builder push")
cat <<MSG

images: built
  $controller
  $dataplane
  $stdio

Push them (log in to $registry first):
  $push $controller
  $push $dataplane
  $push $stdio

Install the chart with them (the stdio variant runs STDIO Targets such as npx/uvx servers):
  helm install reflow ./chart --namespace reflow-system --create-namespace \\
    --set controller.image.repository=$registry/reflow-controller --set controller.image.tag=$tag \\
    --set dataplane.image.repository=$registry/reflow-dataplane --set dataplane.image.tag=$tag-stdio
MSG
