#!/usr/bin/env bash
# What the test suite needs beyond cargo: a real redis-server (and redis-cli) for the fleet tests. Installs it from
# Debian's packages when it is missing; does nothing when it is there.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq redis-server >/dev/null
command -v redis-server >/dev/null
