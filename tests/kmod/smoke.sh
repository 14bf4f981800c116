#!/usr/bin/env bash
# tests/kmod/smoke.sh: ntm.ko end to end, in the guest: scripts/vm run -- tests/kmod/smoke.sh
#
# Two namespaces (a, b) joined by a veth pair, an ntm0 in each, and in each an agent
# (tests/kmod/ntmnl.py agent) that binds UDP port 7600 (IPv4 and IPv6), hands the sockets to
# the module (dev-set), installs the tunnel to the other side and stays alive holding the fds,
# logging the `events` group and the datagrams that reach its sockets. Then: pings VIP to VIP
# (v4 and v6 inner, v4 and v6 outer), counters, signaling falling through to the socket, a
# replayed packet, a malformed flood, bad netlink requests, unprivileged callers, a request
# flood, roaming, replacement, idle expiry, misses, deletion, giving sockets back, a socket
# closed by its owner, device down, the kernel's YNL CLI, and unloading with devices present.
# Every check prints "ok ..." or "FAIL ..." (and the script exits 1 at the first failure).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/../.." && pwd)
# Debian's python3: the pyenv shim first on PATH forks a dozen processes per call (slow under TCG).
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
NL=("$PY" "$HERE/ntmnl.py")
W=$(mktemp -d /tmp/ntm-smoke.XXXXXX)
PIDS=()

K1=$(printf '%064x' 1)
K2=$(printf '%064x' 2)
K3=$(printf '%064x' 3)
K4=$(printf '%064x' 4)

say() { printf '== [%s] %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
die() {
	printf 'FAIL %s\n' "$*"
	diagnose
	exit 1
}

# What the namespaces look like when a check fails.
diagnose() {
	local ns
	set +e
	for ns in a b; do
		ip netns list 2>/dev/null | grep -qw $ns || continue
		echo "---- namespace $ns"
		ip -n $ns -s -s link show ntm0 2>&1 | sed 's/^/     /'
		ip -n $ns -s link show v$ns 2>&1 | sed 's/^/     /'
		ip -n $ns route 2>&1 | sed 's/^/     /'
		ip netns exec $ns "${NL[@]}" dev-get ntm0 2>&1 | sed 's/^/     dev-get: /'
		ip netns exec $ns "${NL[@]}" dump ntm0 2>&1 | sed 's/^/     dump: /'
		for f in "$W/$ns.log" "$W/$ns.events" "$W/$ns.signals"; do
			[[ -s $f ]] && tail -n 20 "$f" | sed "s|^|     $(basename "$f"): |"
		done
	done
	echo "---- dmesg"
	dmesg | tail -n 40 | sed 's/^/     /'
}

cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	ip netns del a 2>/dev/null || true
	ip netns del b 2>/dev/null || true
}
trap cleanup EXIT

ina() { ip netns exec a "$@"; }
inb() { ip netns exec b "$@"; }

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 0.2 s.
wait_for() {
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs * 5; i++)); do
		if "$@"; then return 0; fi
		sleep 0.2
	done
	die "timed out after ${secs}s: $what"
}

# JSON checks: jq -e on stdin / on the events log (JSON lines).
q() { jq -e "$1" >/dev/null; }
event() { [[ -s $1 ]] && jq -e -s "any(.[]; $2)" "$1" >/dev/null; }
count_events() { if [[ -s $1 ]]; then jq -s "[.[] | select($2)] | length" "$1"; else echo 0; fi; }
dump() { ip netns exec "$1" "${NL[@]}" dump "$2"; }
tunnel_of() { dump "$1" ntm0 | jq -c ".[] | .tunnel | select(.local_id == $(($2)))"; }
now() { cut -d' ' -f1 /proc/uptime; }

tunnel_json() { # local remote vip4 vip6 endpoint send recv label
	printf '{"local_id": %d, "remote_id": %d, "vip4": "%s", "vip6": "%s", "endpoint": "%s", "send_key": "%s", "recv_key": "%s", "label": "%s"}' "$@"
}

[[ $(id -u) = 0 ]] || die "must run as root (in the guest: scripts/vm run -- tests/kmod/smoke.sh)"

say "module"
if [[ ! -d /sys/module/ntm ]]; then
	insmod "$REPO/kmod/ntm.ko"
fi
dmesg | grep -q 'ntm: self-test: golden vectors sealed and opened' || die "no self-test line in dmesg"
ok "loaded, self-test passed: $(dmesg | grep 'ntm: self-test' | tail -1 | sed 's/^\[[^]]*\] //')"
"$PY" "$REPO/scripts/gen-netlink" --check

