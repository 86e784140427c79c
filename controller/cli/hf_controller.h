/* hf_controller.h: the controller's subcommands and shared helpers. */
#ifndef HF_CONTROLLER_H
#define HF_CONTROLLER_H
/* Exit codes (one table: README, --help and man pages repeat it). */
enum hf_exit {
  HF_EXIT_OK = 0,        /* everything done / every host as expected */
  HF_EXIT_FAIL = 1,      /* some hosts failed or differ (audit --expect), rollout halted */
  HF_EXIT_USAGE = 2,     /* bad arguments or bad inventory: nothing was done */
  HF_EXIT_ROLLEDBACK = 3,/* rollout finished, some hosts rolled back */
  HF_EXIT_ATTENTION = 4, /* some host needs attention (rollback failed) */
  HF_EXIT_INTERNAL = 70, /* internal error (state database, out of memory) */
};
/* Each subcommand: argv[0] is the subcommand name. Returns an exit code. */
int hf_cmd_inventory(int argc, char **argv);
int hf_cmd_audit(int argc, char **argv);
#endif
