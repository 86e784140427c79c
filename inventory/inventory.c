/* inventory.c: placeholder until implemented. */
#include "hf_inventory.h"
