/* stage.h: environments prepared before the hub stops (issue 17): `stage` copies each environment
 * to ENV.hf-next and installs the target there; install switches the copies in atomically and
 * keeps the previous environment as ENV.hf-prev; rollback switches that back (internal to agent/). */
#ifndef HF_AGENT_STAGE_H
#define HF_AGENT_STAGE_H

#include "ops.h"

/* The `stage` op: every environment of the hub copied to ENV.hf-next and
 * brought to the target there, without touching what the running hub uses.
 * data gets {staged: {ENV: {path, versions}}, already, bytes}. */
int hf__op_stage(struct hf_req *r, json_t *data);

/* The live database's alembic revision ("" when unknown: neither SQLite nor PostgreSQL, or no
 * table); read-only. 0 or HF_EDB with r->msg. (op_install.c) */
int hf__alembic_now(struct hf_req *r, char *out, size_t outlen);

/* What install brings every environment to: {PREFIX: {jupyterhub: target,
 * EXTRA: V...}} (new). */
json_t *hf__install_want(struct hf_req *r, const struct envset *es);

/* install, after the stop: when ENV.hf-next is a staged copy this agent made
 * of the live environment e (unchanged since) at pins, or a switch of it was
 * cut short, switches it in (rename exchange, or two renames recorded
 * between) and keeps the previous environment as ENV.hf-prev. *switched says
 * whether e now is the staged copy; previous (borrowed) gets {PREFIX: path}.
 * 0, or an HF_E* code with r->msg set (nothing half done that a re-sent
 * install does not finish). */
int hf__stage_switch(struct hf_req *r, const struct hf_env *e, json_t *pins, json_t *previous, bool *switched);

/* rollback: when ENV.hf-prev is the environment this agent switched out and
 * holds exactly pins ({pkg: version}; null entries ignored), exchanges it back
 * in (no installer, no package source). *restored says whether it did. */
int hf__stage_restore_prev(struct hf_req *r, const struct hf_env *e, json_t *pins, bool *restored);

/* rollback, first: when an install's switch of the environment at prefix was cut (ENV the staged
 * copy and ENV.hf-next the environment it replaced, or ENV missing and that environment at
 * ENV.hf-prev), by the inodes in the stage record, puts the environment back at ENV and the copy at
 * ENV.hf-next, as before the install. *undone says whether it did. 0, or HF_EIO with r->msg. */
int hf__stage_undo_cut(struct hf_req *r, const char *prefix, bool *undone);

#endif /* HF_AGENT_STAGE_H */
