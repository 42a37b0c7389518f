#!/usr/bin/env bash
# Prints a folder holding cargo-deny at the pinned version, for scripts/test.sh to put first on PATH.
#
# Where it looks, in order: a cargo-deny of that version already on PATH (e.g. ~/.cargo/bin); the per-user tool
# cache (${XDG_CACHE_HOME:-~/.cache}/mqtt-lb/cargo-deny-VERSION), shared by every clone on the machine; else it
# builds it there with `cargo install --root` (a few minutes, once per machine: ~3 on an idle 2-core machine).
# `cargo install` without --root would write to $CARGO_HOME/bin, which is not on PATH when CARGO_HOME is a fresh
# folder, so the binary is always found again by its path.
set -euo pipefail
cd "$(dirname "$0")/.."

version="0.20.2"
has_version() { "$1" deny --version 2>/dev/null | grep -qF " $version"; }

if command -v cargo-deny >/dev/null 2>&1 && cargo deny --version 2>/dev/null | grep -qF " $version"; then
  dirname "$(command -v cargo-deny)"
  exit 0
fi

root="${XDG_CACHE_HOME:-$HOME/.cache}/mqtt-lb/cargo-deny-$version"
if ! { [ -x "$root/bin/cargo-deny" ] && PATH="$root/bin:$PATH" has_version cargo; }; then
  echo "building cargo-deny $version into $root (a few minutes, once per machine)" >&2
  mkdir -p "$root"
  cargo install cargo-deny --locked --version "$version" --root "$root" --force >&2
fi
echo "$root/bin"
