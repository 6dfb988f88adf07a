#!/usr/bin/env bash
# Checks what the binaries of a rayd wheel link: no RUNPATH/RPATH naming the build machine
# (rayd-worker: exactly $ORIGIN/../lib, see docs/decisions.md "The worker's libpython"), and
# no shared library beyond glibc's, libgcc_s and libpython (which the target's Python
# provides). Exits 1 naming the binary and what is wrong.
#   scripts/check-wheel.sh dist/rayd-*.whl
set -euo pipefail
wheel=${1:?usage: $0 WHEEL}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$dir"
allowed='^(libc|libm|libdl|libpthread|librt|libgcc_s|ld-linux-x86-64|libpython3\.[0-9]+)\.so'
bad=0
found=0
while IFS= read -r -d '' bin; do
  readelf -h "$bin" >/dev/null 2>&1 || continue
  found=$((found + 1))
  name=$(basename "$bin")
  runpath=$(readelf -d "$bin" | sed -nE 's/.*\((RUNPATH|RPATH)\).*\[(.*)\]/\2/p')
  needed=$(readelf -d "$bin" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p')
  case $name in
  rayd-worker)
    [ "$runpath" = '$ORIGIN/../lib' ] || { echo "check-wheel: $name: RUNPATH '$runpath', expected '\$ORIGIN/../lib'"; bad=1; }
    echo "$needed" | grep -q '^libpython3' || { echo "check-wheel: $name: links no libpython"; bad=1; } ;;
  *)
    [ -z "$runpath" ] || { echo "check-wheel: $name: RUNPATH '$runpath' (none expected)"; bad=1; } ;;
  esac
  for lib in $needed; do
    echo "$lib" | grep -qE "$allowed" || { echo "check-wheel: $name needs $lib, which a bare glibc Linux may lack"; bad=1; }
  done
  echo "check-wheel: $name: RUNPATH '${runpath:-none}', needs $(echo $needed)"
done < <(find "$dir" -type f \( -path '*/scripts/*' -o -name '*.so' \) -print0)
[ "$found" -gt 0 ] || { echo "check-wheel: no binaries in $wheel"; exit 1; }
[ "$bad" = 0 ] && echo "check-wheel: $wheel ok ($found binaries)"
exit "$bad"
