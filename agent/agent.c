/* agent.c: placeholder. */
#include "hf_agent.h"
int hf_agent_run(int in_fd, int out_fd) { return 0; }
