# shellcheck shell=bash
# Shared by the benchmark scripts (sourced): deps, release build, the lab (waiting for another
# session's lab to go away instead of tearing it down), results file, cleanup.
#
# Environment:
#   NTM_BIN          the project's binaries; default <repo>/target/release (benchmarks want a
#                    release build)
#   NTM_NO_BUILD=1   do not run `cargo build --release --workspace --bins` first
#   NTM_BENCH_LAB_WAIT_S  how long to wait for a lab someone else runs; default 600
#   NTM_LAB_DIR      the lab's run directory; default target/bench/lab-<name>-<date>, not
#                    target/lab: a lab in the QEMU guest (scripts/vm) shares the checkout and would
#                    wipe the run directory of a lab on the host (the last 5 are kept)

BENCH_REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
LAB=$BENCH_REPO/scripts/lab
NTM_BIN=${NTM_BIN:-$BENCH_REPO/target/release}
[[ $NTM_BIN = /* ]] || NTM_BIN=$PWD/$NTM_BIN
export NTM_BIN
BENCH_DIR=$BENCH_REPO/target/bench
LAB_STARTED=0
# Pids of background processes this script started (killed by bench_cleanup).
BENCH_PIDS=()

log() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# A result line: on stdout and in the results file.
out() { printf '%s\n' "$*" | tee -a "$RESULT"; }

bench_init() {
	BENCH_NAME=$1
	((EUID == 0)) || die "needs root (the lab does)"
	mkdir -p "$BENCH_DIR"
	local stamp old
	stamp=$(date +%Y%m%d-%H%M%S)
	RESULT=$BENCH_DIR/$BENCH_NAME-$stamp.txt
	: >"$RESULT"
	if [[ -z ${NTM_LAB_DIR:-} && ${NTM_VM_GUEST:-0} = 1 ]]; then
		# In the QEMU guest: QEMU's 9p refuses unix sockets in the checkout, and target/lab is
		# the guest's own tmpfs (saved to the run directory at the end).
		NTM_LAB_DIR=$BENCH_REPO/target/lab
	elif [[ -z ${NTM_LAB_DIR:-} ]]; then
		NTM_LAB_DIR=$BENCH_DIR/lab-$BENCH_NAME-$stamp
		# shellcheck disable=SC2012 # names without spaces
		for old in $(ls -1d "$BENCH_DIR/lab-$BENCH_NAME-"* 2>/dev/null | sort | head -n -4); do
			rm -rf "$old"
		done
	fi
	export NTM_LAB_DIR
	trap bench_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# Kill what we started, take our lab down. Runs on every exit.
bench_cleanup() {
	local rc=$? pid
	trap - EXIT
	for pid in "${BENCH_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${BENCH_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ $(type -t bench_extra_cleanup) = function ]]; then bench_extra_cleanup || true; fi
	if ((LAB_STARTED)); then
		log "taking the lab down"
		"$LAB" down || true
	fi
	[[ -s ${RESULT:-} ]] && log "results in $RESULT"
	exit "$rc"
}

# The Debian packages (httping, iperf3, wrk, nginx, plus the lab's) and jq.
bench_deps() {
	"$BENCH_REPO/scripts/deps" --bench
	if ! command -v jq >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null
	fi
}

bench_build() {
	if [[ ${NTM_NO_BUILD:-0} = 1 ]]; then
		log "NTM_NO_BUILD=1: using the binaries in $NTM_BIN"
	else
		log "cargo build --release --workspace --bins"
		(cd "$BENCH_REPO" && cargo build --release --workspace --bins) || die "build failed"
	fi
	local b
	for b in ntmd ntmctl dc nps ntm-webapp; do
		[[ -x $NTM_BIN/$b ]] || die "$NTM_BIN/$b is missing"
	done
}

# Only one lab runs on a machine (fixed namespace names). One we did not start belongs to someone
# else's tests: wait for it to go away rather than taking it down.
bench_wait_lab_free() {
	local limit=${NTM_BENCH_LAB_WAIT_S:-600} waited=0
	while ip netns list | grep -q '^ntm-'; do
		((waited < limit)) || die "a lab (ntm-* namespaces) has been up for ${limit}s: not ours, not taking it down"
		((waited > 0)) || log "a lab is up (someone else's): waiting for it to go (≤ ${limit}s)"
		sleep 30
		waited=$((waited + 30))
	done
}

# `scripts/lab up` with the release binaries; extra arguments go to `up`.
bench_lab_up() {
	bench_wait_lab_free
	LAB_STARTED=1
	log "lab up $*"
	NTM_NO_BUILD=1 "$LAB" up "$@" >&2 || die "lab up failed"
}

lab_exec() { "$LAB" exec "$@"; }

# The machine's state, for the results: load, what else runs, the commit measured.
bench_context() {
	local commit dirty
	commit=$(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
	dirty=$(git -C "$BENCH_REPO" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
	out "# $BENCH_NAME  $(date '+%F %T %z')  host $(hostname)  kernel $(uname -r)"
	out "# repo $commit ($dirty modified tracked files in the work tree)"
	out "# binaries $NTM_BIN (ntmd built $(date -r "$NTM_BIN/ntmd" '+%F %T')), lab logs $NTM_LAB_DIR"
	out "# cpus $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
	local busy
	# Over one second (top's second sample), the processes using ≥ 20 % of a CPU.
	busy=$(top -b -n 2 -d 1 -w 200 | awk '/^top -/ {blk++}
		blk == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 20 {printf "%s%s(%s%%)", sep, $12, $9; sep = ", "}')
	out "# busy processes at start: ${busy:-none}"
}
