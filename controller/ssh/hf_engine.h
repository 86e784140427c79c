/* hf_engine.h: the controller's connection engine: one libuv loop, one
 * non-blocking libssh session per host, agent deployment, request/result.
 *
 * Internal to controller/ (it includes uv.h). The audit and the rollout
 * scheduler both sit on it.
 *
 * Lifecycle of one host:
 *   hf_session_open()  -> queued until a --parallel slot is free, then
 *   resolve -> TCP connect -> SSH banner/kex (retried with backoff when sshd
 *   drops it) -> host key check -> auth -> agent probe (+ upload: at most
 *   max_uploads at once; a host waiting for its turn probes again first) ->
 *   hello -> ready: cbs.ready(sess, 0) fires once.
 * A phase deadline (timeout_ms) measures the host's silence: it is pushed
 * back whenever the host sends bytes, and never runs while the session waits
 * in a queue of ours (slot, handshake, upload).
 *   hf_session_request() any number of times, one at a time: events stream
 *   to on_event, then exactly one on_result.
 *   hf_session_close() when done (always, also after a failure); the session
 *   is freed after its close callback.
 * A connection lost while idle fires cbs.lost once (the agent exited, the
 * peer closed, or TCP keepalives found the link dead: within ~35 s); the
 * session stays failed until closed. To reconnect, close it and open a new
 * one.
 *
 * libuv contract: a call that returns an error never fires its callback.
 * Callbacks are never called from inside the call that starts them
 * (always from the loop), so callers may hold state across the call.
 *
 * Ownership: struct hf_host pointers are borrowed and must outlive the
 * session; json_t given to hf_session_request is stolen; json_t handed to
 * callbacks is borrowed for the duration of the callback.
 */
#ifndef HF_ENGINE_H
#define HF_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include <jansson.h>

#include "hf_inventory.h"

/* The ciphers offered to every host, in this order: AES-GCM first (AES-NI
 * makes it the cheapest here), then libssh's other defaults. The benchmark
 * peer (tests/bench/ssh-floor) offers the same. */
#define HF_SSH_CIPHERS "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com," \
                       "aes256-ctr,aes192-ctr,aes128-ctr"

struct hf_engine;
struct hf_session;

struct hf_engine_opts {
  int         parallel;         /* sessions open at once (slots); <= 0 means 50 */
  int         endpoint_handshakes; /* SSH handshakes in flight per endpoint (address:port or jump); <= 0 means 8 */
  int         max_handshakes;   /* handshakes in flight overall; <= 0 means 64 */
  int         max_retries;      /* retries of connections dropped in banner/kex; < 0 means 10 */
  int         max_uploads;      /* agent uploads in flight at once; <= 0 means 8 */
  unsigned    timeout_ms;       /* deadline of each phase (connect, handshake, deploy, hello); 0 means 15000 */
  unsigned    request_timeout_ms; /* default deadline of a request; 0 means 60000 */
  const char *known_hosts;      /* --known-hosts (borrowed), NULL = host's, else ~/.ssh/known_hosts */
  bool        accept_new;       /* trust unknown (never changed) host keys and write them back */
  const char *agent_path;       /* hubfleet-agent to deploy (borrowed, resolved by hf_engine_find_agent) */
  uint64_t    seed;             /* jitter seed; 0 = from time */
  int         verbose;          /* 1: log state transitions to stderr */
};

struct hf_engine_stats {
  uint64_t sessions;        /* sessions opened */
  uint64_t retries;         /* handshake retries after sshd dropped the connection */
  uint64_t uploads;         /* agent uploads started */
  uint64_t upload_bytes;    /* bytes of the compressed agent sent */
  uint64_t reused;          /* agents found in the host's cache */
  uint64_t upload_skipped;  /* of which found after waiting for an upload slot: another
                               host sharing the home had uploaded it meanwhile */
  uint64_t agent_bytes;     /* size of the agent binary, and of what one upload sends */
  uint64_t payload_bytes;
  uint64_t max_stall_ns;    /* longest loop stall: wall time of one iteration's own work,
                               computing or blocked in a call (not waiting in poll, and not
                               runnable-but-waiting for a CPU the kernel gave to other
                               processes; that is in max_stall_wall_ns) */
  uint64_t max_stall_wall_ns;/* longest iteration in wall time, run-queue waits included */
  uint64_t max_stall_cpu_ns;/* most CPU one loop iteration used */
  uint64_t deferred;        /* socket wakeups left to the next iteration (work budget) */
  uint64_t cpu_us;          /* process user+system CPU (getrusage) at hf_engine_stats() */
  uint64_t maxrss_kb;
  int      peak_handshakes; /* most handshakes in flight at once */
};

/* Session states, in order. One transition function logs every change. */
enum hf_sess_state {
  HF_SS_QUEUED,      /* waiting for a --parallel slot */
  HF_SS_RESOLVING,   /* uv_getaddrinfo in the thread pool */
  HF_SS_WAITSLOT,    /* waiting for a handshake slot of its endpoint */
  HF_SS_CONNECTING,  /* non-blocking TCP connect in progress */
  HF_SS_HANDSHAKE,   /* SSH banner and key exchange (ssh_connect) */
  HF_SS_BACKOFF,     /* dropped during banner/kex; waiting to retry */
  HF_SS_AUTH,        /* public key authentication (agent or key files) */
  HF_SS_CHANOPEN,    /* opening the exec channel that starts the agent */
  HF_SS_EXEC,        /* exec request of the probe-and-start command */
  HF_SS_PROBE,       /* first bytes: agent hello, or the upload marker */
  HF_SS_UPWAIT,      /* the agent is missing: waiting for an upload slot, then probing again
                        (hosts sharing a home find the copy another upload wrote) */
  HF_SS_UPOPEN,      /* opening the upload channel */
  HF_SS_UPEXEC,      /* exec request of the upload command */
  HF_SS_UPLOAD,      /* streaming the agent binary to the host */
  HF_SS_UPVERIFY,    /* stdin closed; waiting for the remote checksum verdict */
  HF_SS_HELLO,       /* agent started; waiting for its hello frame */
  HF_SS_READY,       /* idle, a request may be sent */
  HF_SS_BUSY,        /* a request is in flight */
  HF_SS_FAILED,      /* unusable; reason in hf_session_error(); waiting for close */
  HF_SS_CLOSING,     /* close requested; handles closing */
  HF_SS__COUNT
};

