#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Drive ntm.ko's generic netlink family `ntm` with raw netlink sockets (no dependencies).

The family's numbers and attribute types come from ntmnl_gen.py, which scripts/gen-netlink
generates from kmod/spec/ntm.yaml. Subcommands:

  agent CONFIG.json      bind UDP sockets, hand them over (dev-set), install tunnels, then stay
                         alive holding the fds: events of the `events` group go to
                         CONFIG["events"], datagrams that reach the sockets (signaling) to
                         CONFIG["signals"] (JSON lines); CONFIG["ready"] is created when set up.
  monitor FILE           write every event as a JSON line to FILE
  dev-get IFNAME         print the device's settings and counters (JSON)
  dump IFNAME            print the tunnels (JSON list)
  tunnel-new IFNAME JSON / tunnel-set IFNAME JSON / tunnel-del IFNAME ID
  keepalive IFNAME [ID]  an empty authenticated packet on tunnel ID, or on every tunnel
  tcp-sink ADDR PORT READY   accept one TCP connection, print the md5 and length of what came
  tcp-send ADDR PORT BYTES   send BYTES of a fixed pattern over TCP, print its md5 and length
  dev-set IFNAME [idle=MS] [fd4=-1] [fd6=-1]   (-1 gives a socket back)
  send HOST PORT HEX [COUNT]   send UDP datagrams (HEX payload) from an ephemeral port
  spray PREFIX16 PORT COUNT   one UDP datagram to each of COUNT addresses in PREFIX16 (100.66)
  flood HOST PORT RECEIVER COUNT   malformed data packets at the port
  replay IFNAME_OUT HOST PORT VIP   ping VIP, capture its data packet leaving IFNAME_OUT, resend it
  fuzz IFNAME            bad requests: each must fail with the right errno and extack text
  expect-eperm IFNAME    (run unprivileged) requests and subscriptions must fail with EPERM
  flood-requests IFNAME COUNT   many requests in a row; all must be answered

