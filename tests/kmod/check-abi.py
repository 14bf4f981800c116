#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Checks that the numbers of the `ntm` family agree everywhere: kmod/spec/ntm.yaml (the truth:
attributes and commands in spec order from 1, enums from 0), the C shim (kmod/ntm_shim.h), the
module's Rust (kmod/netlink.rs) and userspace (proto/src/netlink.rs); and that the golden
vectors in kmod/crypto.rs are the bytes of tests/golden/. Runs anywhere (no kernel needed)."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
errors = []


def names(section_start, section_end, text):
    s = text[text.index(section_start):]
    s = s[:s.index(section_end)] if section_end in s else s
    return [l.strip()[len('name: '):] for l in s.splitlines() if l.strip().startswith('name: ')]


spec = (ROOT / 'kmod/spec/ntm.yaml').read_text()
ops = names('operations:', 'mcast-groups:', spec)
tunnel = names('    name: tunnel\n    attributes:', '  -\n    name: ntm\n', spec)[1:]
ntm = names('    name: ntm\n    attributes:', 'operations:', spec)[1:]
reasons = names('    name: destroy-reason', 'attribute-sets:', spec)[1:]


def ident(n):
    return n.upper().replace('-', '_')


def want(kind, items, base):
    return {ident(n): i + base for i, n in enumerate(items)}


# C header: enum members in order.
h = (ROOT / 'kmod/ntm_shim.h').read_text()


def c_enum(prefix):
    vals, cur = {}, -1
    for m in re.finditer(r'\b(' + prefix + r'[A-Z0-9_]+)\b(?:\s*=\s*(\d+))?\s*,', h):
        name, v = m.group(1), m.group(2)
        if name.startswith('__'):
            continue
        cur = int(v) if v is not None else cur + 1
        vals[name[len(prefix):]] = cur
    return vals


def check(what, got, expected):
    got = {k: v for k, v in got.items() if not k.endswith('MAX')}
    if got != expected:
        errors.append(f'{what}: {got} != spec {expected}')


check('ntm_shim.h NTM_CMD_', c_enum('NTM_CMD_'), want('cmd', ops, 1))
check('ntm_shim.h NTM_A_TUNNEL_', c_enum('NTM_A_TUNNEL_'), want('tunnel', tunnel, 1))
check('ntm_shim.h NTM_A_', {k: v for k, v in c_enum('NTM_A_').items() if not k.startswith('TUNNEL_')},
      want('ntm', ntm, 1))
check('ntm_shim.h NTM_DESTROY_REASON_', c_enum('NTM_DESTROY_REASON_'), want('reason', reasons, 0))


def rust_mod(path, mod):
    text = (ROOT / path).read_text()
    body = text[text.index(f'mod {mod} {{'):]
    body = body[:body.index('}')]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r'const ([A-Z0-9_]+): u\d+ = (\d+);', body)}


for path in ('kmod/netlink.rs', 'proto/src/netlink.rs'):
    check(f'{path} cmd', rust_mod(path, 'cmd'), want('cmd', ops, 1))
    check(f'{path} attr', rust_mod(path, 'attr'), want('ntm', ntm, 1))
    check(f'{path} tunnel', rust_mod(path, 'tunnel'), want('tunnel', tunnel, 1))
    text = (ROOT / path).read_text()
    enum = text[re.search(r'enum \w+ \{', text).start():]
    got = {ident(re.sub(r'(?<!^)([A-Z])', r'-\1', m.group(1))): int(m.group(2))
           for m in re.finditer(r'\b([A-Z][a-zA-Z]+) = (\d+),', enum[:enum.index('}')])}
    check(f'{path} destroy reason', got, want('reason', reasons, 0))

crypto = (ROOT / 'kmod/crypto.rs').read_text()
for n in (0, 1):
    vec = (ROOT / f'tests/golden/data-counter{n}.hex').read_text().strip()
    if f'"{vec}"' not in crypto:
        errors.append(f'kmod/crypto.rs lacks tests/golden/data-counter{n}.hex')

# The spec against the kernel's genetlink schema, where a kernel tree and jsonschema are at hand.
schema_note = 'schema not checked (no jsonschema or kernel tree)'
try:
    import glob
    import jsonschema
    import yaml
    schemas = sorted(glob.glob('/var/cache/ntm-kernel/*/linux/Documentation/netlink/genetlink.yaml'))
    if schemas:
        jsonschema.validate(yaml.safe_load(spec), yaml.safe_load(open(schemas[0])))
        schema_note = 'spec valid against genetlink.yaml'
except ImportError:
    pass
except Exception as e:  # jsonschema.ValidationError
    errors.append(f'kmod/spec/ntm.yaml does not validate against genetlink.yaml: {e}')

if errors:
    for e in errors:
        print('FAIL', e)
    sys.exit(1)
print(f'ok   ABI: {len(ops)} commands, {len(ntm)} + {len(tunnel)} attributes, {len(reasons)} reasons agree in the '
      'spec, ntm_shim.h, kmod/netlink.rs, proto/src/netlink.rs; golden vectors match; ' + schema_note)
