/* probe.h: the users' side of a hub (internal to agent/): which single-user servers run, read
 * from the hub database (dbfacts.c), and the users' probe that requests each of them through the
 * proxy while a rollout has the hub down (probe.c; docs/users-downtime.md). */
#ifndef HF_AGENT_PROBE_H
#define HF_AGENT_PROBE_H

#include "agent_int.h"

#define HF_PROBE_MAX_SERVERS 16   /* servers listed and probed per hub (the count is not bounded) */
#define HF_PROBE_LABEL_MAX   96   /* "user" or "user/server", cut and made printable */

struct hf_user_server {
  char label[HF_PROBE_LABEL_MAX];
  char path[256];                 /* the server's base_url + "api"; "" when not usable in a request */
};

struct hf_user_servers {
  int64_t count;                  /* running servers in the database; -1 when it cannot tell */
  int     n;                      /* listed in srv[], the first HF_PROBE_MAX_SERVERS by user name */
  struct hf_user_server srv[HF_PROBE_MAX_SERVERS];
  char    error[512];             /* why count is -1 */
};

/* The running single-user servers of r's hub, from its database (SQLite
 * read-only; PostgreSQL through psql beside the configured pg_dump, or the
 * system's, with ~/.pgpass: a URL holding a password is not put on a command
 * line). 0, or an HF_E* code with us->error set (us->count -1). */
int hf__db_user_servers(struct hf_req *r, struct hf_user_servers *us);
/* Facts and preflight: sets db.running_servers (integer, or null when the
 * database cannot tell, then db.running_servers_error says why) and
 * db.running_server_users (the first HF_PROBE_MAX_SERVERS, sorted). */
void hf__db_servers_facts(struct hf_req *r, json_t *db);

/* GET as hf_http_get, also giving the response's Location header (cut to
 * loclen, "" when none). */
int hf_http_get_loc(const char *base_url, const char *path, int64_t timeout_ms, struct hf_http_resp *r,
                    char *location, size_t loclen);

/* stop, before the hub stops: starts the users' probe of r->rollout (a
 * process of its own, bounded in servers and time, that ends with the agent
 * that started it), unless one already runs. Sets data.users_probe (what was
 * started, or why nothing was) and a copy into *journal (new) for the
 * journal's stop record. */
void hf__probe_begin(struct hf_req *r, json_t *data, json_t **journal);
/* health, once it has its verdict: tells the probe to finish (it goes on
 * for HF_PROBE_TAIL_MS), waits for its figures and sets data.users_probe
 * and data.users_downtime_ms (null unless one probe covered the whole
 * downtime: "interrupted" when it ended with its agent). */
void hf__probe_end(struct hf_req *r, json_t *data);

#endif /* HF_AGENT_PROBE_H */
