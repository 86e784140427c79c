/* run.c: the agent's process runner: fork/execve of argv arrays (never a shell), output read
 * through pipes with poll and streamed line by line, a deadline that kills the child's group;
 * and the watchdog that runs under sudo (become) and kills the command when the agent dies. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_int.h"

int hf_run_nice;

/* Grace between SIGTERM and SIGKILL when the deadline passes. */
#define HF_RUN_KILL_GRACE_MS 3000
/* How long output is still read after the child exited (daemons it left
 * behind may keep the pipes open). */
#define HF_RUN_DRAIN_MS 1000

/* One output stream of the child being read: its pipe and the partial line. */
struct stream {
  int    fd;
  int    no;            /* 1 stdout, 2 stderr */
  char   line[HF_RUN_MAX_LINE + 1];
  size_t len;
  bool   cut;           /* current line passed the cap: the rest is skipped */
};

struct runstate {
  struct hf_run *r;
  size_t lines;
  size_t streamed;      /* bytes passed to on_line */
  char  *keep;          /* tail buffer, 2 * keep_max */
  size_t keep_len, keep_max;
};

static void keep_bytes(struct runstate *s, const char *p, size_t n) {
  /* Keep only the tail: when the buffer fills, drop its older half. */
  if (n > s->keep_max) { p += n - s->keep_max; n = s->keep_max; }
  if (s->keep_len + n > 2 * s->keep_max) {
    size_t drop = s->keep_len + n - s->keep_max;
    if (drop > s->keep_len) drop = s->keep_len;
    memmove(s->keep, s->keep + drop, s->keep_len - drop);
    s->keep_len -= drop;
  }
  memcpy(s->keep + s->keep_len, p, n);
  s->keep_len += n;
}

static void line_done(struct runstate *s, struct stream *st) {
  st->line[st->len] = '\0';
  keep_bytes(s, st->line, st->len);
  keep_bytes(s, "\n", 1);
  if (s->r->on_line != NULL) {
    if (s->lines < HF_RUN_MAX_LINES && s->streamed < HF_RUN_MAX_STREAM) {
      s->r->on_line(s->r->ud, st->no, st->line);
      s->streamed += st->len + 1;
    } else {
      s->r->lines_dropped++;
    }
  }
  s->lines++;
  st->len = 0;
  st->cut = false;
}

static void feed(struct runstate *s, struct stream *st, const char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    if (p[i] == '\n') { line_done(s, st); continue; }
    if (st->len < HF_RUN_MAX_LINE) st->line[st->len++] = p[i];
    else st->cut = true;
  }
}

/* The child's whole environment: nothing inherited but HOME, so a stray
 * PYTHONPATH, PIP_* or LD_* of the login session cannot change what runs. */
