/* hf_agent.h: the agent's request loop and operations. */
#ifndef HF_AGENT_H
#define HF_AGENT_H
/* Runs the protocol on in_fd/out_fd until EOF or a protocol error. Returns the exit status. */
int hf_agent_run(int in_fd, int out_fd);
#endif
