/* ops.c: the agent's operations dispatched (the op table), with the gates every op passes first: its
 * arguments, the agent's own directories, the host lock and the journal's stale-step refusal; and
 * the journal op. The operations themselves: op_prep.c, op_backup.c, op_service.c, op_install.c,
 * op_rollback.c (helpers they share: op_util.c, ops.h). */
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "ops.h"
#include "stage.h"

/* The pid holding the host lock, or 0 when it is free (fd: the open lock file). */
static int lock_holder(int fd) {
  char buf[32] = "";
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n > 0) buf[n] = '\0';
  return atoi(buf);
}

/* ---- journal ------------------------------------------------------------------------------------ */

static int op_journal(struct hf_req *r, json_t *data) {
  json_t *recs = NULL, *steps = json_array(), *bk;
  bool torn = false;
  size_t i;
  int rc = hf_journal_read(r->hub.state_dir, r->rollout, &recs, &torn);
  if (rc != 0) {
    json_decref(steps);
    snprintf(r->msg, sizeof r->msg, "journal %s/journal-%s is damaged or unreadable", r->hub.state_dir, r->rollout);
    return HF_EJOURNAL;
  }
  /* Bounded answer: the newest 500 records (a journal is tens of records;
   * a loop of retries must not make the result unframeable). */
  i = json_array_size(recs) > 500 ? json_array_size(recs) - 500 : 0;
  json_object_set_new(data, "records_skipped", json_integer((json_int_t)i));
  for (; i < json_array_size(recs); i++) {
    json_t *rec = json_array_get(recs, i), *s = json_object();
    json_object_set(s, "step", json_object_get(rec, "step"));
    json_object_set(s, "state", json_object_get(rec, "state"));
    json_object_set(s, "time", json_object_get(rec, "time"));
    json_object_set(s, "detail", json_object_get(rec, "detail"));
    json_array_append_new(steps, s);
  }
  bk = hf__jlast(recs, "backup", "done");
  json_object_set_new(data, "rollout", json_string(r->rollout));
  json_object_set_new(data, "steps", steps);
  json_object_set(data, "previous", bk ? json_object_get(json_object_get(bk, "detail"), "previous") : json_null());
  json_object_set(data, "backup", bk ? json_object_get(json_object_get(bk, "detail"), "backup") : json_null());
  json_object_set_new(data, "torn_tail", json_boolean(torn));
  /* A step begun but not done may still be running in another agent. */
  {
    char path[PATH_MAX];
    int fd, busy = 0;
    if (hf__pathf(path, sizeof path, "%s/agent.lock", r->hub.state_dir) == 0 &&
        (fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) >= 0) {
      if (flock(fd, LOCK_SH | LOCK_NB) != 0) busy = lock_holder(fd);
      close(fd);
    }
    json_object_set_new(data, "busy_pid", busy ? json_integer(busy) : json_null());
  }
  json_decref(recs);
  return 0;
}

/* ---- dispatch ------------------------------------------------------------------------------------ */

/* The handler of each operation in proto's table (HF_OP_MAP): what an op
 * needs (rollout, target), its default deadline, whether it changes the hub
 * and where it stands in the procedure all come from that table. */
typedef int (*op_fn)(struct hf_req *r, json_t *data);
static const op_fn handlers[HF_OP__COUNT] = {
  [HF_OP_FACTS]     = hf__op_facts,
  [HF_OP_PREFLIGHT] = hf__op_preflight,
  [HF_OP_STAGE]     = hf__op_stage,
  [HF_OP_BACKUP]    = hf__op_backup,
  [HF_OP_STOP]      = hf__op_stop,
  [HF_OP_INSTALL]   = hf__op_install,
  [HF_OP_MIGRATE]   = hf__op_migrate,
  [HF_OP_START]     = hf__op_start,
  [HF_OP_HEALTH]    = hf__op_health,
  [HF_OP_ROLLBACK]  = hf__op_rollback,
  [HF_OP_JOURNAL]   = op_journal,
};

/* One agent at a time changes a hub: a controller that reconnected after a
 * cut must not start a rollback while the agent it lost is still inside
 * pip. flock dies with its holder, even under SIGKILL. Waits up to the
 * op's timeout for the other agent to finish its step. */
