/* op_util.c: what the agent's operations share: the deadline, sizes and free space, the environments
 * and packages a request names, and the rollout journal's records (write, read, the backup check). */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "agent_int.h"
#include "hub.h"
#include "ops.h"

/* ---- small helpers ------------------------------------------------------------------- */

int64_t hf__file_size(const char *p) {
  struct stat st;
  return (p != NULL && stat(p, &st) == 0) ? (int64_t)st.st_size : -1;
}

/* Free bytes for an unprivileged writer at path or its nearest existing ancestor. */
int64_t hf__free_bytes(const char *path) {
  char p[PATH_MAX];
  struct statvfs vs;
  snprintf(p, sizeof p, "%s", path);
  for (;;) {
    char *slash;
    if (statvfs(p, &vs) == 0) return (int64_t)vs.f_bavail * (int64_t)vs.f_frsize;
    slash = strrchr(p, '/');
    if (slash == NULL) return -1;
    if (slash == p) { if (p[1] == '\0') return -1; p[1] = '\0'; }
    else *slash = '\0';
  }
}

/* Every environment: the hub's first, then each distinct user environment. */
void hf__envs_load(struct hf_req *r, struct envset *es) {
  int i, j;
  es->n = 0;
  hf_env_inspect(r->hub.hub_env, r->hub.installer, &es->env[0]);
  es->role[es->n++] = "hub";
  for (i = 0; i < r->hub.n_user_envs; i++) {
    bool dup = false;
    for (j = 0; j < es->n; j++)
      if (strcmp(es->env[j].prefix, r->hub.user_envs[i]) == 0) dup = true;
    if (dup) continue;
    hf_env_inspect(r->hub.user_envs[i], r->hub.installer, &es->env[es->n]);
    es->role[es->n++] = "user";
  }
}

/* The packages whose versions matter: jupyterhub, then the names of the
 * extra pins, then report_packages. */
void hf__pkgs_load(struct hf_req *r, struct pkglist *pl, bool with_report) {
  size_t i;
  int k;
  pl->n = 0;
  pl->names[pl->n++] = "jupyterhub";
  for (i = 0; i < json_array_size(r->hub.extra_packages) && pl->n < 64; i++) {
    const char *pin = json_string_value(json_array_get(r->hub.extra_packages, i));
    const char *eq = pin ? strstr(pin, "==") : NULL;
    if (eq == NULL || (size_t)(eq - pin) >= sizeof pl->buf[0]) continue;
    memcpy(pl->buf[pl->n], pin, (size_t)(eq - pin));
    pl->buf[pl->n][eq - pin] = '\0';
    pl->names[pl->n] = pl->buf[pl->n];
    pl->n++;
  }
  pl->n_change = pl->n;
  for (i = 0; with_report && i < json_array_size(r->hub.report_packages) && pl->n < 128; i++) {
    const char *nm = json_string_value(json_array_get(r->hub.report_packages, i));
    bool dup = false;
    for (k = 0; k < pl->n; k++) if (nm && strcmp(pl->names[k], nm) == 0) dup = true;
    if (nm && !dup) pl->names[pl->n++] = nm;
  }
}

/* {name: version-or-null} for one environment (new). */
json_t *hf__env_pkg_obj(const struct hf_env *e, const struct pkglist *pl, int n) {
  char vers[128][HF_VER_LEN];
  json_t *o = json_object();
  int i;
  hf_env_versions(e, pl->names, n, vers);
  for (i = 0; i < n; i++) json_object_set_new(o, pl->names[i], vers[i][0] ? json_string(vers[i]) : json_null());
  return o;
}

/* ---- journal helpers ------------------------------------------------------------------- */

/* Appends {step, state, time, detail(stolen)} to the rollout's journal. */
int hf__jrec(struct hf_req *r, const char *step, const char *state, json_t *detail) {
  char now[40];
  json_t *rec = json_object();
  int rc;
  hf__utc_now(now, sizeof now);
  json_object_set_new(rec, "step", json_string(step));
  json_object_set_new(rec, "state", json_string(state));
  json_object_set_new(rec, "time", json_string(now));
  json_object_set_new(rec, "agent", json_string(HF_VERSION));
  json_object_set_new(rec, "pid", json_integer(hf__agent_pid()));
  json_object_set_new(rec, "detail", detail ? detail : json_object());
  rc = hf_journal_append(r->hub.state_dir, r->rollout, rec);
  json_decref(rec);
  if (rc != 0) {
    snprintf(r->msg, sizeof r->msg, "journal %s/journal-%s cannot be written (%s %s): the step was stopped",
             r->hub.state_dir, r->rollout, step, state);
    return HF_EJOURNAL;
  }
  return 0;
}

int hf__jread(struct hf_req *r, json_t **recs) {
  bool torn;
  int rc = hf_journal_read(r->hub.state_dir, r->rollout, recs, &torn);
  if (rc != 0) {
    snprintf(r->msg, sizeof r->msg, "journal %s/journal-%s is damaged or unreadable", r->hub.state_dir, r->rollout);
    return HF_EJOURNAL;
  }
  if (torn) hf__event(r, "warn", "journal: a torn last record (cut write) was ignored");
  return 0;
}

/* The last record for step in state (borrowed from recs), or NULL. */
json_t *hf__jlast(json_t *recs, const char *step, const char *state) {
  size_t i = json_array_size(recs);
  while (i-- > 0) {
    json_t *rec = json_array_get(recs, i);
    if (strcmp(json_string_value(json_object_get(rec, "step")) ?: "", step) == 0 &&
        (state == NULL || strcmp(json_string_value(json_object_get(rec, "state")) ?: "", state) == 0))
      return rec;
  }
  return NULL;
}

/* The state check before a step that changes the hub: a backup of this
 * rollout must exist, since it is the only way back. */
int hf__need_backup(struct hf_req *r, json_t **recs_out) {
  json_t *recs = NULL;
  int rc;
  if ((rc = hf__jread(r, &recs)) != 0) return rc;
  if (hf__jlast(recs, "backup", "done") == NULL) {
    json_decref(recs);
    snprintf(r->msg, sizeof r->msg, "%s refused: rollout %s has no completed backup on this host yet", r->op, r->rollout);
    return HF_ESTATE;
  }
  if (recs_out) *recs_out = recs; else json_decref(recs);
  return 0;
}

/* ---- a failed step ---------------------------------------------------------------------------- */

int hf__fail_step(struct hf_req *r, const char *step, int rc) {
  json_t *det = json_object();
  char keep[sizeof r->msg];
  snprintf(keep, sizeof keep, "%s", r->msg);
  json_object_set_new(det, "error", json_string(r->msg));
  json_object_set_new(det, "code", json_string(hf_err_code(rc)));
  if (hf__jrec(r, step, "failed", det) != 0) return HF_EJOURNAL;
  snprintf(r->msg, sizeof r->msg, "%s", keep);
  return rc;
}