Exit status 0 on success; failures print a line starting with FAIL.
"""

import errno
import json
import os
import random
import select
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout for the import below
from ntmnl_gen import ATTRS, CMD, DESTROY_REASON, FAMILY_NAME, FAMILY_VERSION, MCGRP_EVENTS, NESTS, TYPES

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 1, 2, 4, 0x300
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_MCAST_GROUPS = 1, 2, 7
CTRL_ATTR_MCAST_GRP_NAME, CTRL_ATTR_MCAST_GRP_ID = 1, 2
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, NLMSGERR_ATTR_MISS_TYPE, NLMSGERR_ATTR_MISS_NEST = 1, 2, 5, 6

CMD_NAME = {v: k.replace('_', '-') for k, v in CMD.items()}
A = ATTRS['ntm']
T = ATTRS['tunnel']


class NlError(Exception):
    def __init__(self, err, msg=None, offs=None, miss_type=None, miss_nest=None):
        self.errno = err
        self.msg = msg
        self.offs = offs
        self.miss_type = miss_type
        self.miss_nest = miss_nest
        super().__init__(f'{errno.errorcode.get(err, err)}: {msg!r} (offs={offs} miss={miss_type})')


def fail(msg):
    print('FAIL', msg, flush=True)
    sys.exit(1)


# ---- attributes ----

def nla(ty, payload):
    n = 4 + len(payload)
    return struct.pack('=HH', n, ty) + payload + b'\0' * ((4 - n % 4) % 4)


def u32(ty, v):
    return nla(ty, struct.pack('=I', v))


def s32(ty, v):
    return nla(ty, struct.pack('=i', v))


def nest(ty, *attrs, flag=True):
    return nla(ty | (NLA_F_NESTED if flag else 0), b''.join(attrs))


def parse_attrs(b):
    out = {}
    i = 0
    while i + 4 <= len(b):
        n, ty = struct.unpack_from('=HH', b, i)
        if n < 4:
            break
        out[ty & 0x3fff] = b[i + 4:i + n]
        i += (n + 3) & ~3
    return out


def uint(b):
    return struct.unpack('=Q', b)[0] if len(b) == 8 else struct.unpack('=I', b)[0]


def ip4(b):
    return socket.inet_ntop(socket.AF_INET, b)


def ip6(b):
    return socket.inet_ntop(socket.AF_INET6, b)


def decode_value(kind, v):
    if kind == 'u32':
        return struct.unpack('=I', v)[0]
    if kind == 's32':
        return struct.unpack('=i', v)[0]
    if kind == 'u16be':
        return struct.unpack('!H', v)[0]
    if kind == 'u32be':
        return struct.unpack('!I', v)[0]
    if kind == 'uint':
        return uint(v)
    if kind == 'ipv4':
        return ip4(v)
    if kind == 'ipv6':
        return ip6(v)
    if kind == 'string':
        return v.rstrip(b'\0').decode()
    return v.hex()


def decode_attrs(set_name, b):
    """The attributes of `set_name` in b, by name (nests decoded too; unknown types left out)."""
    a = parse_attrs(b)
    out = {}
    for name, ty in ATTRS[set_name].items():
        if ty not in a:
            continue
        kind = TYPES[set_name][name]
        if kind == 'nest':
            out[name] = decode_attrs(NESTS[set_name][name], a[ty])
        else:
            out[name] = decode_value(kind, a[ty])
    return out


def decode(cmd, attrs):
    d = {'cmd': CMD_NAME.get(cmd, cmd)}
    d.update(decode_attrs('ntm', attrs))
    t = d.get('tunnel', {})
    if 'reason' in t:
        t['reason_name'] = DESTROY_REASON.get(t['reason'], t['reason'])
    return d


def tunnel_attrs(spec):
    """spec: dict with local_id, remote_id, vip4, vip6, endpoint ("ip:port" / "[ip6]:port"),
    send_key, recv_key (hex), label; unknown keys are raw (ty: hex)."""
    out = []
    if 'local_id' in spec:
        out.append(u32(T['local_id'], spec['local_id']))
    if 'remote_id' in spec:
        out.append(u32(T['remote_id'], spec['remote_id']))
    if 'vip4' in spec:
        out.append(nla(T['vip4'], socket.inet_pton(socket.AF_INET, spec['vip4'])))
    if 'vip6' in spec:
        out.append(nla(T['vip6'], socket.inet_pton(socket.AF_INET6, spec['vip6'])))
    if 'endpoint' in spec:
        host, port = spec['endpoint'].rsplit(':', 1)
        if host.startswith('['):
            out.append(nla(T['endpoint_ip6'], socket.inet_pton(socket.AF_INET6, host[1:-1])))
        else:
            out.append(nla(T['endpoint_ip4'], socket.inet_pton(socket.AF_INET, host)))
        out.append(nla(T['endpoint_port'], struct.pack('!H', int(port))))
    for k in ('send_key', 'recv_key'):
        if k in spec:
            out.append(nla(T[k], bytes.fromhex(spec[k])))
    if 'label' in spec:
        out.append(nla(T['label'], spec['label'].encode() + b'\0'))
    for ty, hexval in spec.get('raw', {}).items():
        out.append(nla(int(ty), bytes.fromhex(hexval)))
    return out


# ---- the socket ----

class Genl:
    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = random.randrange(1, 1 << 30)
        self.family = None
        self.groups = {}

    def send(self, ty, flags, cmd, payload, version=FAMILY_VERSION):
        self.seq += 1
        body = struct.pack('=BBH', cmd, version, 0) + payload
        self.sock.send(struct.pack('=IHHII', 16 + len(body), ty, flags, self.seq, 0) + body)
        return self.seq

    def recv_msgs(self):
        data = self.sock.recv(1 << 20)
        i = 0
        while i + 16 <= len(data):
            n, ty, flags, seq, pid = struct.unpack_from('=IHHII', data, i)
            yield ty, flags, seq, data[i + 16:i + n]
            i += (n + 3) & ~3

    @staticmethod
    def error_of(flags, payload):
        err = -struct.unpack_from('=i', payload)[0]
        if err == 0:
            return 0, None
        rest = payload[4 + 16:] if flags & NLM_F_CAPPED else b''
        tlv = parse_attrs(rest) if flags & NLM_F_ACK_TLVS else {}
        return err, NlError(
            err,
            tlv[NLMSGERR_ATTR_MSG].rstrip(b'\0').decode() if NLMSGERR_ATTR_MSG in tlv else None,
            struct.unpack('=I', tlv[NLMSGERR_ATTR_OFFS])[0] if NLMSGERR_ATTR_OFFS in tlv else None,
            struct.unpack('=I', tlv[NLMSGERR_ATTR_MISS_TYPE])[0] if NLMSGERR_ATTR_MISS_TYPE in tlv else None,
            struct.unpack('=I', tlv[NLMSGERR_ATTR_MISS_NEST])[0] if NLMSGERR_ATTR_MISS_NEST in tlv else None,
        )

    def request(self, cmd, attrs=b'', dump=False, ty=None):
        """Returns the list of (cmd, attrs) replies; raises NlError."""
        ty = self.family if ty is None else ty
        seq = self.send(ty, NLM_F_REQUEST | NLM_F_ACK | (NLM_F_DUMP if dump else 0), cmd, attrs)
        replies = []
        while True:
            for mty, flags, mseq, payload in self.recv_msgs():
                if mseq != seq:
                    continue
                if mty == NLMSG_ERROR:
                    err, exc = self.error_of(flags, payload)
                    if err:
                        raise exc
                    return replies
                if mty == NLMSG_DONE:
                    err = -struct.unpack_from('=i', payload)[0] if len(payload) >= 4 else 0
                    if err:
                        tlv = parse_attrs(payload[4:]) if flags & NLM_F_ACK_TLVS else {}
                        m = tlv.get(NLMSGERR_ATTR_MSG, b'').rstrip(b'\0').decode() or None
                        raise NlError(err, m)
                    return replies
                replies.append((payload[0], payload[4:]))

    def resolve(self, name=FAMILY_NAME):
        r = self.request(CTRL_CMD_GETFAMILY, nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b'\0'), ty=GENL_ID_CTRL)
        a = parse_attrs(r[0][1])
        self.family = struct.unpack('=H', a[CTRL_ATTR_FAMILY_ID])[0]
        for g in parse_attrs(a.get(CTRL_ATTR_MCAST_GROUPS, b'')).values():
            ga = parse_attrs(g)
            self.groups[ga[CTRL_ATTR_MCAST_GRP_NAME].rstrip(b'\0').decode()] = struct.unpack(
                '=I', ga[CTRL_ATTR_MCAST_GRP_ID])[0]
        return self

    def subscribe(self, group=MCGRP_EVENTS):
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.groups[group])

    def events(self):
        for ty, flags, seq, payload in self.recv_msgs():
            if ty == self.family:
                yield decode(payload[0], payload[4:])


def ifindex(name):
    return socket.if_nametoindex(name)


def dev_set(g, ifi, fd4=None, fd6=None, idle_ms=None):
    a = u32(A['ifindex'], ifi)
    if fd4 is not None:
        a += s32(A['sock_fd4'], fd4)
    if fd6 is not None:
        a += s32(A['sock_fd6'], fd6)
    if idle_ms is not None:
        a += u32(A['idle_timeout_ms'], idle_ms)
    return g.request(CMD['dev_set'], a)


def tunnel_new(g, ifi, spec, cmd='tunnel_new'):
    return g.request(CMD[cmd], u32(A['ifindex'], ifi) + nest(A['tunnel'], *tunnel_attrs(spec)))


def dump(g, ifi):
    return [decode(c, a) for c, a in g.request(CMD['tunnel_get'], u32(A['ifindex'], ifi), dump=True)]


def dev_get(g, ifi):
    return decode(*g.request(CMD['dev_get'], u32(A['ifindex'], ifi))[0])


def jline(f, obj):
    f.write(json.dumps(obj) + '\n')
    f.flush()


# ---- subcommands ----

def cmd_agent(cfg_path):
    cfg = json.load(open(cfg_path))
    port = cfg.get('port', 7600)
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.bind(('0.0.0.0', port))
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.bind(('::', port))
    ev = Genl().resolve()
    ev.subscribe()
    g = Genl().resolve()
    ifi = ifindex(cfg['ifname'])
    dev_set(g, ifi, s4.fileno(), s6.fileno(), cfg.get('idle_ms'))
    for spec in cfg.get('tunnels', []):
        tunnel_new(g, ifi, spec)
    events = open(cfg['events'], 'a')
    signals = open(cfg['signals'], 'a')
    open(cfg['ready'], 'w').write(str(os.getpid()))
    while True:
        r, _, _ = select.select([s4, s6, ev.sock], [], [])
        for s in r:
            if s is ev.sock:
                for e in ev.events():
                    e['time'] = time.monotonic()
                    jline(events, e)
            else:
                data, src = s.recvfrom(65536)
                jline(signals, {'from': f'{src[0]}:{src[1]}', 'hex': data.hex()})


def cmd_monitor(path):
    ev = Genl().resolve()
    ev.subscribe()
    out = open(path, 'a')
    print('monitoring', flush=True)
    while True:
        for e in ev.events():
            e['time'] = time.monotonic()
            jline(out, e)


def cmd_send(host, port, hexdata, count='1'):
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for _ in range(int(count)):
        s.sendto(bytes.fromhex(hexdata), (host, int(port)))


def cmd_spray(prefix16, port, count):
    """One datagram to each of COUNT addresses of PREFIX16 (like 100.66): misses for many VIPs."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(count)):
        s.sendto(b'\0', (f'{prefix16}.{i // 250}.{i % 250 + 1}', int(port)))


