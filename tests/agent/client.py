#!/usr/bin/python3
"""client.py: a minimal hubfleet protocol client for the agent's tests (stdlib only).

As a module: Agent(argv) starts argv (the agent itself, or `ssh ... agent`),
reads hello, and request(op, args) returns (result, events).
As a program: client.py -- ARGV... reads one request per stdin line,
{"op": ..., "args": {...}}, and prints every frame it receives as a JSON line.
"""
import json
import os
import select
import struct
import subprocess
import sys
import time

MAX_FRAME = 1 << 20


class ProtocolError(Exception):
    pass


class Agent:
    def __init__(self, argv, stderr=None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, bufsize=0)
        self.next_id = 1
        self.buf = b''
        self.hello = self.read_frame(timeout=60)
        if self.hello.get('type') != 'hello':
            raise ProtocolError('expected hello, got %r' % self.hello)

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, msg):
        body = json.dumps(msg).encode()
        self.send_raw(struct.pack('>I', len(body)) + body)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError('no frame from the agent in time')
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if not r:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError('agent closed its output')
            self.buf += chunk

    def read_frame(self, timeout=600):
        deadline = time.monotonic() + timeout
        self._fill(4, deadline)
        (n,) = struct.unpack('>I', self.buf[:4])
        if n > MAX_FRAME:
            raise ProtocolError('frame of %d bytes' % n)
        self._fill(4 + n, deadline)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return json.loads(body)

    def request(self, op, args=None, timeout=900, on_event=None):
        rid = self.next_id
        self.next_id += 1
        msg = {'type': 'request', 'id': rid, 'op': op}
        if args is not None:
            msg['args'] = args
        self.send(msg)
        events = []
        while True:
            f = self.read_frame(timeout)
            if f.get('type') == 'event':
                events.append(f)
                if on_event:
                    on_event(f)
                continue
            if f.get('type') == 'result':
                if f.get('id') != rid:
                    raise ProtocolError('result for id %r, expected %d' % (f.get('id'), rid))
                return f, events
            raise ProtocolError('unexpected frame %r' % f)

    def close(self, timeout=30):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def main():
    argv = sys.argv[1:]
    if argv and argv[0] == '--':
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    a = Agent(argv)
    print(json.dumps(a.hello), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        res, _ = a.request(req['op'], req.get('args'),
                           on_event=lambda e: print(json.dumps(e), flush=True))
        print(json.dumps(res), flush=True)
    return a.close()


if __name__ == '__main__':
    sys.exit(main())
