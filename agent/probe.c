/* probe.c: the users' probe. From the hub's stop until it is healthy again (and HF_PROBE_TAIL_MS
 * after), a process of its own requests every running single-user server through the proxy every
 * 100 ms and measures the longest time one did not answer: the users' downtime
 * (docs/users-downtime.md). It ends with the agent that started it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* closefrom */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "probe.h"

#define HF_PROBE_INTERVAL_MS 100              /* between two requests to one server */
#define HF_PROBE_TIMEOUT_MS  2000             /* one request; longer counts as not answered */
#define HF_PROBE_TAIL_MS     500              /* probing goes on this long after health's verdict */
#define HF_PROBE_MAX_MS      (30 * 60 * 1000) /* a probe never runs longer ("expired") */
#define HF_PROBE_WAIT_MS     (HF_PROBE_TAIL_MS + HF_PROBE_TIMEOUT_MS + 2500) /* health waits for the figures */

/* The probe's files in the state directory, per rollout: its figures
 * (probe-R.json), the lock it holds while it runs (probe-R.lock: free means
 * no probe runs, whatever the figures say) and health's word to finish
 * (probe-R.stop). */
static int probe_path(const struct hf_req *r, const char *ext, char *out, size_t outlen) {
  return hf__pathf(out, outlen, "%s/probe-%s.%s", r->hub.state_dir, r->rollout, ext);
}

/* ---- the probe process ------------------------------------------------------------------------ */

struct slot {
  const struct hf_user_server *srv;
  const char *origin;
  pthread_t th;
  int64_t probes, failed, down_ms, down_since; /* down_since: when the current outage began, 0 when up */
  char last[48];
};

static int stop_all;                          /* read and written atomically */
static volatile sig_atomic_t probe_signal;
static void on_probe_signal(int sig) { probe_signal = sig; }

/* Did the single-user server itself answer? 2xx, its own 401/403, or a
 * redirect that is not the hub's (a route that is gone makes the hub send
 * the user to /hub/...). A proxy 503, a refused connection or a timeout: no. */
static bool answered(int rc, int status, const char *location) {
  if (rc != 0) return false;
  if (status >= 200 && status < 300) return true;
  if (status == 401 || status == 403) return true;
  if (status >= 300 && status < 400) return strstr(location, "/hub/") == NULL;
  return false;
}

static void *server_loop(void *arg) {
  struct slot *s = arg;
  int64_t next = hf__now_ms();
  while (!__atomic_load_n(&stop_all, __ATOMIC_ACQUIRE)) {
    struct hf_http_resp resp;
    char loc[256];
    int64_t sent = hf__now_ms(), now;
    int rc = hf_http_get_loc(s->origin, s->srv->path, HF_PROBE_TIMEOUT_MS, &resp, loc, sizeof loc);
    int64_t got = hf__now_ms();
    bool up = answered(rc, resp.status, loc);
    if (rc == 0) snprintf(s->last, sizeof s->last, "HTTP %d", resp.status);
    else snprintf(s->last, sizeof s->last, "%s", hf_err_code(rc));
    hf_http_resp_free(&resp);
    s->probes++;
    if (up) {
      if (s->down_since) {
        if (got - s->down_since > s->down_ms) s->down_ms = got - s->down_since;
        s->down_since = 0;
      }
    } else {
      s->failed++;
      if (!s->down_since) s->down_since = sent;
    }
    next += HF_PROBE_INTERVAL_MS;
    now = hf__now_ms();
    if (next < now) next = now;
    while (now < next && !__atomic_load_n(&stop_all, __ATOMIC_ACQUIRE)) {
      usleep((useconds_t)((next - now > 20 ? 20 : next - now) * 1000));
      now = hf__now_ms();
    }
  }
  return NULL;
}

/* The figures as a JSON object (new). */
static json_t *figures(const struct hf_user_servers *us, struct slot *sl, int n, const char *state,
                       const char *why, const char *started, int64_t t0) {
  json_t *o = json_object(), *per = json_array();
  int64_t probes = 0, failed = 0, down = 0;
  char now[40];
  int i;
  for (i = 0; i < n; i++) {
    json_t *p = json_object();
    probes += sl[i].probes;
    failed += sl[i].failed;
    if (sl[i].down_ms > down) down = sl[i].down_ms;
    json_object_set_new(p, "server", json_string(sl[i].srv->label));
    json_object_set_new(p, "probes", json_integer(sl[i].probes));
    json_object_set_new(p, "failed", json_integer(sl[i].failed));
    json_object_set_new(p, "down_ms", json_integer(sl[i].down_ms));
    json_object_set_new(p, "down_at_end", json_boolean(sl[i].down_since != 0));
    json_object_set_new(p, "last", json_string(sl[i].last));
    json_array_append_new(per, p);
  }
  hf__utc_now(now, sizeof now);
  json_object_set_new(o, "state", json_string(state));
  if (why) json_object_set_new(o, "why", json_string(why));
  json_object_set_new(o, "pid", json_integer(getpid()));
  json_object_set_new(o, "started", json_string(started));
  json_object_set_new(o, "updated", json_string(now));
  json_object_set_new(o, "duration_ms", json_integer(hf__now_ms() - t0));
  json_object_set_new(o, "interval_ms", json_integer(HF_PROBE_INTERVAL_MS));
  json_object_set_new(o, "running_servers", json_integer(us->count));
  json_object_set_new(o, "servers", json_integer(n));
  json_object_set_new(o, "probes", json_integer(probes));
  json_object_set_new(o, "failed", json_integer(failed));
  json_object_set_new(o, "longest_down_ms", json_integer(down));
  json_object_set_new(o, "per_server", per);
  return o;
}