/* Whether the controller's end of stdin hung up (without reading from it:
 * a next request must stay where it is). */
static bool controller_gone(const struct hf_req *r) {
  struct pollfd p = { .fd = r->in_fd, .events = POLLRDHUP };
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* The procedure's order (the table's steps). A journaled step runs only
 * right after the journaled step before it (hf_op_journaled_before), or again
 * after itself (every step is idempotent): that one must be the last step the
 * journal shows completed. Anything else comes from a stale controller or
 * agent: a late "stop" after "health" would take a healthy, upgraded hub
 * down, and an "install" re-sent after a rollback began would upgrade the
 * rolled-back hub under its users. Once a rollback of the rollout began on
 * this host, no upgrade step runs again (start a new rollout). */
static int refuse_stale(struct hf_req *r, const struct hf_op *op) {
  const struct hf_op *before = hf_op_journaled_before(op), *last = NULL;
  const char *rb_state = NULL, *rb_time = NULL;
  json_t *recs = NULL, *rec;
  size_t i;
  int rc = 0;
  if (!op->journaled || op->step <= 0 || r->rollout == NULL) return 0;
  if (hf__jread(r, &recs) != 0) return HF_EJOURNAL;
  json_array_foreach(recs, i, rec) {
    const char *step = json_string_value(json_object_get(rec, "step"));
    const char *state = json_string_value(json_object_get(rec, "state"));
    const struct hf_op *done;
    if (step == NULL || state == NULL) continue;
    if (strcmp(step, "rollback") == 0) {
      rb_state = state;
      rb_time = json_string_value(json_object_get(rec, "time"));
      continue;
    }
    if (strcmp(state, "done") == 0 && (done = hf_op_by_name(step)) != NULL && done->journaled && done->step > 0)
      last = done;
  }
  if (rb_state != NULL) {
    snprintf(r->msg, sizeof r->msg, "stale request: rollout %s was rolled back on this host (rollback %s at %s); "
             "not running %s: start a new rollout", r->rollout, rb_state, rb_time ? rb_time : "?", r->op);
    rc = HF_ESTATE;
  } else if (last != op && last != before) {
    snprintf(r->msg, sizeof r->msg, "stale request: %s runs after %s, but the last step the journal of rollout %s "
             "shows completed is %s; not running %s", r->op, before ? before->name : "nothing",
             r->rollout, last ? last->name : "none", r->op);
    rc = HF_ESTATE;
  }
  json_decref(recs);
  return rc;
}

/* The agent's own directories checked before an op trusts or writes them
 * (docs/security.md): owned by the agent's user, not writable by others. */
static int check_dirs(struct hf_req *r, const char *op, bool create) {
  int rc;
  if ((rc = hf_sf_private_dir(r->hub.state_dir, create, "state directory", r->msg, sizeof r->msg)) != 0) return rc;
  if (strcmp(op, "backup") == 0 || strcmp(op, "rollback") == 0)
    rc = hf_sf_private_dir(r->hub.backup_dir, strcmp(op, "backup") == 0, "backup directory", r->msg, sizeof r->msg);
  return rc;
}

static int host_lock(struct hf_req *r, int *fdp) {
  char path[PATH_MAX], pid[32];
  int64_t deadline = hf__now_ms() + hf__left_ms(r);
  bool told = false;
  char err[1024];
  int fd;

  *fdp = -1;
  /* The state directory was checked (hf_sf_private_dir) by the dispatch. The
   * lock is never followed through a symlink nor truncated before it is ours. */
  if (hf__pathf(path, sizeof path, "%s/agent.lock", r->hub.state_dir) != 0) return HF_EBADARG;
  fd = hf_sf_open_own(path, 0600, false, false, NULL, err, sizeof err);
  if (fd < 0) {
    snprintf(r->msg, sizeof r->msg, "cannot open the host lock: %s", err);
    return HF_EJOURNAL;
  }
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      close(fd);
      snprintf(r->msg, sizeof r->msg, "cannot lock %s: %s", path, strerror(errno));
      return HF_EJOURNAL;
    }
    if (!told) {
      hf__event(r, "warn", "another agent (pid %d) is changing this hub; waiting for it", lock_holder(fd));
      told = true;
    }
    if (hf__now_ms() >= deadline) {
      snprintf(r->msg, sizeof r->msg, "another agent (pid %d) is still changing this hub; try again later",
               lock_holder(fd));
      close(fd);
      return HF_ESTATE;
    }
    if (controller_gone(r)) {
      /* Whoever sent this is gone; a newer controller decides from the
       * journal. Running it later could undo that controller's work. */
      snprintf(r->msg, sizeof r->msg, "the controller that sent %s is gone; not running it", r->op);
      close(fd);
      return HF_ECANCELED;
    }
    usleep(200000);
  }
  snprintf(pid, sizeof pid, "%d\n", hf__agent_pid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, strlen(pid), 0) < 0) { /* the pid is only informative */ }
  *fdp = fd;
  return 0;
}

