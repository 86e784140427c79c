/* errors.c: the project's one error table: enum names, stable wire codes and messages. */
#include <string.h>

#include "hf_proto.h"

/* One row per HF_E* value, in enum order, so the row for err is
 * err - HF__EFIRST - 1; built from the same X-macro as the enum so the two
 * cannot drift apart. */
struct hf_err_row {
  int         err;
  const char *name;
  const char *code;
  const char *msg;
};

static const struct hf_err_row hf_err_rows[] = {
#define HF_ERR_ROW(name, code, msg) { HF_##name, "HF_" #name, code, msg },
  HF_ERRNO_MAP(HF_ERR_ROW)
#undef HF_ERR_ROW
};

#define HF_ERR_NROWS (sizeof hf_err_rows / sizeof hf_err_rows[0])

/* Returns the row for err (borrowed, static), or NULL when err is not in the
 * table (including HF_OK and any positive value). */
static const struct hf_err_row *hf__err_row(int err) {
  long i = (long)err - (long)HF__EFIRST - 1;
  if (i < 0 || (size_t)i >= HF_ERR_NROWS)
    return NULL;
  return &hf_err_rows[i];
}

const char *hf_err_name(int err) {
  const struct hf_err_row *r;
  if (err == HF_OK)
    return "HF_OK";
  r = hf__err_row(err);
  return r != NULL ? r->name : "HF_UNKNOWN";
}

const char *hf_err_code(int err) {
  const struct hf_err_row *r;
  if (err == HF_OK)
    return "ok";
  r = hf__err_row(err);
  return r != NULL ? r->code : "unknown";
}

const char *hf_strerror(int err) {
  const struct hf_err_row *r;
  if (err == HF_OK)
    return "success";
  r = hf__err_row(err);
  return r != NULL ? r->msg : "unknown error";
}

int hf_err_from_code(const char *code) {
  size_t i;
  if (code == NULL)
    return HF_EPROTO;
  for (i = 0; i < HF_ERR_NROWS; i++)
    if (strcmp(hf_err_rows[i].code, code) == 0)
      return hf_err_rows[i].err;
  /* A code we do not know came from a newer peer or a hostile one; either way
   * the exchange is not something we can interpret. */
  return HF_EPROTO;
}