def cmd_flood(host, port, receiver, count):
    """Malformed data packets: short, reserved bits set, unknown receivers, bad tags."""
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    rx = int(receiver, 0)
    rnd = random.Random(7)
    for i in range(int(count)):
        kind = i % 5
        if kind == 0:  # too short for a data packet
            p = bytes([4]) + rnd.randbytes(rnd.randrange(0, 31))
        elif kind == 1:  # reserved bytes not zero
            p = bytes([4, 1, 0, 0]) + struct.pack('<IQ', rx, i) + rnd.randbytes(40)
        elif kind == 2:  # unknown receiver
            p = bytes([4, 0, 0, 0]) + struct.pack('<IQ', rnd.randrange(1 << 32) | 0x80000000, i) + rnd.randbytes(60)
        elif kind == 3:  # the right receiver, a forged tag
            p = bytes([4, 0, 0, 0]) + struct.pack('<IQ', rx, rnd.randrange(1 << 63)) + rnd.randbytes(rnd.randrange(16, 1400))
        else:  # counter u64::MAX
            p = bytes([4, 0, 0, 0]) + struct.pack('<IQ', rx, (1 << 64) - 1) + rnd.randbytes(48)
        s.sendto(p, (host, int(port)))


def cmd_replay(ifname_out, host, port, vip):
    """Pings `vip` and captures the data packet that leaves on ifname_out (AF_PACKET) for
    host:port, then sends its payload again, twice, from an ephemeral port: the receiver must
    drop both (replays) and must not roam to that port."""
    import subprocess
    # Outgoing packets reach only ETH_P_ALL taps.
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
    cap.bind((ifname_out, 3))
    cap.settimeout(10)
    subprocess.run(['ping', '-c', '1', '-W', '5', vip], check=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        pkt, addr = cap.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING or addr[1] != 0x0800:
            continue
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != 17:
            continue
        dport = struct.unpack_from('!H', pkt, ihl + 2)[0]
        payload = pkt[ihl + 8:]
        if dport == int(port) and payload[:1] == b'\x04':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(payload, (host, int(port)))
            s.sendto(payload, (host, int(port)))
            print('replayed counter', struct.unpack_from('<Q', payload, 8)[0], flush=True)
            return
    fail('no data packet captured')


def pattern(n):
    b = bytes(i % 251 for i in range(251)) * 64
    out = bytearray()
    while len(out) < n:
        out += b
    return bytes(out[:n])


def cmd_tcp_sink(addr, port, ready):
    import hashlib
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(1)
    open(ready, 'w').write('1')
    c, _ = s.accept()
    h, n = hashlib.md5(), 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
    print(h.hexdigest(), n, flush=True)


def cmd_tcp_send(addr, port, nbytes):
    import hashlib
    data = pattern(int(nbytes))
    s = socket.create_connection((addr, int(port)), timeout=120)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(hashlib.md5(data).hexdigest(), len(data), flush=True)


def expect_error(what, fn, want_errno, want_msg=None):
    try:
        fn()
    except NlError as e:
        if e.errno != want_errno:
            fail(f'{what}: errno {errno.errorcode.get(e.errno)}, wanted {errno.errorcode.get(want_errno)} ({e})')
        if want_msg is not None and (e.msg is None or want_msg not in e.msg):
            fail(f'{what}: extack {e.msg!r}, wanted {want_msg!r}')
        print(f'ok   {what}: {errno.errorcode.get(e.errno)} {e.msg!r}'
              + (f' miss-type={e.miss_type}' if e.miss_type else '') + (f' offs={e.offs}' if e.offs else ''))
        return
    fail(f'{what}: succeeded, wanted {errno.errorcode.get(want_errno)}')


def cmd_fuzz(ifname):
    g = Genl().resolve()
    ifi = ifindex(ifname)
    key = '11' * 32
    good = dict(local_id=0x7777, remote_id=0x8888, vip4='100.64.9.9', endpoint='10.9.0.9:7600', send_key=key,
                recv_key=key)
    ifa = u32(A['ifindex'], ifi)

    def tnew(spec, **kw):
        return lambda: tunnel_new(g, ifi, spec, **kw)

    expect_error('dev-get without ifindex', lambda: g.request(CMD['dev_get']), errno.EINVAL, 'missing ifindex')
    expect_error('dev-get unknown ifindex', lambda: dev_get(g, 999999), errno.ENODEV, 'no ntm device')
    expect_error('dev-get on lo', lambda: dev_get(g, ifindex('lo')), errno.ENODEV, 'no ntm device')
    expect_error('dev-get ifindex of 2 bytes', lambda: g.request(CMD['dev_get'], nla(A['ifindex'], b'\1\0')),
                 errno.EINVAL)
    expect_error('dev-get with an attribute of another op',
                 lambda: g.request(CMD['dev_get'], ifa + s32(A['sock_fd4'], 3)), errno.EINVAL)
    expect_error('unknown attribute type', lambda: g.request(CMD['dev_get'], ifa + u32(99, 1)), errno.EINVAL)
    expect_error('unknown command', lambda: g.request(42, ifa), errno.EOPNOTSUPP)
    expect_error('notification as a request', lambda: g.request(CMD['tunnel_destroyed_ntf'], ifa), errno.EOPNOTSUPP)
    expect_error('dev-set with nothing', lambda: g.request(CMD['dev_set'], ifa), errno.EINVAL, 'nothing to set')
    expect_error('dev-set idle timeout too large', lambda: dev_set(g, ifi, idle_ms=86400001), errno.ERANGE)
    expect_error('dev-set fd not open', lambda: dev_set(g, ifi, fd4=4000), errno.EBADF, 'not a socket')
    with open('/proc/self/status') as f:
        expect_error('dev-set fd of a file', lambda: dev_set(g, ifi, fd4=f.fileno()), errno.ENOTSOCK, 'not a socket')
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    expect_error('dev-set TCP socket', lambda: dev_set(g, ifi, fd4=t.fileno()), errno.EPROTONOSUPPORT,
                 'not a UDP socket')
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.bind(('::1', 0))
    expect_error('dev-set IPv6 socket as sock-fd4', lambda: dev_set(g, ifi, fd4=u6.fileno()), errno.EAFNOSUPPORT,
                 'not an IPv4 socket')
    dual = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(('::', 0))
    expect_error('dev-set dual-stack socket as sock-fd6', lambda: dev_set(g, ifi, fd6=dual.fileno()), errno.EINVAL,
                 'IPV6_V6ONLY')
    u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    expect_error('dev-set unbound socket', lambda: dev_set(g, ifi, fd4=u4.fileno()), errno.EINVAL, 'not bound')
    expect_error('dev-set sock-fd4 of 8 bytes', lambda: g.request(CMD['dev_set'], ifa + nla(A['sock_fd4'], b'\0' * 8)),
                 errno.EINVAL)
    expect_error('tunnel-new without tunnel', lambda: g.request(CMD['tunnel_new'], ifa), errno.EINVAL, 'missing tunnel')
    expect_error('tunnel-new nest without NLA_F_NESTED',
                 lambda: g.request(CMD['tunnel_new'], ifa + nest(A['tunnel'], *tunnel_attrs(good), flag=False)),
                 errno.EINVAL)
    for field, msg in (('local_id', 'missing local-id'), ('remote_id', 'missing remote-id'),
                       ('send_key', 'missing send-key'), ('recv_key', 'missing recv-key'),
                       ('endpoint', 'missing endpoint'), ('vip4', 'needs vip4 or vip6')):
        spec = dict(good)
        del spec[field]
        expect_error(f'tunnel-new without {field}', tnew(spec), errno.EINVAL, msg)
    expect_error('tunnel-new local-id 0', tnew(dict(good, local_id=0)), errno.ERANGE)
    expect_error('tunnel-new vip6 of 15 bytes', tnew(dict(good, raw={T['vip6']: '00' * 15})), errno.ERANGE)
    expect_error('tunnel-new send-key of 31 bytes', tnew(dict(good, send_key='11' * 31)), errno.ERANGE)
    expect_error('tunnel-new recv-key of 33 bytes', tnew(dict(good, recv_key='11' * 33)), errno.ERANGE)
    expect_error('tunnel-new endpoint-port 0', tnew(dict(good, endpoint='10.9.0.9:0')), errno.ERANGE)
    expect_error('tunnel-new label without NUL', tnew(dict(good, raw={T['label']: '41' * 8})), errno.EINVAL)
    expect_error('tunnel-new label too long', tnew(dict(good, label='x' * 300)), errno.EINVAL)
    expect_error('tunnel-new with idle-ms', tnew(dict(good, raw={T['idle_ms']: '00000000'})), errno.EINVAL,
                 'reported by the module')
    expect_error('tunnel-new with reason', tnew(dict(good, raw={T['reason']: '00000000'})), errno.EINVAL,
                 'reported by the module')
    expect_error('tunnel-new both endpoint families',
                 tnew(dict(good, raw={T['endpoint_ip6']: '20010db8' + '00' * 11 + '01'})), errno.EINVAL, 'not both')
    expect_error('tunnel-new vip4 0.0.0.0', tnew(dict(good, vip4='0.0.0.0')), errno.EINVAL, 'not a peer')
    expect_error('tunnel-new unknown nested type', tnew(dict(good, raw={'30': '00000000'})), errno.EINVAL)
    expect_error('tunnel-del unknown local-id',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345), cmd='tunnel_del'), errno.ENOENT,
                 'no tunnel with this local-id')
    expect_error('tunnel-del with a vip',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345, vip4='1.2.3.4'), cmd='tunnel_del'), errno.EINVAL,
                 'local-id only')
    expect_error('tunnel-del with a reported attribute',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345, raw={T['reason']: '00000000'}), cmd='tunnel_del'),
                 errno.EINVAL, 'reported by the module')
    expect_error('tunnel-get with a reported attribute',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345, raw={T['idle_ms']: '00000000'}), cmd='tunnel_get'),
                 errno.EINVAL, 'local-id only')
    expect_error('tunnel-keepalive unknown local-id',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345), cmd='tunnel_keepalive'), errno.ENOENT,
                 'no tunnel with this local-id')
    expect_error('tunnel-keepalive with a vip',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345, vip4='1.2.3.4'), cmd='tunnel_keepalive'),
                 errno.EINVAL, 'local-id only')
    expect_error('tunnel-keepalive without local-id',
                 lambda: tunnel_new(g, ifi, dict(), cmd='tunnel_keepalive'), errno.EINVAL,
                 'missing local-id')
    expect_error('tunnel-get unknown local-id',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345), cmd='tunnel_get'), errno.ENOENT)
    expect_error('tunnel-set with a key',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345, send_key=key, endpoint='1.2.3.4:5'),
                                    cmd='tunnel_set'), errno.EINVAL, 'changes only the endpoint')
    expect_error('tunnel-set without endpoint',
                 lambda: tunnel_new(g, ifi, dict(local_id=0x12345), cmd='tunnel_set'), errno.EINVAL, 'missing endpoint')
    expect_error('tunnel-get dump without ifindex', lambda: g.request(CMD['tunnel_get'], dump=True), errno.EINVAL)
    # A tunnel, then another one to another VIP with the same local-id.
    tunnel_new(g, ifi, good)
    expect_error('tunnel-new local-id of another peer', tnew(dict(good, vip4='100.64.9.10')), errno.EEXIST,
                 'local-id is in use')
    for what, spec in (('its own local-id', good), ('another local-id', dict(good, local_id=0x7778)),
                       ('only the send-key', dict(good, local_id=0x7778, recv_key='44' * 32))):
        expect_error(f'tunnel-new replacing a tunnel with its keys ({what})', tnew(spec), errno.EEXIST,
                     'needs new keys')
    tunnel_new(g, ifi, dict(good, local_id=0x7778, send_key='33' * 32, recv_key='44' * 32))
    got = [t['tunnel']['local_id'] for t in dump(g, ifi) if t['tunnel'].get('vip4') == good['vip4']]
    if got != [0x7778]:
        fail(f'a replacement with new keys: tunnels {got} to the VIP, wanted [0x7778]')
    print('ok   tunnel-new with new keys replaced the tunnel to the same VIP')
    tunnel_new(g, ifi, dict(local_id=0x7778), cmd='tunnel_del')
    # Random garbage in the nest: any errno is fine, the kernel must stay clean.
    rnd = random.Random(1)
    for i in range(300):
        junk = b''.join(nla(rnd.randrange(0, 20), rnd.randbytes(rnd.choice([0, 1, 2, 4, 8, 15, 16, 32, 33])))
                        for _ in range(rnd.randrange(0, 6)))
        try:
            g.request(rnd.choice([1, 2, 3, 4, 5, 6]), ifa + nest(A['tunnel'], junk, flag=rnd.random() < 0.8))
        except NlError:
            pass
        try:
            g.request(rnd.randrange(0, 12), rnd.randbytes(rnd.randrange(0, 64)))
        except NlError:
            pass
    print('ok   300 random requests answered')


