#!/usr/bin/env bash
# What the test suite needs beyond cargo: a real redis-server (and redis-cli) and a real PostgreSQL for the fleet
# tests. Installs them from Debian's packages when missing; does nothing when they are there.
set -euo pipefail
have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; }
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null && have_postgres; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq redis-server postgresql >/dev/null
command -v redis-server >/dev/null
have_postgres
