/* main.c: hubfleet-agent entry point: --version, otherwise the protocol on stdin/stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_agent.h"
#include "hf_proto.h"
#include "hub.h"

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--version") == 0) {
    printf("hubfleet-agent %s (protocol %d)\n", HF_VERSION, HF_PROTO_VERSION);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "--watch") == 0) return hf_watchdog_main(argc, argv);
  if (argc == 3 && strcmp(argv[1], "--become") == 0) {
    /* One request of an agent with become, run as root (hf__become_relay). */
    if (geteuid() != 0) {
      fprintf(stderr, "hubfleet-agent --become: not running as root (run by the agent through sudo -n)\n");
      return 2;
    }
    hf__outer_pid = atoi(argv[2]);
    return hf_agent_run(STDIN_FILENO, STDOUT_FILENO);
  }
  if (argc != 1) {
    fprintf(stderr, "usage: hubfleet-agent [--version]\n"
                    "Speaks the hubfleet protocol on stdin/stdout; started by hubfleet over SSH.\n");
    return 2;
  }
  return hf_agent_run(STDIN_FILENO, STDOUT_FILENO);
}
