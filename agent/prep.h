/* prep.h: what the agent prepares before a hub goes down — database facts for the version-aware
 * preflight, the host-local package cache, installs side by side (internal to agent/). */
#ifndef HF_AGENT_PREP_H
#define HF_AGENT_PREP_H

#include "agent_int.h"

/* Running single-user servers in the hub database at path (read-only):
 * spawner rows holding a server. *n = -1 when the schema has no spawners
 * table (unknown, not zero). 0, or HF_EDB with err set. */
int hf_db_running_servers(const char *path, int64_t *n, char *err, size_t errlen);

/* Pushes pip's package source onto a: the configured one (hub.find_links
 * with --no-index, or hub.index_url), preceded by the host-local cache of
 * r->target when hf__cache_fetch completed it. Without r->target (a
 * rollback's old versions) only the configured source. */
void hf__pip_source(struct hf_req *r, struct hf_argv *a);
/* Pushes the configured source only: --no-index --find-links DIR, or
 * --index-url URL, or nothing (pip's own configuration). */
void hf__pip_source_configured(const struct hf_req *r, struct hf_argv *a);
/* Pushes PREFIX/bin/python -m pip SUBCMD --no-input --disable-pip-version-check. */
void hf__pip_cmd(struct hf_argv *a, const char *prefix, const char *subcmd);
/* Pushes the pip install of the environment at prefix, up to the pins:
 * --upgrade --no-compile, --no-deps when preflight found every dependency
 * satisfied, then the package source with the host-local cache. */
void hf__pip_install_cmd(struct hf_req *r, struct hf_argv *a, const char *prefix);

/* Fetches jupyterhub==r->target and the extra pins (pip download --no-deps,
 * with the hub environment's pip, from the configured source) into
 * STATE_DIR/cache/jupyterhub-TARGET-KEY (0700; KEY from the pins), through
 * a temporary folder renamed into place with a marker, so a cut fetch never
 * counts. Idempotent: a complete cache is reused. A configured find-links
 * directory on the host that holds the target's one wheel (and no extra
 * pins) is host-local already: nothing is copied, dir names it and local
 * is true. Fills out (borrowed) with {dir, already, local?, elapsed_ms}.
 * 0, or an HF_E* code with r->msg set. */
int hf__cache_fetch(struct hf_req *r, const struct hf_env *hub, json_t *out);

/* Preflight: dry_out (borrowed, may be NULL) is the output of pip's
 * `install --dry-run` of the pins in the environment at prefix. When it
 * would install nothing but the pins themselves (every dependency is
 * already satisfied), notes that in STATE_DIR/cache/nodeps-KEY (KEY from
 * prefix and pins); otherwise removes any such note. Best effort. */
void hf__deps_note(struct hf_req *r, const char *prefix, const char *dry_out);
/* The same note from preflight's own reading of the target's Requires-Dist
 * (every requirement met in the environment, no extra pins): satisfied
 * writes it, false removes it. */
void hf__deps_mark(struct hf_req *r, const char *prefix, bool satisfied);
/* Install: was that noted for this environment and r->target's pins? Then
 * pip runs with --no-deps and skips resolving (about half its CPU inside
 * the downtime). Never for a rollback (no target). */
bool hf__deps_satisfied(struct hf_req *r, const char *prefix);

/* Before a sequential install loop over envs[0..nenv): when two or more
 * environments need a change and all of them are separate pip environments
 * (no conda, no prefix inside another), runs their `pip install --upgrade`
 * side by side (one forked agent process per environment, each its own
 * runner, deadline r->deadline_ms), each logging to
 * STATE_DIR/logs/ROLLOUT/STEP-envN.log; logs (borrowed, may be NULL) gets
 * {prefix: {log, ok}}. Returns 0 when they all succeeded or when nothing was
 * run side by side (the caller's loop then installs and, in every case,
 * verifies each environment from its files); else HF_ECMD/HF_ETIMEDOUT/
 * HF_EIO with r->msg naming the environment and its log. */
int hf__install_prepass(struct hf_req *r, const char *step, const struct hf_env *envs, int nenv, json_t *want,
                        json_t *logs);

#endif /* HF_AGENT_PREP_H */
