/* deploy_cmd: prints the remote command hubfleet runs to start (start HEX)
 * or to upload (upload HEX) the agent, so a test can run exactly it over
 * real ssh with inputs the engine never sends (a cut or corrupted stream). */
#include <stdio.h>
#include <string.h>

#include "hf_ctl_util.h"

int main(int argc, char **argv) {
  char buf[4096];
  if (argc != 3) { fprintf(stderr, "usage: deploy-cmd start|upload HEX\n"); return 2; }
  int r = !strcmp(argv[1], "start") ? hf_deploy_cmd_start(argv[2], buf, sizeof buf)
                                    : hf_deploy_cmd_upload(argv[2], buf, sizeof buf);
  if (r != 0) { fprintf(stderr, "deploy-cmd: bad arguments\n"); return 2; }
  puts(buf);
  return 0;
}
