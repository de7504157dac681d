# shellcheck shell=bash
# common.sh: what the engine scripts of tests/s3/ share; sourced after they set PROG and TIMEOUT.
# Messages, bounded waits that show the relevant log tails when they time out, and the usage text
# (the calling script's header comment, up to its first blank line).

trap 'echo "$PROG: command failed (line $LINENO, status $?): $BASH_COMMAND" >&2' ERR

say() { echo "$PROG: $*"; }
die() {
    trap - ERR
    echo "$PROG: error: $*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Print the last lines of the given log files (those that exist) to stderr.
tails() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "---- last 25 lines of $f ----" >&2
        tail -n 25 "$f" >&2
    done
}

# wait_for DESCRIPTION "LOG FILES" COMMAND...: run COMMAND every second until it succeeds, at most
# $TIMEOUT seconds; on timeout, fail with the log tails (and the output of $STATE_CMD, if set).
wait_for() {
    local desc=$1 logs=$2 start
    shift 2
    start=$(date +%s)
    until "$@" >/dev/null 2>&1; do
        if (($(date +%s) - start >= TIMEOUT)); then
            # shellcheck disable=SC2086
            tails $logs
            if [ -n "${STATE_CMD:-}" ]; then
                echo "---- state: $STATE_CMD ----" >&2
                $STATE_CMD >&2 2>&1 || true
            fi
            die "timed out after ${TIMEOUT}s waiting for $desc"
        fi
        sleep 1
    done
}
