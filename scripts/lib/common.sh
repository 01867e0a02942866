# Shared by the scripts: Debian packages, the Rust toolchain check, a private PostgreSQL.
# Sourced, not run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export ALEPH_DATA_DIR=${ALEPH_DATA_DIR:-$ROOT/target/aleph-data}

# Debian packages the node and its tests use, by the command each provides.
APT_PACKAGES=(
    qemu-system-x86   # qemu-system-x86_64: runs the microVMs
    qemu-utils        # qemu-img: disk images
    debootstrap       # builds the guest runtimes
    squashfs-tools    # mksquashfs
    cpio              # initramfs
    zstd xz-utils     # kernel payloads, squashfs compression
    busybox-static    # the bare reference VM of the benchmark
    nftables          # VM network rules
    dosfstools mtools # checks of the cloud-init seed (fsck.vfat, mtype)
    python3-yaml      # checks that cloud-init reads the seed's documents as meant
    e2fsprogs         # mkfs.ext4 (instance root filesystem), debugfs (its test)
    openssh-client    # ssh-keygen: the instance test's key
    iproute2          # ip, network namespaces
    postgresql        # the CCN's tests also run on PostgreSQL
    curl ca-certificates
)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_rust() {
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install the Rust toolchain (https://rustup.rs), then run this again" >&2
        exit 1
    fi
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}

# A throwaway PostgreSQL cluster on 127.0.0.1 with trust auth, owned by the `postgres`
# user (initdb refuses root). Prints its URL. Leaves the system's own cluster alone.
PG_PORT=${ALEPH_PG_PORT:-54329}
PG_DIR=/tmp/aleph-test-postgres-$PG_PORT
start_test_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
        rm -rf "$PG_DIR"
        install -d -o postgres -g postgres "$PG_DIR"
        runuser -u postgres -- "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres >/dev/null
        runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
            -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=300" start >/dev/null
    fi
    echo "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

# The static guest agent and the guest images (kernel, initramfs, Python runtime), cached.
build_images() {
    "$ROOT/scripts/build-guest"
    log "building guest images into $ALEPH_DATA_DIR (cached)"
    cargo run -q -p aleph-node -- images build --data-dir "$ALEPH_DATA_DIR"
}

# The instance root filesystem (Debian 12 with systemd, cloud-init, sshd), cached. Only
# the tests use it so far: instances are not run by the CRN yet.
build_instance_images() {
    log "building the instance root filesystem into $ALEPH_DATA_DIR (cached)"
    cargo run -q -p aleph-node -- images rootfs debian12 --data-dir "$ALEPH_DATA_DIR"
}
