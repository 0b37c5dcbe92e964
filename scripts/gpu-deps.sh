#!/usr/bin/env bash
# Copies the header-only dependencies the GPU check needs (nlohmann/json, and gloo's headers for
# c10d's process groups, from libgloo-dev) into .gpu-deps/include
# (git-ignored), to be copied along to a GPU machine that has no package registry.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.gpu-deps/include"
cp -r /usr/include/nlohmann "$root/.gpu-deps/include/"
cp -r /usr/include/gloo "$root/.gpu-deps/include/"
echo "gpu-deps: $root/.gpu-deps/include (copy .gpu-deps along to the GPU machine)"
