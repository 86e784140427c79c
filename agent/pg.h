/* pg.h: PostgreSQL hub databases, driven with PostgreSQL's own client programs (pg_dump, psql)
 * as the agent's user, credentials where libpq finds them (internal to agent/). */
#ifndef HF_AGENT_PG_H
#define HF_AGENT_PG_H

#include "agent_int.h"

/* A hub database on PostgreSQL, ready for libpq's programs. */
struct hf_pg {
  char url[1024];     /* libpq URL without driver and password: given in argv */
  char shown[1024];   /* the same, for messages (never holds a password) */
  char dbname[128];   /* the database the URL names */
  char pw_env[512];   /* "PGPASSWORD=..." when the URL held a password, else "" */
  char dump[PATH_MAX];/* pg_dump */
  char psql[PATH_MAX];/* psql */
  char *env[4];       /* what every program gets in its environment (NULL-terminated) */
};

/* Is this hub's database a postgresql:// URL? */
bool hf_pg_is(const struct hf_hub *h);
/* Does the agent back it up, rehearse and restore it itself: a postgresql:// URL whose
 * hubfleet_db_dump is unset or a pg_dump? (An operator's own dump command is run as given,
 * and its dump is the operator's to restore.) */
bool hf_pg_ours(const struct hf_hub *h);
/* Parses r->hub.db_url into pg (the URL's password, if any, only into
 * pw_env) and finds pg_dump/psql: beside hubfleet_db_dump's program when it
 * is a pg_dump, else in the fixed system directories. HF_EBADARG /
 * HF_EUNSUPPORTED with r->msg. */
int hf_pg_open(struct hf_req *r, struct hf_pg *pg);
/* The URL of another database on the same server (driver kept when
 * keep_driver, for JupyterHub's --JupyterHub.db_url), password never. */
int hf_pg_url_for(struct hf_req *r, const struct hf_pg *pg, const char *db, bool keep_driver, char *out, size_t outlen);
/* One value from a query on database url (psql -At); "" when no row. */
int hf_pg_query(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *sql, const char *tag,
                char *out, size_t outlen);
/* alembic_version of database url ("" when the table is missing). */
int hf_pg_alembic(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *tag, char *out, size_t outlen);
/* pg_dump --clean --if-exists (plain SQL) of database url into file (mode
 * 0600, written through hf_safefile); sha = SHA-256 of the file, content =
 * SHA-256 of it without the lines that change between two dumps of the same
 * data (pg_dump's version comments, its per-run \restrict key). */
int hf_pg_dump(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *file, const char *tag,
               char sha[HF_SHA256_HEX], char content[HF_SHA256_HEX]);
/* SHA-256 of a dump without the lines that change between two dumps of the same data. */
int hf_pg_content_sha(const char *file, char content[HF_SHA256_HEX]);
/* Runs a dump file into database url in one transaction (psql
 * --single-transaction, ON_ERROR_STOP): all of it, or nothing. */
int hf_pg_load(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *file, const char *tag);
/* Creates (create) or drops (WITH (FORCE), if it exists) database name, from the server's
 * maintenance database postgres. */
int hf_pg_createdrop(struct hf_req *r, const struct hf_pg *pg, const char *name, bool create, const char *tag);
/* Restores the hub's database from the backup dump file: its SHA-256
 * checked first (a damaged backup changes nothing), tables the backup does
 * not hold dropped and the dump loaded in one transaction, then a new dump
 * compared with the backup's content digest. HF_EINTEGRITY on a mismatch. */
int hf_pg_restore(struct hf_req *r, const struct hf_pg *pg, const char *file, const char *sha, const char *content);

#endif /* HF_AGENT_PG_H */
