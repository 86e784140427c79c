/* hf_prom.h: audits as Prometheus metrics (node_exporter textfile collector). */
#ifndef HF_PROM_H
#define HF_PROM_H

#include <stddef.h>
#include <jansson.h>
#include "hf_inventory.h"

/* Writes the audit document doc (borrowed; the output of `audit --json`) as
 * metrics to path atomically: a temporary file in the same directory, fsync,
 * rename. inv (borrowed, may be NULL) supplies the hosts' groups. Returns 0,
 * or HF_EIO / HF_EINVAL with err filled; path is untouched on error. */
int hf_prom_write_audit(const char *path, const json_t *doc, const struct hf_inventory *inv, double wall_s,
                        char *err, size_t errlen);

#endif