static void build_env(const struct hf_run *r, char *envbuf[], size_t n, char path[], size_t pathlen,
                      char home[], size_t homelen) {
  const char *h = getenv("HOME");
  size_t i = 0;
  if (r->path_prefix != NULL)
    snprintf(path, pathlen, "PATH=%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", r->path_prefix);
  else
    snprintf(path, pathlen, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  envbuf[i++] = path;
  if (h != NULL && h[0] == '/') {
    snprintf(home, homelen, "HOME=%s", h);
    envbuf[i++] = home;
  }
  envbuf[i++] = (char *)"LANG=C.UTF-8";
  envbuf[i++] = (char *)"LC_ALL=C.UTF-8";
  envbuf[i++] = (char *)"PIP_DISABLE_PIP_VERSION_CHECK=1";
  envbuf[i++] = (char *)"PIP_NO_INPUT=1";
  envbuf[i++] = (char *)"PIP_CONFIG_FILE=/dev/null"; /* no user or site pip config */
  envbuf[i++] = (char *)"PYTHONNOUSERSITE=1";
  envbuf[i++] = (char *)"PYTHONDONTWRITEBYTECODE=1";
  for (size_t k = 0; r->extra_env != NULL && r->extra_env[k] != NULL && i + 1 < n; k++) envbuf[i++] = r->extra_env[k];
  envbuf[i] = NULL;
}

static void child(const struct hf_run *r, int out_w, int err_w, int exec_w, char *const envp[]) {
  int devnull, e;
  /* Own process group, so the deadline can kill pip's children too; and die
   * with the agent, so a killed agent does not leave an installer running
   * beside the rollback a new agent starts. */
  if (hf_run_nice > 0 && !r->foreground) {
    /* Work ahead of the host's stage: below the serving hub (and, on a machine of many hubs,
     * below the steps inside another hub's downtime). Nice ranks processes only inside one
     * scheduler autogroup (one per session, Linux's default), and the hub and other agents are
     * in other sessions: a session of its own (also its own process group, as below) whose
     * autogroup is niced too. The priority is only ever lowered, never raised. */
    int cur;
    char v[16];
    setsid();
    errno = 0;
    cur = getpriority(PRIO_PROCESS, 0);
    if (errno == 0 && cur < hf_run_nice) (void)!setpriority(PRIO_PROCESS, 0, hf_run_nice);
    int afd = open("/proc/self/autogroup", O_WRONLY | O_CLOEXEC);
    if (afd >= 0) {
      int n = snprintf(v, sizeof v, "%d", hf_run_nice);
      (void)!write(afd, v, (size_t)n);
      close(afd);
    }
  } else setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* The agent ignores these; ignored dispositions survive execve. */
  signal(SIGPIPE, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
  devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) { dup2(devnull, 0); close(devnull); }
  dup2(r->stdout_fd > 0 ? r->stdout_fd : out_w, 1);
  dup2(err_w, 2);
  if (r->cwd != NULL && chdir(r->cwd) != 0) goto fail;
  execve(r->argv[0], r->argv, envp);
fail:
  e = errno;
  (void)!write(exec_w, &e, sizeof e);
  _exit(127);
}

int hf_run_exec(struct hf_run *r) {
  int po[2] = {-1, -1}, pe[2] = {-1, -1}, px[2] = {-1, -1};
  struct stream so, se;
  struct runstate s;
  char *envp[24], path[PATH_MAX + 128], home[PATH_MAX + 8];
  pid_t pid;
  int64_t deadline, killat = 0, drain_until = 0;
  int rc = 0, wst = 0, exec_errno = 0, open_streams;
  bool termed = false, reaped = false;

  r->out = NULL; r->out_len = 0; r->status = -1; r->timed_out = false; r->lines_dropped = 0;
  if (r->argv == NULL || r->argv[0] == NULL || r->argv[0][0] != '/') return HF_EINVAL;
  memset(&s, 0, sizeof s);
  s.r = r;
  s.keep_max = r->keep_max ? r->keep_max : 16384;
  if ((s.keep = malloc(2 * s.keep_max + 1)) == NULL) return HF_ENOMEM;
  build_env(r, envp, 24, path, sizeof path, home, sizeof home);

  if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0 || pipe2(px, O_CLOEXEC) != 0) {
    rc = HF_EEXEC;
    goto out;
  }
  pid = fork();
  if (pid < 0) { rc = HF_EEXEC; goto out; }
  if (pid == 0) child(r, po[1], pe[1], px[1], envp);
  /* Also from the parent: no window where a kill misses the group. A niced child makes its own
   * session instead (setsid fails in a group leader); it is done before its execve, which the
   * exec pipe below waits for, so no kill can come before it either. */
  if (hf_run_nice <= 0 || r->foreground) setpgid(pid, pid);
  close(po[1]); close(pe[1]); close(px[1]);
  po[1] = pe[1] = px[1] = -1;

  /* The exec pipe closes on a successful execve; 4 bytes mean it failed. */
  {
    ssize_t n;
    do n = read(px[0], &exec_errno, sizeof exec_errno); while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof exec_errno) exec_errno = 0;
  }

  memset(&so, 0, sizeof so); so.fd = po[0]; so.no = 1;
  memset(&se, 0, sizeof se); se.fd = pe[0]; se.no = 2;
  fcntl(so.fd, F_SETFL, O_NONBLOCK);
  fcntl(se.fd, F_SETFL, O_NONBLOCK);
  open_streams = 2;
  deadline = r->timeout_ms > 0 ? hf__now_ms() + r->timeout_ms : 0;

  /* Bounded: every pass waits at most 200 ms. The child is reaped as soon as
   * it exits; its output is then drained for at most HF_RUN_DRAIN_MS, since
   * a daemon it started (an operator's start command) may hold the pipes
   * forever and must neither hang the runner nor be killed by it. After the
   * child is reaped its pid may be reused: no signal is sent any more. */
  while (open_streams > 0) {
    struct pollfd pfd[2];
    struct stream *sv[2];
    int np = 0, wait_ms = 200, i, pr;
    int64_t now = hf__now_ms();
    if (!reaped) {
      pid_t w = waitpid(pid, &wst, WNOHANG);
      if (w == pid) { reaped = true; drain_until = now + HF_RUN_DRAIN_MS; }
    }
    if (reaped && now >= drain_until) break;
    if (!reaped && deadline > 0 && !termed && now >= deadline) {
      r->timed_out = true;
      termed = true;
      kill(-pid, SIGTERM);
      killat = now + HF_RUN_KILL_GRACE_MS;
    }
    if (!reaped && termed && killat > 0 && now >= killat) {
      kill(-pid, SIGKILL);
      killat = 0;
    }
    if (so.fd >= 0) { pfd[np].fd = so.fd; pfd[np].events = POLLIN; sv[np++] = &so; }
    if (se.fd >= 0) { pfd[np].fd = se.fd; pfd[np].events = POLLIN; sv[np++] = &se; }
    pr = poll(pfd, (nfds_t)np, wait_ms);
    if (pr < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (i = 0; i < np; i++) {
      char buf[8192];
      ssize_t n;
      if (pfd[i].revents == 0) continue;
      n = read(sv[i]->fd, buf, sizeof buf);
      if (n > 0) { feed(&s, sv[i], buf, (size_t)n); continue; }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (sv[i]->len > 0) line_done(&s, sv[i]);
      close(sv[i]->fd);
      sv[i]->fd = -1;
      open_streams--;
    }
  }
  if (so.fd >= 0) { if (so.len) line_done(&s, &so); close(so.fd); so.fd = -1; }
  if (se.fd >= 0) { if (se.len) line_done(&s, &se); close(se.fd); se.fd = -1; }
  po[0] = pe[0] = -1;

  /* Pipes closed but the child still running (it closed them itself): wait
   * for it, still under the deadline. */
  while (!reaped) {
    pid_t w = waitpid(pid, &wst, WNOHANG);
    int64_t now = hf__now_ms();
    if (w == pid) { reaped = true; break; }
    if (w < 0 && errno != EINTR) { wst = 0; break; }
    if (deadline > 0 && !termed && now >= deadline) {
      r->timed_out = true;
      termed = true;
      kill(-pid, SIGTERM);
      killat = now + HF_RUN_KILL_GRACE_MS;
    }
    if (termed && killat > 0 && now >= killat) {
      kill(-pid, SIGKILL);
      killat = 0;
    }
    usleep(20000);
  }
  if (WIFEXITED(wst)) r->status = WEXITSTATUS(wst);
  else if (WIFSIGNALED(wst)) r->status = 128 + WTERMSIG(wst);
  if (exec_errno != 0) { r->status = exec_errno; rc = HF_EEXEC; }
  else if (r->timed_out) rc = HF_ETIMEDOUT;
  else if (r->status != 0) rc = HF_ECMD;

out:
  if (po[0] >= 0) close(po[0]);
  if (po[1] >= 0) close(po[1]);
  if (pe[0] >= 0) close(pe[0]);
  if (pe[1] >= 0) close(pe[1]);
  if (px[0] >= 0) close(px[0]);
  if (px[1] >= 0) close(px[1]);
  s.keep[s.keep_len] = '\0';
  r->out = s.keep;
  r->out_len = s.keep_len;
  return rc;
}