say "topology"
ip netns add a
ip netns add b
ip link add va netns a type veth peer name vb netns b
ip -n a addr add 10.9.0.1/24 dev va
ip -n a addr add fd00:9::1/64 dev va nodad
ip -n b addr add 10.9.0.2/24 dev vb
ip -n b addr add fd00:9::2/64 dev vb nodad
for ns in a b; do
	ip -n $ns link set lo up
	ip -n $ns link set v${ns} up
	ip -n $ns link add ntm0 type ntm
	ip -n $ns link set ntm0 up
done
ip -n a addr add 100.64.0.1/32 dev ntm0
ip -n a addr add fd7a::1/128 dev ntm0 nodad
ip -n a route add 100.64.0.2/32 dev ntm0
ip -n a route add fd7a::2/128 dev ntm0
ip -n b addr add 100.64.0.2/32 dev ntm0
ip -n b addr add fd7a::2/128 dev ntm0 nodad
ip -n b route add 100.64.0.1/32 dev ntm0
ip -n b route add fd7a::1/128 dev ntm0
ip -n a -d link show ntm0 | grep -q 'mtu 1420 .*' || die "ntm0 mtu is not 1420"
ip -n a -d link show ntm0 | grep -q 'POINTOPOINT,NOARP' || die "ntm0 flags"
ip -n a -d link show ntm0 | grep -qw ntm || die "ntm0 kind"
ok "ntm0 in a and b: $(ip -n a -d -o link show ntm0 | grep -o '<[^>]*> mtu [0-9]*')"

say "agents"
cat >"$W/a.json" <<EOF
{"ifname": "ntm0", "port": 7600, "idle_ms": 600000, "events": "$W/a.events", "signals": "$W/a.signals",
 "ready": "$W/a.ready", "tunnels": [$(tunnel_json 0x1111 0x2222 100.64.0.2 fd7a::2 10.9.0.2:7600 "$K1" "$K2" b.test)]}
EOF
cat >"$W/b.json" <<EOF
{"ifname": "ntm0", "port": 7600, "idle_ms": 600000, "events": "$W/b.events", "signals": "$W/b.signals",
 "ready": "$W/b.ready", "tunnels": [$(tunnel_json 0x2222 0x1111 100.64.0.1 fd7a::1 10.9.0.1:7600 "$K2" "$K1" a.test)]}
EOF
# Background processes are started without the ina/inb functions: $! is then the agent itself
# (ip netns exec execs it), not a subshell that a kill would leave it behind.
ip netns exec a "${NL[@]}" agent "$W/a.json" >"$W/a.log" 2>&1 &
PIDS+=($!)
ip netns exec b "${NL[@]}" agent "$W/b.json" >"$W/b.log" 2>&1 &
PIDS+=($!)
B_AGENT=$!
wait_for 30 "agents ready" test -e "$W/a.ready" -a -e "$W/b.ready"
ip netns exec b "${NL[@]}" monitor "$W/b.monitor" >/dev/null 2>&1 &
PIDS+=($!)
ok "sockets handed over, tunnels installed"
ina "${NL[@]}" dev-get ntm0 | q '.idle_timeout_ms == 600000 and .rx_orphans == 0' || die "dev-get"
ok "dev-get: $(ina "${NL[@]}" dev-get ntm0)"

say "traffic"
ina ping -c 3 -i 0.3 -W 3 100.64.0.2 >"$W/ping" || die "ping 100.64.0.2: $(cat "$W/ping")"
ok "ping VIP4 a -> b: $(tail -1 "$W/ping")"
ina ping -6 -c 3 -i 0.3 -W 3 fd7a::2 >"$W/ping" || die "ping fd7a::2"
ok "ping VIP6 a -> b: $(tail -1 "$W/ping")"
inb ping -c 2 -W 3 100.64.0.1 >/dev/null || die "ping b -> a"
ok "ping VIP4 b -> a"
ina ping -c 2 -s 1392 -M do -W 3 100.64.0.2 >/dev/null || die "ping with a full-MTU packet"
ok "ping with 1420-byte packets (DF)"
T=$(tunnel_of a 0x1111)
echo "     a's tunnel: $T"
echo "$T" | q '.tx_packets >= 6 and .rx_packets >= 6 and .rx_bytes > 0 and .tx_bytes > 0' || die "counters"
echo "$T" | q '.label == "b.test" and .endpoint_ip4 == "10.9.0.2" and .endpoint_port == 7600 and .remote_id == 8738' ||
	die "tunnel attributes"
