/* validate.c: placeholder until implemented. */
#include "hf_proto.h"