void hf_run_free(struct hf_run *r) {
  if (r == NULL) return;
  free(r->out);
  r->out = NULL;
  r->out_len = 0;
}

/* ---- the become watchdog ------------------------------------------------------------ */

/* Field 22 of /proc/PID/stat (start time in clock ticks since boot), or 0. */
static unsigned long long proc_start(pid_t pid) {
  char path[64], buf[1024], *p;
  unsigned long long v = 0;
  ssize_t n;
  int fd, field;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return 0;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  /* The command name may hold anything: count fields after its last ')'. */
  if ((p = strrchr(buf, ')')) == NULL) return 0;
  for (field = 2; *p && field < 22; p++)
    if (*p == ' ') field++;
  if (field == 22) v = strtoull(p, NULL, 10);
  return v;
}

unsigned long long hf__self_start(void) {
  return proc_start(getpid());
}

/* SIGKILL to every process whose parent is this one (descendants that left
 * the command's group were reparented here: PR_SET_CHILD_SUBREAPER). */
static void kill_reparented(void) {
  char path[64], buf[512], *p;
  pid_t me = getpid();
  for (int round = 0; round < 2; round++) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    if (d == NULL) return;
    while ((e = readdir(d)) != NULL) {
      int fd;
      ssize_t n;
      if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
      snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
      if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) continue;
      n = read(fd, buf, sizeof buf - 1);
      close(fd);
      if (n <= 0) continue;
      buf[n] = '\0';
      if ((p = strrchr(buf, ')')) == NULL || strlen(p) < 5) continue;
      if (atoi(p + 4) == (int)me) kill(atoi(e->d_name), SIGKILL); /* ") S PPID" */
    }
    closedir(d);
  }
}

