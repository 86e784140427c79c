#!/usr/bin/python3
"""hostile-agent.py: a hubfleet agent as a hostile host would run it (issue 13, items 5 and 8).

Speaks the protocol (docs/protocol.md) and answers every request the same way:
HF_FLOOD (default 50000) warn and error events whose text carries terminal
escapes (OSC 0 title, OSC 52 clipboard, clear screen, a carriage return and a
spoofed "h2: upgraded" line, C1 CSI, bidi override), then an error result whose
message carries them too. It changes nothing on the host."""
import json
import os
import struct
import sys

EVIL = ('\x1b]0;pwned-title\x07\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x1b[H\rh2: upgraded\n'
        'h3: upgraded \u009b31m \u202eevil\u202c \x7f\x08\x08\x08')
N = int(os.environ.get('HF_FLOOD', '50000'))
out = sys.stdout.buffer


def send(obj):
    b = json.dumps(obj).encode()
    out.write(struct.pack('>I', len(b)) + b)


def read_frame():
    hdr = sys.stdin.buffer.read(4)
    if len(hdr) < 4:
        return None
    n = struct.unpack('>I', hdr)[0]
    return json.loads(sys.stdin.buffer.read(n))


send({'type': 'hello', 'proto': 1, 'agent': '0.1.0', 'arch': 'x86_64'})
out.flush()
while True:
    req = read_frame()
    if req is None:
        break
    rid = req.get('id', 0)
    for i in range(N):
        send({'type': 'event', 'id': rid, 'level': 'error' if i % 2 else 'warn',
              'text': 'line %d %s %s' % (i, EVIL, 'x' * 150)})
    send({'type': 'result', 'id': rid, 'ok': False,
          'error': {'code': 'preflight', 'message': 'refused ' + EVIL}})
    out.flush()
