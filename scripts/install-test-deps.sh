#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently:
#   - Debian's `chromium` and `chromium-driver` (the browser end-to-end test;
#     nothing is ever downloaded from anywhere but the Debian archive);
#   - Debian's `prometheus` package for its `promtool` (the `/metrics` lint);
#   - Debian's `python3-aiosmtpd` (the real SMTP server of the mail tests,
#     run as `/usr/bin/python3 -m aiosmtpd`);
#   - checks that PostgreSQL answers at 127.0.0.1:5432 (tests that need it fail
#     loudly when it does not; they are never skipped);
#   - `npm ci` of tests/rp-conformance (openid-client, pinned by its
#     package-lock.json, from the npm registry) when its node_modules is missing.
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

# promtool (Debian's `prometheus` package; only this binary is used): the
# `/metrics` test lints the exposition with `promtool check metrics`.
if command -v promtool >/dev/null 2>&1; then
    echo "install-test-deps: promtool present ($(command -v promtool))"
elif command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: installing Debian package prometheus (for promtool)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update
    as_root apt-get install -y prometheus
    command -v promtool >/dev/null 2>&1 || {
        echo "install-test-deps: promtool still missing after apt-get install prometheus" >&2
        exit 1
    }
else
    echo "install-test-deps: NOTE: promtool is missing and apt-get is not available;" \
         "the /metrics lint test will fail (install Prometheus's promtool)." >&2
fi

# aiosmtpd (Debian's `python3-aiosmtpd`, for Debian's /usr/bin/python3): the
# mail tests deliver to a real SMTP server that writes a maildir.
if /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    echo "install-test-deps: python3-aiosmtpd present"
elif command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: installing Debian package python3-aiosmtpd"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update
    as_root apt-get install -y python3-aiosmtpd
    /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || {
        echo "install-test-deps: /usr/bin/python3 cannot import aiosmtpd after apt-get install python3-aiosmtpd" >&2
        exit 1
    }
else
    echo "install-test-deps: NOTE: python3-aiosmtpd is missing and apt-get is not available;" \
         "the mail tests will fail (install Debian's python3-aiosmtpd)." >&2
fi

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

# openid-client (the certified RP library the e2e test `openid_client` runs
# against the adapter): installed from the npm registry with the pinned
# tests/rp-conformance/package-lock.json, only when node_modules is missing.
RP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/rp-conformance"
if [ -d "$RP_DIR/node_modules/openid-client" ]; then
    echo "install-test-deps: openid-client present ($RP_DIR/node_modules)"
elif command -v npm >/dev/null 2>&1; then
    echo "install-test-deps: npm ci in $RP_DIR"
    (cd "$RP_DIR" && npm ci --no-audit --no-fund)
else
    echo "install-test-deps: NOTE: npm is missing; the openid_client e2e test will fail" \
         "(install Node.js 20+ and run: cd tests/rp-conformance && npm ci)." >&2
fi
