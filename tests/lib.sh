# tests/lib.sh: what the lab tests share (sourced by tests/lab-test and tests/kmod/lab-kernel).
# The caller sets ROOT (the checkout) before sourcing. JSON is read with jq only.
#
#   pass MSG / fail MSG        count and print a result line
#   check NAME CMD...          passes when CMD exits 0, else fails and prints CMD's output tail
#   wait_for SECONDS CMD...    retries CMD every 0.5 s until it succeeds (then runs it once more)
#   show HOST                  `ntmctl show --json` on HOST
#   peer_state HOST FQDN       built / building / none (a peer not in the table has none)
#   peer_path HOST FQDN        direct / relay / none
#   vip_of HOST                HOST's IPv4 VIP, else its IPv6 VIP
#   tunnel_endpoint HOST FQDN  the endpoint of HOST's tunnel to FQDN (none without one)
#   pattern_md5 N              md5 of the web app's /bytes/N body
#   lab_finish NAME            (trap on EXIT) daemon log tails on failure, lab down, the summary

LAB=$ROOT/scripts/lab
export NTM_LAB_DIR=${NTM_LAB_DIR:-$ROOT/target/lab}

command -v jq >/dev/null || {
	echo "tests: jq is missing (scripts/deps installs it)" >&2
	exit 2
}

passes=0
fails=0
pass() {
	echo "PASS: $*"
	passes=$((passes + 1))
}
fail() {
	echo "FAIL: $*"
	fails=$((fails + 1))
}
lab() { "$LAB" "$@"; }
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then pass "$name"; else
		fail "$name"
		echo "$out" | tail -n 20 | sed 's/^/    /'
	fi
}
wait_for() {
	local end=$((SECONDS + $1))
	shift
	while ((SECONDS < end)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	"$@"
}
show() { lab exec "$1" ntmctl show --json; }
peer_state() { show "$1" | jq -r --arg f "$2" '[.peers[] | select(.fqdn == $f) | .state][0] // "none"'; }
peer_path() { show "$1" | jq -r --arg f "$2" '[.peers[] | select(.fqdn == $f) | .path][0] // "none"'; }
vip_of() { show "$1" | jq -r '.vip4 // .vip6 // "none"'; }
tunnel_endpoint() { show "$1" | jq -r --arg f "$2" '[.tunnels[] | select(.fqdn == $f) | .endpoint][0] // "none"'; }
# The web app's /bytes/N body: bytes 0..250 repeated.
pattern_md5() {
	python3 -c "import hashlib; n=$1; b=bytes(i % 251 for i in range(251)); print(hashlib.md5((b*(n//251+1))[:n]).hexdigest())"
}

lab_finish() {
	local rc=$?
	if ((fails == 0 && rc != 0)); then
		# The script died on its own (a command failed under set -u, say): not a pass.
		fail "the test script stopped early (exit $rc)"
	fi
	if ((fails > 0)); then
		echo "== daemon logs (tails)"
		for f in "$NTM_LAB_DIR"/*/*.log; do
			[[ -s $f ]] || continue
			echo "--- $f"
			tail -n 25 "$f"
		done
	fi
	lab down >/dev/null 2>&1
	echo "== $1: $passes passed, $fails failed"
	exit $((fails > 100 ? 100 : fails))
}
