#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently:
#   - Debian's `chromium` and `chromium-driver` (the browser end-to-end test;
#     nothing is ever downloaded from anywhere but the Debian archive);
#   - checks that PostgreSQL answers at 127.0.0.1:5432 (tests that need it fail
#     loudly when it does not; they are never skipped).
set -euo pipefail

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
CHROMEDRIVER_BIN="${CHROMEDRIVER_BIN:-/usr/bin/chromedriver}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-test-deps: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

if [ -x "$CHROMIUM_BIN" ] && [ -x "$CHROMEDRIVER_BIN" ]; then
    echo "install-test-deps: chromium and chromedriver present ($CHROMIUM_BIN, $CHROMEDRIVER_BIN)"
else
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-test-deps: $CHROMIUM_BIN or $CHROMEDRIVER_BIN is missing and apt-get is not available;" >&2
        echo "install Debian's 'chromium' and 'chromium-driver' packages (the browser test will fail without them)." >&2
        exit 1
    fi
    echo "install-test-deps: installing Debian packages chromium and chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update
    as_root apt-get install -y chromium chromium-driver
    for bin in "$CHROMIUM_BIN" "$CHROMEDRIVER_BIN"; do
        if [ ! -x "$bin" ]; then
            echo "install-test-deps: $bin still missing after apt-get install" >&2
            exit 1
        fi
    done
fi
"$CHROMIUM_BIN" --version 2>/dev/null || true
"$CHROMEDRIVER_BIN" --version 2>/dev/null || true

# PostgreSQL: checked; started when a stopped local cluster exists (as on
# this project's machines), never installed here.
PGHOST_CHECK="${PGHOST_CHECK:-127.0.0.1}"
PGPORT_CHECK="${PGPORT_CHECK:-5432}"
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h "$PGHOST_CHECK" -p "$PGPORT_CHECK" \
    && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
        echo "install-test-deps: starting PostgreSQL cluster $version/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        pg_isready -q -h "$PGHOST_CHECK" -p "$PGPORT_CHECK" && break
        sleep 1
    done
fi
if command -v pg_isready >/dev/null 2>&1; then
    if pg_isready -q -h "$PGHOST_CHECK" -p "$PGPORT_CHECK"; then
        echo "install-test-deps: PostgreSQL answers at $PGHOST_CHECK:$PGPORT_CHECK"
    else
        echo "install-test-deps: NOTE: PostgreSQL does not answer at $PGHOST_CHECK:$PGPORT_CHECK;" \
             "tests that need it will fail (they are not skipped)." >&2
    fi
elif (exec 3<>"/dev/tcp/$PGHOST_CHECK/$PGPORT_CHECK") 2>/dev/null; then
    echo "install-test-deps: something listens at $PGHOST_CHECK:$PGPORT_CHECK (pg_isready not installed)"
else
    echo "install-test-deps: NOTE: nothing listens at $PGHOST_CHECK:$PGPORT_CHECK (PostgreSQL);" \
         "tests that need it will fail (they are not skipped)." >&2
fi