static void write_figures(const char *path, json_t *o) {
  char *txt = json_dumps(o, JSON_COMPACT), err[512];
  if (txt != NULL) hf_sf_write_file(path, txt, strlen(txt), 0600, err, sizeof err);
  free(txt);
  json_decref(o);
}

/* Has the agent behind agentfd ended? agentfd is a pidfd (readable once it
 * exits; poll waits up to wait_ms), or without pidfds (Linux < 5.3) its
 * /proc/PID directory opened while it ran: lookups in it fail once that
 * process is gone, even when its pid is reused. */
static bool agent_ended(int agentfd, bool pidfd, int wait_ms) {
  struct pollfd p = { .fd = agentfd, .events = POLLIN };
  if (pidfd) return poll(&p, 1, wait_ms) > 0;
  poll(NULL, 0, wait_ms);
  return faccessat(agentfd, "stat", F_OK, 0) != 0;
}

/* The probe process: agentfd tells when the agent it ends with is gone. Never returns. */
static void probe_main(const struct hf_user_servers *us, const char *origin, int agentfd, bool pidfd,
                       const char *figpath, const char *stoppath, bool partial) {
  struct slot sl[HF_PROBE_MAX_SERVERS];
  int64_t t0 = hf__now_ms(), finish_at = 0;
  const char *state = partial ? "partial" : "complete";
  const char *why = partial ? "an earlier probe of this rollout ended with its agent: this one watched only from "
                              "the stop sent again" : NULL;
  char started[40];
  struct sigaction sa;
  int i, n = 0;

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_probe_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  hf__utc_now(started, sizeof started);
  memset(sl, 0, sizeof sl);
  for (i = 0; i < us->n; i++) {
    if (us->srv[i].path[0] == '\0') continue;
    sl[n].srv = &us->srv[i];
    sl[n].origin = origin;
    snprintf(sl[n].last, sizeof sl[n].last, "none yet");
    n++;
  }
  write_figures(figpath, figures(us, sl, 0, "running", NULL, started, t0));
  for (i = 0; i < n; i++)
    if (pthread_create(&sl[i].th, NULL, server_loop, &sl[i]) != 0) {
      n = i; /* the ones started are probed; the rest is counted as not probed */
      break;
    }
  for (;;) {
    struct stat st;
    int64_t now;
    if (agent_ended(agentfd, pidfd, HF_PROBE_INTERVAL_MS)) {
      state = "interrupted";
      why = "the agent that started the probe ended before health (a reconnect or a killed agent)";
      break;
    }
    if (probe_signal) {
      state = "interrupted";
      why = "the probe was stopped by a signal";
      break;
    }
    now = hf__now_ms();
    if (finish_at == 0 && fstatat(AT_FDCWD, stoppath, &st, AT_SYMLINK_NOFOLLOW) == 0)
      finish_at = now + HF_PROBE_TAIL_MS;
    if (finish_at && now >= finish_at) break;
    if (now - t0 >= HF_PROBE_MAX_MS) {
      state = "expired";
      why = "the probe reached its longest run (30 min) before health";
      break;
    }
  }
  __atomic_store_n(&stop_all, 1, __ATOMIC_RELEASE);
  for (i = 0; i < n; i++) pthread_join(sl[i].th, NULL);
  {
    int64_t end = hf__now_ms();
    for (i = 0; i < n; i++)
      if (sl[i].down_since && end - sl[i].down_since > sl[i].down_ms) sl[i].down_ms = end - sl[i].down_since;
  }
  write_figures(figpath, figures(us, sl, n, state, why, started, t0));
  _exit(0);
}

static json_t *read_figures(const char *path) {
  char err[512];
  int fd = hf_sf_open_read(path, err, sizeof err);
  json_t *o;
  if (fd < 0) return NULL;
  o = json_loadfd(fd, 0, NULL);
  close(fd);
  if (!json_is_object(o)) { json_decref(o); return NULL; }
  return o;
}

