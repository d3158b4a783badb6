# Sourced by the test stages: `need_debs STAGE [--arch ARCH] PKG...` installs the Debian
# packages that are missing (as root), or stops with the list (otherwise).
need_debs() {
    local stage=$1 arch=""
    shift
    if [ "${1:-}" = --arch ]; then arch=$2; shift 2; fi
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "$stage stage needs these Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "== $stage: installing ${missing[*]}"
    if [ -n "$arch" ]; then dpkg --add-architecture "$arch"; fi
    # A mirror in the middle of a sync fails one index now and then: go on with what there is,
    # the install says clearly if a package really cannot be had.
    timeout 600 apt-get update -qq || echo "== $stage: apt-get update reported errors (above); installing with the indexes it has"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
