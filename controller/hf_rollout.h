/* hf_rollout.h: the rollout subcommands (upgrade, resume, rollback, status, history). */
#ifndef HF_ROLLOUT_H
#define HF_ROLLOUT_H
/* Each: argv[0] is the subcommand name; returns an exit code of enum hf_exit. */
int hf_cmd_status(int argc, char **argv);
int hf_cmd_history(int argc, char **argv);
#endif