def cmd_expect_eperm(ifname):
    g = Genl().resolve()
    ifi = ifindex(ifname)
    expect_error('unprivileged dev-get', lambda: dev_get(g, ifi), errno.EPERM)
    expect_error('unprivileged dump', lambda: dump(g, ifi), errno.EPERM)
    expect_error('unprivileged tunnel-del', lambda: tunnel_new(g, ifi, dict(local_id=1), cmd='tunnel_del'), errno.EPERM)
    try:
        g.subscribe()
    except OSError as e:
        if e.errno != errno.EPERM:
            fail(f'unprivileged subscribe: {e}')
        print('ok   unprivileged subscribe to events: EPERM')
        return
    fail('unprivileged subscribe succeeded')


def cmd_flood_requests(ifname, count):
    g = Genl().resolve()
    ifi = ifindex(ifname)
    n = int(count)
    key = '22' * 32
    for i in range(n):
        dev_get(g, ifi)
        spec = dict(local_id=0x100000 + i, remote_id=i, vip4=f'100.65.{i // 250}.{i % 250 + 1}',
                    endpoint='10.9.0.99:7600', send_key=key, recv_key=key)
        tunnel_new(g, ifi, spec)
    got = [t for t in dump(g, ifi) if t['tunnel']['local_id'] >= 0x100000]
    if len(got) != n:
        fail(f'dump after {n} tunnel-new: {len(got)} tunnels')
    for i in range(n):
        tunnel_new(g, ifi, dict(local_id=0x100000 + i), cmd='tunnel_del')
    print(f'ok   {n} dev-get + tunnel-new, a dump of {len(got)} (resumed across messages), {n} tunnel-del')


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == 'agent':
        cmd_agent(*args)
    elif cmd == 'monitor':
        cmd_monitor(*args)
    elif cmd == 'dev-get':
        print(json.dumps(dev_get(Genl().resolve(), ifindex(args[0]))))
    elif cmd == 'dev-set':
        kv = dict(a.split('=', 1) for a in args[1:])
        dev_set(Genl().resolve(), ifindex(args[0]), fd4=int(kv['fd4']) if 'fd4' in kv else None,
                fd6=int(kv['fd6']) if 'fd6' in kv else None, idle_ms=int(kv['idle']) if 'idle' in kv else None)
    elif cmd == 'dump':
        print(json.dumps(dump(Genl().resolve(), ifindex(args[0]))))
    elif cmd in ('tunnel-new', 'tunnel-set'):
        tunnel_new(Genl().resolve(), ifindex(args[0]), json.loads(args[1]), cmd=cmd.replace('-', '_'))
    elif cmd == 'tunnel-del':
        tunnel_new(Genl().resolve(), ifindex(args[0]), dict(local_id=int(args[1], 0)), cmd='tunnel_del')
    elif cmd == 'keepalive':
        g, ifa = Genl().resolve(), u32(A['ifindex'], ifindex(args[0]))
        if len(args) > 1:
            g.request(CMD['tunnel_keepalive'], ifa + nest(A['tunnel'], *tunnel_attrs(dict(local_id=int(args[1], 0)))))
        else:
            g.request(CMD['tunnel_keepalive'], ifa)
    elif cmd == 'tcp-sink':
        cmd_tcp_sink(*args)
    elif cmd == 'tcp-send':
        cmd_tcp_send(*args)
    elif cmd == 'send':
        cmd_send(*args)
    elif cmd == 'spray':
        cmd_spray(*args)
    elif cmd == 'flood':
        cmd_flood(*args)
    elif cmd == 'replay':
        cmd_replay(*args)
    elif cmd == 'fuzz':
        cmd_fuzz(*args)
    elif cmd == 'expect-eperm':
        cmd_expect_eperm(*args)
    elif cmd == 'flood-requests':
        cmd_flood_requests(*args)
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == '__main__':
    try:
        main()
    except NlError as e:
        print('FAIL netlink:', e, flush=True)
        sys.exit(1)