echo "$T" | q '.idle_ms < 60000 and (has("send_key") | not) and (has("recv_key") | not)' || die "idle-ms or keys in dump"
ok "dump: counters, label, endpoint, idle-ms; no keys"

say "bulk TCP (GSO super-packets segmented by the device, checksums completed per segment)"
for dst in 100.64.0.2 fd7a::2; do
	rm -f "$W/sink.ready"
	ip netns exec b "${NL[@]}" tcp-sink "$dst" 5001 "$W/sink.ready" >"$W/sink.out" 2>&1 &
	SINK=$!
	PIDS+=("$SINK")
	wait_for 20 "TCP sink on $dst" test -e "$W/sink.ready"
	ina timeout 300 "${NL[@]}" tcp-send "$dst" 5001 3000000 >"$W/send.out" 2>&1 || die "tcp-send to $dst: $(cat "$W/send.out")"
	wait "$SINK" || die "tcp-sink on $dst: $(cat "$W/sink.out")"
	[[ $(cat "$W/sink.out") = "$(cat "$W/send.out")" ]] || die "TCP to $dst: sent $(cat "$W/send.out"), received $(cat "$W/sink.out")"
	ok "3 MB over TCP to $dst intact (md5 $(cut -d' ' -f1 "$W/send.out"))"
done

say "signaling falls through to the daemon's socket"
inb "${NL[@]}" send 10.9.0.1 7600 01deadbeef
inb "${NL[@]}" send fd00:9::1 7600 02cafe
wait_for 10 "signaling datagrams at a" event "$W/a.signals" '.hex == "01deadbeef"'
wait_for 10 "signaling datagrams at a (IPv6)" event "$W/a.signals" '.hex == "02cafe"'
ok "datagrams of types 1 and 2 (IPv4, IPv6) reached the agent's sockets"
inb "${NL[@]}" send 10.9.0.1 7600 "04000000ffffffff$(printf '%080d' 0)"
sleep 1
event "$W/a.signals" '.hex | startswith("04")' && die "a data packet reached the socket"
ina "${NL[@]}" dev-get ntm0 | q '.rx_orphans == 1' || die "orphan not counted"
ok "a data packet for an unknown receiver: consumed, rx-orphans 1"

say "replay"
BEFORE=$(tunnel_of a 0x1111 | jq .rx_dropped)
inb "${NL[@]}" replay vb 10.9.0.1 7600 100.64.0.1 >"$W/replay" 2>&1 || die "replay: $(cat "$W/replay")"
sleep 1
T=$(tunnel_of a 0x1111)
echo "$T" | q ".rx_dropped >= $BEFORE + 2 and .endpoint_port == 7600" || die "replayed packets: $T"
event "$W/a.events" '.cmd == "endpoint-changed-ntf"' && die "a replayed packet moved the endpoint"
ok "$(cat "$W/replay"): both copies dropped (rx-dropped $BEFORE -> $(echo "$T" | jq .rx_dropped)), endpoint kept"

say "malformed flood"
inb "${NL[@]}" flood 10.9.0.1 7600 0x1111 2000
sleep 1
D=$(ina "${NL[@]}" dev-get ntm0)
T=$(tunnel_of a 0x1111)
echo "$D" | q '.rx_orphans >= 1000' || die "orphans after the flood: $D"
echo "$T" | q ".rx_dropped >= $BEFORE + 700" || die "tunnel drops after the flood: $T"
ina ping -c 2 -W 3 100.64.0.2 >/dev/null || die "ping after the flood"
ERR=$(ip -n a -s -s link show ntm0 | awk '/RX:/{getline; print $3}')
ok "2000 malformed datagrams: rx-orphans $(echo "$D" | jq .rx_orphans), tunnel rx-dropped $(echo "$T" | jq .rx_dropped), device rx errors $ERR; ping still fine"

say "bad netlink requests"
ina "${NL[@]}" fuzz ntm0 | sed 's/^/     /'
ok "fuzz"
ina setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all \
	"${NL[@]}" expect-eperm ntm0 | sed 's/^/     /'
if unshare -U -r true 2>/dev/null; then
	ina unshare -U -r "${NL[@]}" expect-eperm ntm0 | sed 's/^/     /'
	ok "unprivileged callers (uid 65534; root of a user namespace) get EPERM"