static volatile sig_atomic_t watch_signal;
static void on_watch_signal(int sig) { watch_signal = sig; }

int hf_watchdog_main(int argc, char **argv) {
  pid_t agent, child, w;
  unsigned long long start;
  int64_t kill_at = 0, gone_since = 0;
  int st = 0, status = -1;
  struct sigaction sa;

  if (argc < 6 || strcmp(argv[4], "--") != 0 || argv[5][0] != '/') {
    fprintf(stderr, "hubfleet-agent --watch: usage: --watch AGENT_PID AGENT_START -- /ABS/COMMAND [ARGS...]\n");
    return 2;
  }
  agent = (pid_t)atoi(argv[2]);
  start = strtoull(argv[3], NULL, 10);
  /* Whatever the command leaves behind is reparented here, not to init. */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_watch_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  child = fork();
  if (child < 0) { perror("hubfleet-agent --watch: fork"); return 127; }
  if (child == 0) {
    setpgid(0, 0);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    execv(argv[5], argv + 5);
    fprintf(stderr, "hubfleet-agent --watch: %s: %s\n", argv[5], strerror(errno));
    _exit(127);
  }
  setpgid(child, child);
  for (;;) {
    while ((w = waitpid(-1, &st, WNOHANG)) > 0)
      if (w == child) status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    if (status >= 0 && kill_at == 0) return status;
    if (status >= 0 && w < 0) break; /* killed on purpose, every child reaped */
    /* The agent that asked for this is gone (its pid dead or reused): nothing
     * may keep changing the hub behind the next agent's back. */
    if (kill_at == 0 && (watch_signal || proc_start(agent) != start || start == 0)) {
      if (!watch_signal) gone_since = hf__now_ms();
      kill(-child, SIGTERM);
      kill_at = hf__now_ms() + (watch_signal ? HF_RUN_KILL_GRACE_MS : 1000);
    }
    if (kill_at && hf__now_ms() >= kill_at) {
      kill(-child, SIGKILL);
      kill_reparented();
      kill_at = hf__now_ms() + 3600 * 1000; /* once */
    }
    if (status >= 0 && kill_at) {
      kill(-child, SIGKILL);
      kill_reparented();
      if (w < 0) break;
    }
    usleep(50000);
  }
  if (gone_since) fprintf(stderr, "hubfleet-agent --watch: agent %d is gone: killed %s after %lld ms\n", (int)agent,
                          argv[5], (long long)(hf__now_ms() - gone_since));
  return status >= 0 ? status : 137;
}
