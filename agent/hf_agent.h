/* hf_agent.h: the agent's request loop (the only entry point of hubfleet-agent). */
#ifndef HF_AGENT_H
#define HF_AGENT_H

/* Speaks the protocol of docs/protocol.md: writes hello to out_fd, then
 * answers each request frame read from in_fd with events and exactly one
 * result, one request at a time. Neither fd is closed. Returns the process
 * exit status: 0 after EOF between frames; 3 after a frame that breaks the
 * protocol (bad JSON, oversize, not a request, no usable id, EOF inside a
 * frame), which was answered with one result of id 0; 1 when the hello could
 * not be written or stdin failed. Never returns on a signal it ignores
 * (SIGPIPE, SIGHUP): a step that lost its controller finishes and journals. */
int hf_agent_run(int in_fd, int out_fd);

#endif /* HF_AGENT_H */