else
	ok "unprivileged callers (uid 65534) get EPERM"
	echo "SKIP root of a user namespace: this kernel has no user namespaces (CONFIG_USER_NS)"
fi
ip -n a link add ntm1 type ntm
ip -n a link set ntm1 up
ina "${NL[@]}" flood-requests ntm1 300 | sed 's/^/     /'
ip -n a link del ntm1
ok "request flood on ntm1, then ntm1 deleted with 0 tunnels"

say "roaming"
ip -n b addr del 10.9.0.2/24 dev vb
ip -n b addr add 10.9.0.3/24 dev vb
inb ping -c 2 -W 3 100.64.0.1 >/dev/null || die "ping from b's new address"
wait_for 10 "endpoint-changed at a" event "$W/a.events" \
	'.cmd == "endpoint-changed-ntf" and .tunnel.endpoint_ip4 == "10.9.0.3" and .tunnel.local_id == 4369'
tunnel_of a 0x1111 | q '.endpoint_ip4 == "10.9.0.3"' || die "dump after roaming"
ina ping -c 2 -W 3 100.64.0.2 >/dev/null || die "ping to b's new address"
ok "b moved to 10.9.0.3: endpoint-changed-ntf at a, a follows"

say "keepalives after a move (tunnel-keepalive)"
# b moves again and sends no data: its keepalive alone (every tunnel, then one by local-id) must
# move a's endpoint, without counting as data for a's idle timer.
# (Delete first: deleting the primary address of a subnet takes its secondaries with it.)
ip -n b addr del 10.9.0.3/24 dev vb
ip -n b addr add 10.9.0.4/24 dev vb
RX0=$(tunnel_of a 0x1111 | jq .rx_packets)
inb "${NL[@]}" keepalive ntm0
wait_for 10 "endpoint-changed at a (keepalive to every tunnel)" event "$W/a.events" \
	'.cmd == "endpoint-changed-ntf" and .tunnel.endpoint_ip4 == "10.9.0.4" and .tunnel.local_id == 4369'
T=$(tunnel_of a 0x1111)
echo "$T" | q ".rx_packets >= $RX0 + 1 and .endpoint_ip4 == \"10.9.0.4\"" || die "a after b's keepalive: $T"
ip -n b addr del 10.9.0.4/24 dev vb
ip -n b addr add 10.9.0.3/24 dev vb
BACK='.cmd == "endpoint-changed-ntf" and .tunnel.endpoint_ip4 == "10.9.0.3" and .tunnel.local_id == 4369'
N=$(count_events "$W/a.events" "$BACK")
moved_back() { (($(count_events "$W/a.events" "$BACK") > N)); }
inb "${NL[@]}" keepalive ntm0 0x2222
wait_for 10 "endpoint-changed at a (keepalive by local-id)" moved_back
tunnel_of a 0x1111 | q '.endpoint_ip4 == "10.9.0.3"' || die "dump after the second keepalive"
ina ping -c 2 -W 3 100.64.0.2 >/dev/null || die "ping after the keepalives"
ok "keepalives alone (all tunnels; one local-id) moved a's endpoint to 10.9.0.4 and back; rx-packets +1, no data"

say "IPv6 outer"
ina "${NL[@]}" tunnel-set ntm0 '{"local_id": 4369, "endpoint": "[fd00:9::2]:7600"}'
inb "${NL[@]}" tunnel-set ntm0 '{"local_id": 8738, "endpoint": "[fd00:9::1]:7600"}'
ina ping -c 3 -i 0.3 -W 3 100.64.0.2 >/dev/null || die "ping over IPv6"
ina ping -6 -c 2 -W 3 fd7a::2 >/dev/null || die "ping6 over IPv6"
tunnel_of a 0x1111 | q '.endpoint_ip6 == "fd00:9::2"' || die "dump after tunnel-set"
ok "tunnel-set to IPv6 endpoints; pings over an IPv6 outer"

say "replacement"
ina "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x1112 0x2222 100.64.0.2 fd7a::2 '[fd00:9::2]:7600' "$K3" "$K4" b.test)"
wait_for 10 "destroyed (deleted) at a" event "$W/a.events" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 4369 and .tunnel.reason_name == "deleted" and .tunnel.label == "b.test" and .tunnel.vip4 == "100.64.0.2"'
inb "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x2222 0x1112 100.64.0.1 fd7a::1 '[fd00:9::1]:7600' "$K4" "$K3" a.test)"
wait_for 10 "destroyed (deleted) at b" event "$W/b.events" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 8738 and .tunnel.reason_name == "deleted"'
ina ping -c 2 -W 3 100.64.0.2 >/dev/null || die "ping after replacement"
[[ $(dump a ntm0 | jq length) = 1 ]] || die "a has more than one tunnel"
ok "tunnel-new to the same VIPs replaced the old tunnels (destroyed, reason deleted) with new keys and ids"

