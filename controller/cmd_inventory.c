/* cmd_inventory.c: placeholder. */
#include "hf_controller.h"
int hf_cmd_inventory(int argc, char **argv) { return 2; }
