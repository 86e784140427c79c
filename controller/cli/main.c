/* main.c: the hubfleet command line: dispatch to subcommands. */
#include <stdio.h>
#include <string.h>
#include "hf_controller.h"
#include "hf_rollout.h"

struct subcmd { const char *name; int (*fn)(int, char **); const char *help; };

static const struct subcmd subcmds[] = {
  { "inventory", hf_cmd_inventory, "check an inventory and print its hosts and variables" },
  { "audit",     hf_cmd_audit,     "versions of every host's hub and user environments, drift flagged" },
  { "upgrade",   hf_cmd_upgrade,   "staged, canary-first upgrade with health gates and a failure budget" },
  { "resume",    hf_cmd_resume,    "continue an interrupted or paused rollout" },
  { "rollback",  hf_cmd_rollback,  "undo every host a rollout changed, from its backups" },
  { "status",    hf_cmd_status,    "a rollout's stages and hosts, from the state file" },
  { "history",   hf_cmd_history,   "every recorded rollout" },
  { "report",    hf_cmd_report,    "a self-contained HTML report of a rollout or an audit" },
  { NULL, NULL, NULL },
};

static void usage(FILE *f) {
  fprintf(f, "usage: hubfleet COMMAND [OPTIONS]\n\ncommands:\n");
  for (const struct subcmd *s = subcmds; s->name; s++)
    fprintf(f, "  %-10s %s\n", s->name, s->help);
  fprintf(f, "\nRun 'hubfleet COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) { usage(stderr); return HF_EXIT_USAGE; }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) { usage(stdout); return 0; }
  if (!strcmp(argv[1], "--version")) { printf("hubfleet %s\n", HF_VERSION); return 0; }
  for (const struct subcmd *s = subcmds; s->name; s++)
    if (!strcmp(argv[1], s->name)) return s->fn(argc - 1, argv + 1);
  fprintf(stderr, "hubfleet: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return HF_EXIT_USAGE;
}