say "idle expiry"
# The last data first, then the timeout (under TCG, setting it takes longer than 3 s).
ina ping -c 1 -W 3 100.64.0.2 >/dev/null || die "ping before idling"
T0=$(now)
ina "${NL[@]}" dev-set ntm0 idle=3000
inb "${NL[@]}" dev-set ntm0 idle=3000
wait_for 30 "destroyed (idle) at a" event "$W/a.events" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 4370 and .tunnel.reason_name == "idle"'
wait_for 30 "destroyed (idle) at b" event "$W/b.events" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 8738 and .tunnel.reason_name == "idle"'
TI=$(jq -s '[.[] | select(.cmd == "tunnel-destroyed-ntf" and .tunnel.reason_name == "idle")][0].time' "$W/a.events")
"$PY" -c "import sys; d = $TI - $T0; print(f'     idle destroy {d:.1f}s after the last data'); sys.exit(0 if 2.5 <= d <= 30 else 1)" ||
	die "idle expiry at the wrong time"
[[ $(dump a ntm0 | jq length) = 0 ]] || die "a still has tunnels"
ina "${NL[@]}" dev-set ntm0 idle=600000
inb "${NL[@]}" dev-set ntm0 idle=600000
ok "3 s without data: tunnel-destroyed-ntf reason idle on both sides, table empty"

say "tunnel miss"
ina ping -c 1 -W 1 100.64.0.2 >/dev/null && die "ping without a tunnel succeeded"
ina ping -6 -c 1 -W 1 fd7a::2 >/dev/null && die "ping6 without a tunnel succeeded"
ip -n a route add 100.64.0.77/32 dev ntm0
ina "${NL[@]}" send 100.64.0.77 9 00 200
sleep 1
wait_for 10 "tunnel-miss-ntf for 100.64.0.2" event "$W/a.events" '.cmd == "tunnel-miss-ntf" and .miss_vip4 == "100.64.0.2" and .ifindex > 0'
wait_for 10 "tunnel-miss-ntf for fd7a::2" event "$W/a.events" '.cmd == "tunnel-miss-ntf" and .miss_vip6 == "fd7a::2"'
N=$(count_events "$W/a.events" '.cmd == "tunnel-miss-ntf" and .miss_vip4 == "100.64.0.77"')
((N >= 1 && N <= 2)) || die "$N tunnel-miss-ntf for a burst of 200 packets to 100.64.0.77"
ok "packets without a tunnel: tunnel-miss-ntf for 100.64.0.2 and fd7a::2; a burst of 200 to 100.64.0.77 gave $N (rate limited)"
# Many destinations: the device reports at most 64 misses a second, whatever their VIPs.
ip -n a route add 100.66.0.0/16 dev ntm0
t0=$(now)
ina "${NL[@]}" spray 100.66 9 600
sleep 1.5
secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { s = b - a; print (s == int(s) ? s : int(s) + 1) + 1 }')
wait_for 10 "a tunnel-miss-ntf for the spray" event "$W/a.events" '.cmd == "tunnel-miss-ntf" and ((.miss_vip4 // "") | startswith("100.66."))'
N=$(count_events "$W/a.events" '.cmd == "tunnel-miss-ntf" and ((.miss_vip4 // "") | startswith("100.66."))')
((N >= 1 && N <= 64 * secs)) || die "$N tunnel-miss-ntf for 600 destinations in about $secs s (at most 64 a second)"
ok "600 destinations without a tunnel in about $secs s gave $N tunnel-miss-ntf (at most 64 a second)"
ip -n a route del 100.66.0.0/16 dev ntm0
N=$(count_events "$W/a.events" '.cmd == "tunnel-miss-ntf" and ((.miss_vip6 // "") | startswith("ff"))')
((N == 0)) || die "$N tunnel-miss-ntf for IPv6 multicast (router solicitations): not peers"
ok "no tunnel-miss-ntf for multicast destinations (the device's router solicitations)"

