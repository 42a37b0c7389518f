#!/usr/bin/env bash
# Puts cargo-deny (a pinned version) at target/tools/cargo-deny/bin/cargo-deny and prints that folder, for
# scripts/test.sh to put first on PATH. `cargo install` without --root writes to $CARGO_HOME/bin, which is not on
# PATH when CARGO_HOME is a fresh folder; here the binary is found again by its path. Building it takes a few minutes once (~3 on an idle 2-core machine, 21 under heavy load).
set -euo pipefail
cd "$(dirname "$0")/.."

version="0.20.2"
root="target/tools/cargo-deny"
bin="$root/bin/cargo-deny"

if ! { [ -x "$bin" ] && PATH="$PWD/$root/bin:$PATH" cargo deny --version 2>/dev/null | grep -qF " $version"; }; then
  echo "building cargo-deny $version into $root (a few minutes, once)" >&2
  cargo install cargo-deny --locked --version "$version" --root "$root" --force >&2
fi
echo "$PWD/$root/bin"
