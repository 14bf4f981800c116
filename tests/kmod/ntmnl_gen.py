# SPDX-License-Identifier: GPL-2.0
# generated from kmod/spec/ntm.yaml by scripts/gen-netlink; do not edit
"""The numbers of the `ntm` generic netlink family, for ntmnl.py."""

FAMILY_NAME = 'ntm'
FAMILY_VERSION = 1
MCGRP_EVENTS = 'events'
KEY_LEN = 32
LABEL_MAX_LEN = 255

# commands and notifications, by name (dashes as underscores)
CMD = {
    'dev_set': 1,
    'dev_get': 2,
    'tunnel_new': 3,
    'tunnel_set': 4,
    'tunnel_get': 5,
    'tunnel_del': 6,
    'tunnel_destroyed_ntf': 7,
    'tunnel_miss_ntf': 8,
    'endpoint_changed_ntf': 9,
    'tunnel_keepalive': 10,
}

# attribute numbers of each set, by name (dashes as underscores)
ATTRS = {
    'tunnel': {
        'local_id': 1,
        'remote_id': 2,
        'vip4': 3,
        'vip6': 4,
        'endpoint_ip4': 5,
        'endpoint_ip6': 6,
        'endpoint_port': 7,
        'send_key': 8,
        'recv_key': 9,
        'label': 10,
        'idle_ms': 11,
        'tx_packets': 12,
        'tx_bytes': 13,
        'rx_packets': 14,
        'rx_bytes': 15,
        'rx_dropped': 16,
        'reason': 17,
    },
    'ntm': {
        'ifindex': 1,
        'sock_fd4': 2,
        'sock_fd6': 3,
        'idle_timeout_ms': 4,
        'tunnel': 5,
        'miss_vip4': 6,
        'miss_vip6': 7,
        'rx_orphans': 8,
    },
}

# how each attribute reads: u32, s32, u16be, u32be, uint, ipv4, ipv6, binary, string,
# or nest (its set in NESTS)
TYPES = {
    'tunnel': {
        'local_id': 'u32',
        'remote_id': 'u32',
        'vip4': 'ipv4',
        'vip6': 'ipv6',
        'endpoint_ip4': 'ipv4',
        'endpoint_ip6': 'ipv6',
        'endpoint_port': 'u16be',
        'send_key': 'binary',
        'recv_key': 'binary',
        'label': 'string',
        'idle_ms': 'u32',
        'tx_packets': 'uint',
        'tx_bytes': 'uint',
        'rx_packets': 'uint',
        'rx_bytes': 'uint',
        'rx_dropped': 'uint',
        'reason': 'u32',
    },
    'ntm': {
        'ifindex': 'u32',
        'sock_fd4': 's32',
        'sock_fd6': 's32',
        'idle_timeout_ms': 'u32',
        'tunnel': 'nest',
        'miss_vip4': 'ipv4',
        'miss_vip6': 'ipv6',
        'rx_orphans': 'uint',
    },
}

# the set of each nest
NESTS = {
    'ntm': {'tunnel': 'tunnel'},
}

# destroy-reason: names by value
DESTROY_REASON = {
    0: 'idle',
    1: 'deleted',
    2: 'device-down',
    3: 'error',
}
