/* main.c: hubfleet-agent entry point. */
#include <unistd.h>
#include "hf_agent.h"
int main(void) { return hf_agent_run(STDIN_FILENO, STDOUT_FILENO); }