/* Fired once per session: status 0 when the agent said hello, else a
 * negative HF_E* code (hf_session_error() has the message). */
typedef void (*hf_session_ready_cb)(struct hf_session *s, int status, void *ctx);
/* Fired at most once after ready when the connection dies while idle. */
typedef void (*hf_session_lost_cb)(struct hf_session *s, int status, void *ctx);
/* One event frame of the request in flight; ev borrowed. */
typedef void (*hf_event_cb)(struct hf_session *s, const json_t *ev, void *ctx);
/* The request's outcome: status 0 and data (borrowed, the result's "data"),
 * or a negative HF_E* code with message (borrowed): the agent's error, or a
 * local one (timeout, lost connection, protocol error, HF_ECANCELED on close). */
typedef void (*hf_result_cb)(struct hf_session *s, int status, const json_t *data,
                             const char *message, void *ctx);
typedef void (*hf_close_cb)(struct hf_session *s, void *ctx);

/* Creates an engine on loop (borrowed). Reads the agent binary and its
 * SHA-256 once. Returns 0 and *out (new), or HF_EINVAL / HF_EIO (agent
 * unreadable, err has the message) / HF_ENOMEM. */
int hf_engine_new(uv_loop_t *loop, const struct hf_engine_opts *opts,
                  struct hf_engine **out, char *err, size_t errlen);
/* Frees the engine; every session must be closed (their close callbacks
 * fired) first. Like a libuv handle, its memory goes when the loop runs once
 * more (uv_run) after this call. Accepts NULL. */
void hf_engine_free(struct hf_engine *e);
/* Fills *st (cpu and rss sampled now). */
void hf_engine_stats(struct hf_engine *e, struct hf_engine_stats *st);
/* Sessions that run at once: --parallel, or fewer when the open-file limit
 * (raised toward its hard limit at start) cannot hold that many (a notice
 * then went to stderr). */
int hf_engine_parallel(const struct hf_engine *e);
/* The deployed agent's hex SHA-256 (borrowed from the engine). */
const char *hf_engine_agent_sha256(const struct hf_engine *e);

/* Finds the agent: explicit path, env HUBFLEET_AGENT, ../agent/hubfleet-agent
 * next to the running executable (build tree), HF_AGENT_INSTALLED_PATH.
 * Writes the path into buf. Returns 0 or HF_ENOTFOUND. */
int hf_engine_find_agent(const char *explicit_path, char *buf, size_t len);

/* Opens a session to host (borrowed; must outlive the session). ready fires
 * once; lost may be NULL. Returns 0 and *out (owned by the engine until the
 * close callback), or HF_ENOMEM / HF_EINVAL without firing anything. */
int hf_session_open(struct hf_engine *e, const struct hf_host *host,
                    hf_session_ready_cb ready, hf_session_lost_cb lost, void *ctx,
                    struct hf_session **out);
/* Sends one request. args is stolen (may be NULL = {}). timeout_ms 0 = the
 * engine's default. Returns 0 (then on_result fires exactly once), or
 * HF_ESTATE (not ready / a request in flight), HF_EUNKNOWNOP, HF_ENOMEM,
 * HF_ETOOBIG: then nothing fires. */
int hf_session_request(struct hf_session *s, const char *op, json_t *args,
                       unsigned timeout_ms, hf_event_cb on_event,
                       hf_result_cb on_result, void *ctx);
/* Closes the session: a request in flight ends with HF_ECANCELED; a pending
 * ready fires with HF_ECANCELED. cb (may be NULL) fires after every handle is
 * closed; the session is freed right after it. Calling it twice is a no-op. */
void hf_session_close(struct hf_session *s, hf_close_cb cb, void *ctx);

/* Accessors; strings borrowed from the session. */
const struct hf_host *hf_session_host(const struct hf_session *s);
enum hf_sess_state hf_session_state(const struct hf_session *s);
const char *hf_sess_state_name(enum hf_sess_state st);
/* The last error's message for people ("" when none) and its HF_E* code. */
const char *hf_session_error(const struct hf_session *s);
int hf_session_errcode(const struct hf_session *s);
/* Agent facts from hello: version and arch ("" before hello). */
const char *hf_session_agent_version(const struct hf_session *s);
/* Handshake retries this session needed. */
int hf_session_retries(const struct hf_session *s);
/* Whether this session uploaded the agent. */
bool hf_session_uploaded(const struct hf_session *s);
/* Whether the session was lost: it failed after ready (connection dropped,
 * agent exited, a deadline passed), so a request in flight may or may not
 * have run on the host. Only a close follows; a failed session never comes
 * back (a late resolve, timer or socket event is ignored). */
bool hf_session_lost(const struct hf_session *s);

#endif /* HF_ENGINE_H */