bool hf__op_implemented(enum hf_op_id op) {
  return (unsigned)op < HF_OP__COUNT && handlers[op] != NULL;
}

int hf__op_dispatch(struct hf_req *r, json_t **data) {
  const struct hf_op *op = hf_op_by_name(r->op);
  const json_t *to;
  bool locked;
  int rc, lockfd = -1;

  *data = NULL;
  if (op == NULL || handlers[op->id] == NULL) {
    snprintf(r->msg, sizeof r->msg, "operation %.64s is not implemented by this agent", r->op);
    return HF_EUNKNOWNOP;
  }
  /* The state check before every handler: the arguments it relies on. */
  if ((rc = hf_hub_parse(json_object_get(r->args, "hub"), &r->hub, r->msg, sizeof r->msg)) != 0) return rc;
  r->rollout = json_string_value(json_object_get(r->args, "rollout"));
  r->target = json_string_value(json_object_get(r->args, "target"));
  if (op->rollout == HF_OPARG_REQ && (r->rollout == NULL || !hf_valid_id(r->rollout))) {
    snprintf(r->msg, sizeof r->msg, "args.rollout: %s needs a rollout id", op->name);
    return HF_EBADARG;
  }
  if (op->target == HF_OPARG_REQ && (r->target == NULL || !hf_valid_version(r->target))) {
    snprintf(r->msg, sizeof r->msg, "args.target: %s needs a PEP 440 version", op->name);
    return HF_EBADARG;
  }
  to = json_object_get(r->args, "timeout_ms");
  r->timeout_ms = json_is_integer(to) && json_integer_value(to) > 0 ? json_integer_value(to) : op->default_timeout_ms;
  if (r->timeout_ms > 24 * 3600 * 1000) r->timeout_ms = 24 * 3600 * 1000;
  r->deadline_ms = hf__now_ms() + r->timeout_ms;
  /* Preparing ahead of the host's stage changes nothing and waits for nothing: its commands run
   * at nice 10, so they never slow the serving hub or a downtime on the same CPUs. */
  hf_run_nice = json_is_true(json_object_get(r->args, "background")) ? 10 : 0;
  /* become: the whole request runs as root in this binary under sudo -n
   * (the hub's files, its database and its service are root's). */
  if (r->hub.become && geteuid() != 0) return hf__become_relay(r, data);
  /* stage leaves the hub as it is but writes beside its environments: under the lock too, so it
   * never runs beside an install or rollback of the same hub. */
  locked = op->changes_hub || op->id == HF_OP_STAGE;
  if (op->id != HF_OP_FACTS &&
      (rc = check_dirs(r, op->name, locked || op->id == HF_OP_PREFLIGHT)) != 0)
    return rc;
  if ((*data = json_object()) == NULL) return HF_ENOMEM;
  /* A journaled step that leaves the hub as it is (health) is checked
   * without the lock; one that changes it, under the lock. */
  if (!locked && (rc = refuse_stale(r, op)) != 0) return rc;
  if (locked) {
    /* Who does the work: lets an operator (or a test) find this process. */
    hf__event(r, "debug", "agent pid %d: %s for rollout %s", hf__agent_pid(), op->name, r->rollout);
    if ((rc = host_lock(r, &lockfd)) != 0) return rc;
    if ((rc = refuse_stale(r, op)) != 0) { close(lockfd); return rc; }
  }
  rc = handlers[op->id](r, *data);
  if (lockfd >= 0) close(lockfd); /* releases the lock */
  return rc;
}