/* ---- stop: start it ----------------------------------------------------------------------------- */

/* The scheme://host:port of the health URL: the proxy's public address, where
 * users reach their servers. */
static int proxy_origin(const char *health_url, char *out, size_t outlen) {
  const char *p;
  if (health_url == NULL || strncmp(health_url, "http://", 7) != 0) return HF_EUNSUPPORTED;
  p = strchr(health_url + 7, '/');
  return hf__pathf(out, outlen, "%.*s", (int)(p ? (size_t)(p - health_url) : strlen(health_url)), health_url);
}

static void says(json_t *data, json_t **journal, json_t *o) {
  *journal = json_deep_copy(o);
  json_object_set_new(data, "users_probe", o);
}

/* No probe runs: why, in data and (when figpath) as the rollout's figures, for health to report. */
static void no_probe(json_t *data, json_t **journal, const char *state, const char *why, int64_t count,
                     const char *figpath) {
  json_t *o = json_object();
  json_object_set_new(o, "state", json_string(state));
  json_object_set_new(o, "why", json_string(why));
  json_object_set_new(o, "running_servers", count >= 0 ? json_integer(count) : json_null());
  if (figpath != NULL) write_figures(figpath, json_deep_copy(o));
  says(data, journal, o);
}

void hf__probe_begin(struct hf_req *r, json_t *data, json_t **journal) {
  struct hf_user_servers *us;
  char origin[300], lockp[PATH_MAX], figp[PATH_MAX], stopp[PATH_MAX], err[512];
  int lockfd, agentfd, i;
  bool partial, pidfd;
  pid_t pid;
  json_t *o, *names;

  *journal = NULL;
  if (r->rollout == NULL || probe_path(r, "lock", lockp, sizeof lockp) != 0 ||
      probe_path(r, "json", figp, sizeof figp) != 0 || probe_path(r, "stop", stopp, sizeof stopp) != 0) {
    no_probe(data, journal, "off", "no rollout or a state directory path too long", -1, NULL);
    return;
  }
  if (proxy_origin(r->hub.health_url, origin, sizeof origin) != 0) {
    no_probe(data, journal, "off", "the health URL is not http://: the users' servers are not probed", -1, NULL);
    return;
  }
  lockfd = hf_sf_open_own(lockp, 0600, false, false, NULL, err, sizeof err);
  if (lockfd < 0) {
    no_probe(data, journal, "off", err, -1, NULL);
    return;
  }
  if (flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
    /* A stop sent again (a retry): the probe it started still runs. */
    close(lockfd);
    no_probe(data, journal, "running", "the probe started by an earlier stop of this rollout still runs", -1, NULL);
    return;
  }
  if ((us = malloc(sizeof *us)) == NULL) { close(lockfd); return; }
  if (hf__db_user_servers(r, us) != 0 || us->count < 0) {
    no_probe(data, journal, "off", us->error, -1, figp);
    goto out;
  }
  if (us->count == 0) {
    no_probe(data, journal, "none", "no single-user server runs (database)", 0, figp);
    goto out;
  }
  /* The probe ends with the SSH session's agent (under become, this
   * request's root agent exits at its end: the probe outlives it but not the
   * login's agent): a pidfd of it, else its /proc directory (agent_ended). */
  agentfd = (int)syscall(SYS_pidfd_open, (pid_t)hf__agent_pid(), 0);
  pidfd = agentfd >= 0;
  if (!pidfd) {
    char proc[32];
    snprintf(proc, sizeof proc, "/proc/%d", hf__agent_pid());
    agentfd = open(proc, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  if (agentfd < 0) {
    char why[160];
    snprintf(why, sizeof why, "neither a pidfd nor /proc of the agent (pid %d): %s", hf__agent_pid(), strerror(errno));
    no_probe(data, journal, "off", why, us->count, figp);
    goto out;
  }
  unlink(stopp); /* a word to finish left from an interrupted probe of this rollout */
  {
    /* Figures of an earlier probe of this rollout: it did not see all of it. */
    json_t *old = read_figures(figp);
    const char *ost = json_string_value(json_object_get(old, "state"));
    partial = ost != NULL && strcmp(ost, "none") != 0 && strcmp(ost, "off") != 0;
    json_decref(old);
  }
  pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    setsid(); /* out of the request's process group and session (sudo's pty) */
    if (hf__agent_pid() == (int)getppid()) prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (devnull >= 0) { dup2(devnull, 0); dup2(devnull, 1); dup2(devnull, 2); }
    /* Only the lock and the pidfd stay open: never the protocol's pipes,
     * nor the host lock of the request that started it. */
    lockfd = fcntl(lockfd, F_DUPFD, 64);
    agentfd = fcntl(agentfd, F_DUPFD, 64);
    if (lockfd < 0 || agentfd < 0 || dup2(lockfd, 3) < 0 || dup2(agentfd, 4) < 0) _exit(1);
    closefrom(5);
    probe_main(us, origin, 4, pidfd, figp, stopp, partial);
  }
  close(agentfd);
  if (pid < 0) {
    snprintf(err, sizeof err, "fork: %s", strerror(errno));
    no_probe(data, journal, "off", err, us->count, figp);
    goto out;
  }
  o = json_object();
  names = json_array();
  for (i = 0; i < us->n; i++) json_array_append_new(names, json_string(us->srv[i].label));
  json_object_set_new(o, "state", json_string("started"));
  json_object_set_new(o, "pid", json_integer(pid));
  json_object_set_new(o, "running_servers", json_integer(us->count));
  json_object_set_new(o, "users", names);
  json_object_set_new(o, "url", json_string(origin));
  says(data, journal, o);
  hf__event(r, "info", "users' probe (pid %d): %lld running server(s), %d probed through %s every %d ms", (int)pid,
            (long long)us->count, us->n, origin, HF_PROBE_INTERVAL_MS);
out:
  free(us);
  close(lockfd); /* the probe keeps the lock through its own descriptor */
}

/* ---- health: its figures ------------------------------------------------------------------------ */

void hf__probe_end(struct hf_req *r, json_t *data) {
  char lockp[PATH_MAX], figp[PATH_MAX], stopp[PATH_MAX], err[512];
  int64_t t0 = hf__now_ms();
  int lockfd;
  bool free_now = false;
  json_t *o;
  const char *state;

  if (r->rollout == NULL || probe_path(r, "lock", lockp, sizeof lockp) != 0 ||
      probe_path(r, "json", figp, sizeof figp) != 0 || probe_path(r, "stop", stopp, sizeof stopp) != 0)
    return;
  lockfd = hf_sf_open_read(lockp, err, sizeof err);
  if (lockfd < 0 && access(figp, F_OK) == 0) {
    free_now = true; /* an earlier health ended it and removed the lock (a retry): its figures again */
  } else if (lockfd < 0) {
    /* No probe was started for this rollout here: say why, never a figure. */
    o = json_object();
    json_object_set_new(o, "state", json_string("none"));
    json_object_set_new(o, "why", json_string("no users' probe was started by this rollout's stop on this host"));
    json_object_set_new(data, "users_probe", o);
    json_object_set_new(data, "users_downtime_ms", json_null());
    return;
  }
  if (!free_now && flock(lockfd, LOCK_EX | LOCK_NB) == 0) {
    free_now = true; /* nothing runs: the figures are final (or it was killed) */
  } else if (!free_now) {
    hf_sf_write_file(stopp, "health\n", 7, 0600, err, sizeof err);
    while (hf__now_ms() - t0 < HF_PROBE_WAIT_MS) {
      usleep(20000);
      if (flock(lockfd, LOCK_EX | LOCK_NB) == 0) { free_now = true; break; }
    }
  }
  if (lockfd >= 0) close(lockfd);
  o = read_figures(figp);
  if (o == NULL) {
    o = json_object();
    json_object_set_new(o, "state", json_string("interrupted"));
    json_object_set_new(o, "why", json_string("the probe left no figures"));
  } else if (!free_now) {
    json_object_set_new(o, "state", json_string("interrupted"));
    json_object_set_new(o, "why", json_string("the probe did not finish within its wait"));
  } else if (strcmp(json_string_value(json_object_get(o, "state")) ?: "", "running") == 0) {
    json_object_set_new(o, "state", json_string("interrupted"));
    json_object_set_new(o, "why", json_string("the probe ended without its final figures (killed)"));
  }
  json_object_set_new(o, "wait_ms", json_integer(hf__now_ms() - t0));
  state = json_string_value(json_object_get(o, "state"));
  /* A figure only when one probe watched from the stop to the verdict. */
  json_object_set_new(data, "users_downtime_ms",
                      strcmp(state, "complete") == 0 ? json_incref(json_object_get(o, "longest_down_ms")) : json_null());
  if (free_now && json_is_integer(json_object_get(o, "pid"))) {
    /* This agent's own child (without become): reaped, not left a zombie.
     * Another's (a root agent of an earlier request): ECHILD at once. */
    pid_t pid = (pid_t)json_integer_value(json_object_get(o, "pid"));
    for (int i = 0; i < 50 && waitpid(pid, NULL, WNOHANG) == 0; i++) usleep(10000);
  }
  json_object_set_new(data, "users_probe", o);
  if (free_now) {
    unlink(stopp);
    unlink(lockp);
  }
}
