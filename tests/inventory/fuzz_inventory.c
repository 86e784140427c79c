/* fuzz_inventory.c: libFuzzer target: any bytes load as an inventory or fail cleanly. */
#include <stdint.h>
#include <stdlib.h>

#include "hf_inventory.h"
#include "hf_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct hf_inventory *inv = NULL;
  struct hf_inv_error err;
  char buf[256];
  int r = hf_inv_load_buffer("fuzz", (const char *)data, size, &inv, &err);
  if (r == 0) {
    json_t *j = hf_inv_to_json(inv);
    if (j == NULL || inv->nhosts == 0) abort();
    for (size_t i = 0; i < inv->nhosts; i++)
      if (hf_proto_hub_validate(inv->hosts[i].hub, "hub", buf, sizeof buf) != 0 ||
          !hf_inv_match(&inv->hosts[i], "all") || hf_inv_find(inv, inv->hosts[i].name) == NULL)
        abort();
    json_decref(j);
  } else {
    if (inv != NULL || err.message[0] == '\0') abort();
    hf_inv_error_format(&err, buf, sizeof buf);
  }
  hf_inv_free(inv);
  return 0;
}
