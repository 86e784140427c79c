/* agent_int.h: internals shared by the agent's sources (process runner, journal, environment
 * inspection, HTTP probe, SQLite helpers, operations); not a public API. */
#ifndef HF_AGENT_INT_H
#define HF_AGENT_INT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "hf_files.h"
#include "hf_proto.h"
#include "hf_sha256.h"

#ifndef HF_VERSION
#define HF_VERSION "0.0.0"
#endif

#define HF_MAX_ENVS     64    /* user environments per hub */
#define HF_ARGV_MAX     160   /* elements in one command line we build */
#define HF_VER_LEN      64    /* longest version string we keep */

/* CPU time (user+system, microseconds) of this process so far; and its value
 * when hf_agent_run began (CPU a login shell spent before exec'ing the agent
 * counts in the same process: this separates it out). */
int64_t hf__cpu_us(void);
extern int64_t hf__cpu_at_start;
/* The line of a failed command's output (text borrowed) that says why: the
 * last one naming an error, else the last non-empty one; into out. */
void hf__why_line(const char *text, char *out, size_t outlen);
/* Monotonic milliseconds. */
int64_t hf__now_ms(void);
/* Wall-clock time as "2026-11-25T16:30:00.123Z" into out (>= 32 bytes). */
void hf__utc_now(char *out, size_t outlen);
/* snprintf into out that reports truncation: 0, or HF_EINVAL when it did not fit. */
int hf__pathf(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* mkdir -p with mode for every directory it creates. 0 or HF_EIO (errno kept). */
int hf__mkdirs(const char *path, int mode);

/* ---- argv under construction: every element a copy (owned by the struct) --- */
struct hf_argv {
  char *v[HF_ARGV_MAX + 1]; /* NULL-terminated */
  int   n;
  int   error;              /* sticky: HF_ENOMEM or HF_EINVAL (too many) */
};
void hf_argv_init(struct hf_argv *a);
/* Appends a copy of s; errors are sticky and reported by hf_argv_error(). */
void hf_argv_push(struct hf_argv *a, const char *s);
void hf_argv_pushf(struct hf_argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int  hf_argv_error(const struct hf_argv *a);
void hf_argv_free(struct hf_argv *a);

/* ---- process runner ------------------------------------------------------ */

/* Called for each output line of a child (stream 1 = stdout, 2 = stderr);
 * line is borrowed and NUL-terminated, without its newline. */
typedef void (*hf_line_cb)(void *ud, int stream, const char *line);

struct hf_run {
  /* in */
  char *const *argv;        /* borrowed; argv[0] an absolute path, run as is (no PATH search) */
  const char  *cwd;         /* borrowed; NULL = inherit */
  const char  *path_prefix; /* borrowed; directory put first on the child's PATH, or NULL */
  char *const *extra_env;   /* borrowed; NULL-terminated "K=V" added to the fixed environment (<= 8), or NULL */
  int64_t      timeout_ms;  /* > 0: SIGTERM to the child's group at the deadline, SIGKILL 3 s later */
  int          stdout_fd;   /* > 0: the child's stdout goes there and is not captured (0 or -1: captured; fd 0 is the protocol's input, never a target) */
  hf_line_cb   on_line;     /* may be NULL */
  void        *ud;
  size_t       keep_max;    /* tail bytes of output kept in out (0 = 16 KiB) */
  bool         foreground;  /* a probe with a short bound of its own: never niced (hf_run_nice) */
  /* out */
  char        *out;         /* new: the tail of both streams, NUL-terminated; hf_run_free() */
  size_t       out_len;
  int          status;      /* exit code, or 128 + signal number */
  bool         timed_out;
  size_t       lines_dropped; /* lines not passed to on_line because of the per-command cap */
};

/* Runs argv with a minimal, explicit environment and waits for it, streaming
 * each line to on_line (at most HF_RUN_MAX_LINES lines and HF_RUN_MAX_STREAM
 * bytes, each line cut at HF_RUN_MAX_LINE bytes). Returns 0 when it exited 0; HF_ECMD when it exited
 * otherwise; HF_ETIMEDOUT when the deadline killed it; HF_EEXEC when it could
 * not be started (errno of execve in r->status); HF_ENOMEM. */
int  hf_run_exec(struct hf_run *r);
/* The nice value every command of the current request starts with (0: as the agent): 10 for a
 * preflight or stage sent with args.background (a host prepared ahead of its stage). */
extern int hf_run_nice;
/* A command bounded at this or less is a probe (a service's status: 15 s) whose answer a check
 * waits for: it runs at the agent's priority even in background work, because starving it on a
 * busy machine would turn "busy" into a refusal. */
#define HF_RUN_PROBE_MS 60000
void hf_run_free(struct hf_run *r);
/* become: sudo's setuid exec drops PR_SET_PDEATHSIG and Debian's "Defaults
 * use_pty" runs the command in a session of its own, so a killed agent's
 * deadline kill never reaches it. Every command run through sudo is
 * therefore started as `hubfleet-agent --watch PID START -- ARGV`: the agent
 * itself, as root, runs ARGV in its own process group as a subreaper and
 * kills that group (and anything reparented to it) as soon as the agent with
 * that pid and start time is gone, or it gets SIGTERM/SIGHUP. */
int hf_watchdog_main(int argc, char **argv);
/* Start time of this process (/proc/self/stat field 22, clock ticks). */
unsigned long long hf__self_start(void);
#define HF_RUN_MAX_LINES  4000
#define HF_RUN_MAX_LINE   2000
#define HF_RUN_MAX_STREAM (1u << 20)  /* bytes of lines streamed per command */

/* ---- journal --------------------------------------------------------------- */
/* Record on disk: "HFJ1", 4-byte big-endian body length, 32-byte SHA-256 of
 * the body, the body (one JSON object), "\n". A record is complete only when
 * all of it is present and its checksum matches. */
#define HF_JOURNAL_MAGIC     "HFJ1"
#define HF_JOURNAL_HDR       40
#define HF_JOURNAL_MAX_BODY  (256u * 1024)

/* Encodes body (borrowed) as one record in *out (new, free()). */
int hf_journal_encode(const json_t *body, char **out, size_t *outlen);
/* Parses a journal image. *records gets a new array of every complete
 * record's body, in order; *good_len the bytes they span; *torn is set when
 * bytes after them form an incomplete record (a write cut short). Returns 0,
 * or HF_EJOURNAL when a record that is followed by more data is damaged (not
 * a torn tail: the file was corrupted) — then *records is NULL. */
int hf_journal_parse(const char *buf, size_t len, json_t **records, size_t *good_len, bool *torn);
/* Path of the journal of rollout under state_dir. */
int hf_journal_path(const char *state_dir, const char *rollout, char *out, size_t outlen);
/* Reads the journal of rollout: *records new (empty array when no file).
 * HF_EJOURNAL on corruption or read error. */
int hf_journal_read(const char *state_dir, const char *rollout, json_t **records, bool *torn);
/* Appends body (borrowed) with fsync; creates state_dir (0700) and the file
 * (0600, directory fsynced) when missing; cuts a torn tail first so the new
 * record is not hidden behind it. HF_EJOURNAL when anything fails. */
int hf_journal_append(const char *state_dir, const char *rollout, const json_t *body);

/* ---- environments ------------------------------------------------------------ */
struct hf_env {
  char prefix[PATH_MAX];
  char installer[8];        /* "pip" or "conda" */
  char python[24];          /* "3.11.2", "3.11" or "" */
  char site[PATH_MAX];      /* PREFIX/lib/pythonX.Y/site-packages, "" when absent */
  char syssite[2][PATH_MAX];/* system dirs visible through include-system-site-packages */
  int  n_syssite;
  bool exists;
};
/* Inspects prefix without running anything. installer: "pip", "conda" or "auto"/NULL.
 * Returns 0 (e->exists false when the prefix is missing). */
int hf_env_inspect(const char *prefix, const char *installer, struct hf_env *e);
/* Looks up n packages by name in one pass over site-packages (conda-meta for
 * conda); vers[i] receives the version or "" when not installed. */
void hf_env_versions(const struct hf_env *e, const char *const *names, int n, char (*vers)[HF_VER_LEN]);
/* PEP 503 normalisation: lowercase, runs of [-_.] become one '-'. */
void hf_pep503(const char *in, size_t inlen, char *out, size_t outlen);
/* Parses METADATA / PKG-INFO headers (up to the first blank line): Name and
 * Version. 0, or HF_ENOTFOUND when either is missing. */
int hf_metadata_parse(const char *text, size_t len, char *name, size_t namelen, char *ver, size_t verlen);

/* ---- HTTP probe -------------------------------------------------------------- */
struct hf_http_resp {
  int    status;
  char  *body;      /* new, NUL-terminated (after de-chunking) */
  size_t body_len;
};
#define HF_HTTP_MAX_RESP (256u * 1024)
/* GET base_url + path (http only; host a numeric address or "localhost").
 * 0 on any HTTP response; HF_EUNREACH when nothing listens; HF_ETIMEDOUT;
 * HF_EPROTO for a response that is not HTTP/1.x or too big; HF_EUNSUPPORTED
 * for https or a host name that would need DNS. */
int  hf_http_get(const char *base_url, const char *path, int64_t timeout_ms, struct hf_http_resp *r);
/* Parses one complete response image (buf borrowed). 0 or HF_EPROTO. */
int  hf_http_parse(const char *buf, size_t len, struct hf_http_resp *r);
void hf_http_resp_free(struct hf_http_resp *r);

/* ---- the hub's state directory key ------------------------------------------- */
/* The per-hub state directory is hub-KEY (~/.local/state/hubfleet/hub-KEY, or
 * /var/lib/hubfleet/hub-KEY under become): KEY the first 16 hex digits of the
 * SHA-256 of "MACHINE_ID\nCONFIG_PATH", or of CONFIG_PATH alone when the
 * machine has no readable machine id (docs/decisions.md). Never the inventory
 * name: two inventory aliases of one hub share one lock and journal. */
#define HF_HUB_KEY_LEN 16
#define HF_MACHINE_ID_MAX 128
/* KEY for machine_id (NULL or "": none) and the config path into key. */
void hf__hub_key(const char *machine_id, const char *config, char key[HF_HUB_KEY_LEN + 1]);
/* This machine's identity: the first line of /etc/machine-id, else of
 * /var/lib/dbus/machine-id (read with hf_sf_open_read_sys: a regular file,
 * never blocking), trimmed, into out; NULL when neither gives one. */
const char *hf__machine_id(char *out, size_t outlen);

/* ---- SQLite ------------------------------------------------------------------ */
/* "sqlite:///ABS" -> "/ABS" into out; HF_EUNSUPPORTED for other URLs. */
int hf_db_sqlite_path(const char *url, char *out, size_t outlen);
/* Opens the SQLite database at path read-only for facts: refused with err
 * naming it when it is a symlink or not a regular file (a FIFO: checked with
 * the safe open, hf_sf_open_read, and SQLite's own open(2) made non-blocking
 * for FIFOs), SQLITE_OPEN_NOFOLLOW, a 2 s busy timeout. 0, HF_ENOTFOUND,
 * HF_ESTATE or HF_EDB; *db is NULL on failure. */
struct sqlite3;
int hf_db_open_ro(const char *path, struct sqlite3 **db, char *err, size_t errlen);
/* Reads alembic_version and the users count read-only (busy timeout 2 s).
 * alembic "" and users -1 when the table is missing. HF_EDB on failure. */
int hf_db_info(const char *path, char *alembic, size_t alen, int64_t *users, char *err, size_t errlen);
/* Online-backup copy of a possibly live database src to dst (replaced
 * atomically), then PRAGMA integrity_check on the copy and its SHA-256. */
int hf_db_backup(const char *src, const char *dst, char sha[HF_SHA256_HEX], char *err, size_t errlen);
/* PRAGMA integrity_check on the database at path (read-only). 0,
 * HF_EINTEGRITY when it reports damage, HF_EDB when it cannot run. */
int hf_db_integrity(const char *path, char *err, size_t errlen);
/* Copies src to a temporary file beside dst, fsyncs, checks its SHA-256 equals
 * expect_sha (when not NULL), renames it over dst and fsyncs the directory.
 * sha receives the digest of what was written. HF_EINTEGRITY on mismatch. */
int hf_file_install(const char *src, const char *dst, const char *expect_sha, char sha[HF_SHA256_HEX],
                    char *err, size_t errlen);
/* Restores the SQLite database dst from the backup src: a copy beside dst
 * checked against expect_sha first (a damaged backup changes nothing), then
 * dst's -wal/-shm/-journal moved aside, the copy renamed over dst (owner and
 * mode kept) and checked again; the side files are deleted only then, and
 * put back when the rename failed. */
int hf_db_restore(const char *src, const char *dst, const char *expect_sha, char sha[HF_SHA256_HEX],
                  char *err, size_t errlen);

/* ---- the hub description and one request ------------------------------------ */

/* How the hub process is supervised. */
enum hf_svc_kind {
  HF_SVC_SYSTEMD,     /* systemctl start/stop/is-active NAME */
  HF_SVC_SUPERVISORD, /* supervisorctl [-c CONF] start/stop/status NAME */
  HF_SVC_DOCKER,      /* docker start/stop/inspect NAME */
  HF_SVC_COMMAND      /* operator argv for start/stop; "running" = the health URL answers */
};

/* args.hub, parsed. Every pointer is borrowed from the request's args. */
struct hf_hub {
  const char *hub_env;
  const char *user_envs[HF_MAX_ENVS];
  int         n_user_envs;
  const char *config;
  char        config_dir[PATH_MAX];
  const char *db_url;
  char        db_path[PATH_MAX];  /* "" unless sqlite */
  bool        sqlite;
  const json_t *db_dump;          /* argv array or NULL */
  enum hf_svc_kind svc;
  const char *svc_name;           /* after "kind:" */
  const char *supervisor_config;
  const json_t *start_argv, *stop_argv;
  const char *health_url;
  const char *hub_log;
  const char *installer;          /* "pip", "conda", "auto" */
  const char *index_url;
  const char *find_links;
  const json_t *extra_packages;   /* array of "NAME==V" */
  const json_t *report_packages;  /* array of names */
  char        state_dir[PATH_MAX];
  char        backup_dir[PATH_MAX];
  const json_t *backup_homes;
  bool        become;
};

/* Parses and re-checks args.hub (borrowed) into h. HF_EBADARG with a message. */
int hf_hub_parse(const json_t *hub, struct hf_hub *h, char *err, size_t errlen);

/* One request being handled. */
struct hf_req {
  int           in_fd;        /* the controller's side: a hangup here means it is gone */
  int           out_fd;
  bool         *out_dead;     /* set once a write to out_fd failed: events are dropped */
  uint64_t      id;
  const char   *op;
  const json_t *args;         /* borrowed from the request */
  struct hf_hub hub;
  const char   *rollout;      /* borrowed; NULL when absent */
  const char   *target;       /* borrowed; NULL when absent */
  int64_t       timeout_ms;   /* args.timeout_ms or the op's default */
  int64_t       deadline_ms;  /* hf__now_ms() when the op started + timeout_ms */
  char          msg[4096];    /* message of an error result */
};

/* Milliseconds left before the request's deadline, at least 1000: every
 * sub-step of an op (stop, install, start, health inside a rollback) shares
 * the one deadline the caller gave, and the last one still gets a chance. */
int64_t hf__left_ms(const struct hf_req *r);

/* Encodes msg (stolen) as one frame to fd; a result too big to frame is sent as an error
 * result. A failed write sets *dead, and nothing more is sent once it is set (events.c). */
void hf__send_frame(int fd, bool *dead, json_t *msg);
/* Replaces every byte that is not printable ASCII or tab with '?', in place. */
void hf__printable(char *s);
/* Sends one frame (msg stolen). Errors mark the output dead and are dropped:
 * the step goes on to journal its outcome even when the controller is gone. */
void hf__send(struct hf_req *r, json_t *msg);
/* An event line for this request, printf-style; cut to 2000 bytes. */
void hf__event(struct hf_req *r, const char *level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void hf__progress(struct hf_req *r, const char *step, int64_t done, int64_t total);
/* Runs the op named r->op: fills *data (new) on success; on failure returns
 * the code with r->msg set. HF_EUNKNOWNOP when there is no handler. */
int hf__op_dispatch(struct hf_req *r, json_t **data);
/* Whether this agent has a handler for op (every op of proto's HF_OP_MAP should). */
bool hf__op_implemented(enum hf_op_id op);

#endif /* HF_AGENT_INT_H */
