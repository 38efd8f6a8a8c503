#!/bin/sh
# Vendors the third-party browser libraries of the pages into client/vendor/,
# at pinned versions, with their licences. The pages have no build step, so
# the files are committed; run this script to update them and commit the
# result. Needs npm (only to fetch the published package; nothing is built)
# and openssl (to check its integrity).
#
#   client/vendor/update.sh
#
# uPlot (MIT, https://github.com/leeoniya/uPlot): the operator dashboard's
# latency charts. We take the ES module build and its stylesheet as published.
set -eu

UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# npm pack checks the tarball against the registry's integrity; we also check
# it against the pinned one, so a re-published version cannot slip in.
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null)
tarball="$work/uplot-$UPLOT_VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$actual" != "$UPLOT_INTEGRITY" ]; then
  echo "uplot-$UPLOT_VERSION.tgz: integrity $actual, expected $UPLOT_INTEGRITY" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"

target="$here/uplot"
rm -rf "$target"
mkdir -p "$target"
cp "$work/package/dist/uPlot.esm.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$target/"
printf 'uPlot %s from npm (uplot@%s, %s), unmodified; see LICENSE.\nUpdated by client/vendor/update.sh.\n' \
  "$UPLOT_VERSION" "$UPLOT_VERSION" "$UPLOT_INTEGRITY" > "$target/VERSION"
echo "vendored uPlot $UPLOT_VERSION into $target"