say "rebuild, delete"
ina "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x1113 0x2223 100.64.0.2 fd7a::2 10.9.0.3:7600 "$K1" "$K3" b.test)"
inb "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x2223 0x1113 100.64.0.1 fd7a::1 10.9.0.1:7600 "$K3" "$K1" a.test)"
ina ping -c 2 -W 3 100.64.0.2 >/dev/null || die "ping after rebuilding"
ina "${NL[@]}" tunnel-del ntm0 0x1113
wait_for 10 "destroyed (deleted) 0x1113" event "$W/a.events" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 4371 and .tunnel.reason_name == "deleted"'
ok "a rebuilt tunnel carries traffic; tunnel-del -> destroyed, reason deleted"

say "giving a socket back"
ina "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x1114 0x2223 100.64.0.2 fd7a::2 10.9.0.3:7600 "$K1" "$K3" b.test)"
ina "${NL[@]}" dev-set ntm0 fd4=-1
wait_for 10 "destroyed (error) 0x1114" event "$W/a.events" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 4372 and .tunnel.reason_name == "error"'
inb "${NL[@]}" send 10.9.0.1 7600 04000000aabbccdd
wait_for 10 "data-typed datagram at a's plain socket" event "$W/a.signals" '.hex == "04000000aabbccdd"'
ok "dev-set fd4=-1: IPv4 tunnels destroyed (reason error), the socket is plain UDP again"

say "socket closed by its owner"
kill "$B_AGENT"
wait "$B_AGENT" 2>/dev/null || true
wait_for 10 "destroyed (error) at b" event "$W/b.monitor" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 8739 and .tunnel.reason_name == "error"'
ok "b's agent died: its tunnel destroyed with reason error"

say "device down"
ina "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x1115 0x2223 100.64.0.2 fd7a::2 '[fd00:9::2]:7600' "$K1" "$K3" b.test)"
ip -n a link set ntm0 down
wait_for 10 "destroyed (device-down)" event "$W/a.events" \
	'.cmd == "tunnel-destroyed-ntf" and .tunnel.local_id == 4373 and .tunnel.reason_name == "device-down"'
if ina "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x1116 0x2223 100.64.0.2 fd7a::2 '[fd00:9::2]:7600' "$K1" "$K3" x)" >"$W/err" 2>&1; then
	die "tunnel-new on a down device"
fi
grep -q 'device is down' "$W/err" || grep -q 'ENETDOWN' "$W/err" || die "tunnel-new on a down device: $(cat "$W/err")"
ip -n a link set ntm0 up
ina "${NL[@]}" tunnel-new ntm0 "$(tunnel_json 0x1116 0x2223 100.64.0.2 fd7a::2 '[fd00:9::2]:7600' "$K1" "$K3" x)"
ok "down: tunnels destroyed (reason device-down), tunnel-new refused (ENETDOWN); up again: accepted"

say "the kernel's YNL CLI"
YNL=$(ls -d /var/cache/ntm-kernel/*/linux/tools/net/ynl/cli.py 2>/dev/null | head -1 || true)
if [[ -n $YNL ]] && "$PY" -c 'import yaml' 2>/dev/null; then
	# The spec's schema check needs jsonschema (without it, the CLI runs with --no-schema).
	SCHEMA=(--no-schema)
	if "$PY" -c 'import jsonschema' 2>/dev/null; then
		SCHEMA=(--schema "$(dirname "$YNL")/../../../Documentation/netlink/genetlink.yaml")
	fi
	ina "$PY" "$YNL" --spec "$REPO/kmod/spec/ntm.yaml" "${SCHEMA[@]}" --dump tunnel-get \
		--json "{\"ifindex\": $(ina cat /sys/class/net/ntm0/ifindex)}" >"$W/ynl" 2>&1 || die "YNL dump: $(cat "$W/ynl")"
	grep -q "'local-id': 4374" "$W/ynl" || die "YNL dump: $(cat "$W/ynl")"
	ok "cli.py --spec kmod/spec/ntm.yaml --dump tunnel-get: $(tr -d '\n' <"$W/ynl" | cut -c1-160)..."
else
	echo "SKIP YNL CLI: no kernel tree with tools/net/ynl under /var/cache/ntm-kernel, or no python3-yaml"
fi

say "unload with devices present"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
rmmod ntm
ip -n a link show ntm0 >/dev/null 2>&1 && die "ntm0 survived rmmod"
insmod "$REPO/kmod/ntm.ko"
ip link add ntm9 type ntm
ip link set ntm9 up
rmmod ntm
insmod "$REPO/kmod/ntm.ko"
ok "rmmod deleted the devices; insmod, a device, rmmod again, insmod"

say "all good"
