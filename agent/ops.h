/* ops.h: what the agent's operations share across their files (internal to agent/): the op
 * handlers the dispatch (ops.c) calls, and the helpers of op_util.c, op_install.c and
 * op_service.c that more than one operation uses. */
#ifndef HF_AGENT_OPS_H
#define HF_AGENT_OPS_H

#include "agent_int.h"

/* ---- the operations: each fills data (borrowed) on success; on failure returns the code with
 * r->msg set. Called by hf__op_dispatch once the request passed its gates. ---- */
int hf__op_facts(struct hf_req *r, json_t *data);     /* op_prep.c */
int hf__op_preflight(struct hf_req *r, json_t *data); /* op_prep.c */
int hf__op_backup(struct hf_req *r, json_t *data);    /* op_backup.c */
int hf__op_stop(struct hf_req *r, json_t *data);      /* op_service.c */
int hf__op_start(struct hf_req *r, json_t *data);     /* op_service.c */
int hf__op_health(struct hf_req *r, json_t *data);    /* op_service.c */
int hf__op_install(struct hf_req *r, json_t *data);   /* op_install.c */
int hf__op_migrate(struct hf_req *r, json_t *data);   /* op_install.c */
int hf__op_rollback(struct hf_req *r, json_t *data);  /* op_rollback.c */

/* ---- op_util.c: sizes and space ---- */
/* Size of the file at p, or -1. */
int64_t hf__file_size(const char *p);
/* Free bytes for an unprivileged writer at path or its nearest existing ancestor. */
int64_t hf__free_bytes(const char *path);

/* ---- op_util.c: the environments and packages a request names ---- */
/* Every environment: the hub's first, then each distinct user environment. */
struct envset {
  struct hf_env env[HF_MAX_ENVS + 1];
  const char *role[HF_MAX_ENVS + 1];
  int n;
};
void hf__envs_load(struct hf_req *r, struct envset *es);

/* The packages whose versions matter: jupyterhub, then the names of the
 * extra pins, then report_packages. names[] borrowed/owned by buf. */
struct pkglist {
  const char *names[128];
  char        buf[64][130];
  int         n, n_change;  /* names[0..n_change) are the ones an upgrade changes */
};
void hf__pkgs_load(struct hf_req *r, struct pkglist *pl, bool with_report);
/* {name: version-or-null} of the first n names for one environment (new). */
json_t *hf__env_pkg_obj(const struct hf_env *e, const struct pkglist *pl, int n);

/* ---- op_util.c: the rollout's journal ---- */
/* Appends {step, state, time, detail(stolen)} to the rollout's journal; HF_EJOURNAL with r->msg. */
int hf__jrec(struct hf_req *r, const char *step, const char *state, json_t *detail);
/* Reads the rollout's journal into *recs (new); HF_EJOURNAL with r->msg when damaged. */
int hf__jread(struct hf_req *r, json_t **recs);
/* The last record for step in state (any state when NULL), borrowed from recs, or NULL. */
json_t *hf__jlast(json_t *recs, const char *step, const char *state);
/* The state check before a step that changes the hub: a backup of this
 * rollout must exist, since it is the only way back. *recs_out (may be NULL) gets the journal. */
int hf__need_backup(struct hf_req *r, json_t **recs_out);
/* Journals step as failed with r->msg and rc's code; returns rc (r->msg kept), or HF_EJOURNAL. */
int hf__fail_step(struct hf_req *r, const char *step, int rc);

/* ---- op_install.c ---- */
/* Brings every environment to the pins: want[prefix] = {pkg: ver}; installed gets what was done. */
int hf__install_envs(struct hf_req *r, const char *step, json_t *want, json_t *installed);

/* ---- op_service.c ---- */
/* GET /hub/api at base: the version string (new) or NULL; *status the HTTP status or an HF_E* code. */
json_t *hf__api_version(const char *base, int64_t timeout_ms, int *status);
/* Where the hub's log starts for a start that happens now (see op_service.c). */
int64_t hf__log_mark(struct hf_req *r);
/* Polls until the hub answers health 200 and /hub/api reports want, or the deadline; fills data. */
int hf__wait_healthy(struct hf_req *r, const char *want, int64_t timeout_ms, int64_t log_offset, json_t *data);

#endif /* HF_AGENT_OPS_H */
