#!/usr/bin/python3
"""pty-answer.py: runs a command on a pseudo-terminal (its controlling
terminal, so hubfleet's --confirm prompt on /dev/tty reaches us) and answers
its prompts in turn.

usage: pty-answer.py LOG ANSWERS [HOOK] -- COMMAND...
  LOG      everything the command printed on the terminal
  ANSWERS  comma-separated answers, one per "Continue? [y/N]" prompt
  HOOK     a command run (argv split on spaces) before answering the first
           prompt; its exit status is printed to LOG
Exits with the command's status; 124 if it ran past 900 s; 125 when it
prompted more often than ANSWERS allows (the prompt is answered "n").
"""
import os
import pty
import select
import signal
import subprocess
import sys
import time

def main():
    argv = sys.argv[1:]
    sep = argv.index('--')
    log_path, answers = argv[0], [a for a in argv[1].split(',') if a]
    hook = argv[2].split() if sep > 2 else None
    cmd = argv[sep + 1:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    out = open(log_path, 'ab')
    buf, prompts, extra = b'', 0, False
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 1.0)
        if not r:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out.write(data)
        out.flush()
        buf = (buf + data)[-4096:]
        while b'Continue? [y/N]' in buf:
            buf = buf.split(b'Continue? [y/N]', 1)[1]
            if prompts == 0 and hook:
                rc = subprocess.call(hook)
                out.write(('\n[pty-answer: hook %s exited %d]\n' % (' '.join(hook), rc)).encode())
            ans = answers[prompts] if prompts < len(answers) else 'n'
            extra = extra or prompts >= len(answers)
            prompts += 1
            out.write(('[pty-answer: answered %s]\n' % ans).encode())
            os.write(fd, (ans + '\n').encode())
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        sys.exit(124)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    sys.exit(125 if extra else (rc if rc >= 0 else 128 - rc))

main()
