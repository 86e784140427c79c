/* hub.h: helpers of the agent's operations for acting on a hub (internal to agent/). */
#ifndef HF_AGENT_HUB_H
#define HF_AGENT_HUB_H

#include "agent_int.h"

/* Absolute path of prog in the fixed system directories (no $PATH from the
 * session), into out; returns out, or NULL when absent. */
const char *hf__which(const char *prog, char *out, size_t outlen);
/* Starts an argv for r: "sudo -n --" first when the hub asks for become. */
void hf__argv_start(struct hf_req *r, struct hf_argv *a);
/* Runs a (borrowed), streaming its lines as events tagged tag (unless quiet);
 * extra_env (borrowed, NULL-terminated "K=V", may be NULL) is added to the
 * child's fixed environment.
 * On failure r->msg says what ran and how it failed (with the output's tail).
 * *out (new, may be NULL) gets the kept output when out is not NULL. */
int hf__cmd(struct hf_req *r, struct hf_argv *a, const char *cwd, const char *path_prefix,
            char *const *extra_env, int64_t timeout_ms, const char *tag, bool quiet, char **out);
/* Runs a quietly and gives its stdout alone in *so (new; stderr only
 * counts for r->msg on failure). */
int hf__cmd_stdout(struct hf_req *r, struct hf_argv *a, int64_t timeout_ms, const char *tag, char **so);
const char *hf__svc_kind_name(enum hf_svc_kind k);
/* Is the hub running, per its supervisor; state gets the supervisor's word. */
int hf__svc_status(struct hf_req *r, bool *running, char *state, size_t statelen);
/* Stops the hub and confirms it is gone (within r->timeout_ms). */
int hf__svc_stop(struct hf_req *r, bool *was_running);
/* Starts the hub and confirms its supervisor reports it up. */
int hf__svc_start(struct hf_req *r, bool *was_running);

/* The journal of the hub's systemd unit since since_us (wall-clock
 * microseconds), its last `lines` lines, stdout only (new), or NULL. */
char *hf__unit_journal(struct hf_req *r, int64_t since_us, int lines);
/* Wall-clock microseconds. */
int64_t hf__wall_us(void);
/* systemd: the unit's own words since since_us (its last journal lines,
 * joined by " | ") into out; "" for other services or when none. */
void hf__unit_words(struct hf_req *r, int64_t since_us, char *out, size_t outlen);
/* become (hub.become and not root): runs the request r in this agent's own
 * binary as root, `sudo -n -- AGENT --watch PID START -- AGENT --become PID`,
 * its events passed on as they come; *data (new) gets its result's data.
 * sudo missing, asking for a password or refused: an error naming the cause
 * (r->msg), nothing run. */
int hf__become_relay(struct hf_req *r, json_t **data);
/* The pid an operator sees as "the agent": the SSH session's agent, also
 * inside its sudo'd copy (--become PID sets hf__outer_pid). */
extern int hf__outer_pid;
int hf__agent_pid(void);

#endif /* HF_AGENT_HUB_H */
