/* plan.c: stage sizes, host-to-stage assignment and the failure budget. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hf_plan.h"
#include "hf_proto.h"

/* Parses one "N" or "P%" element of len bytes. Returns 0 or HF_EINVAL. */
static int parse_size(const char *s, size_t len, bool allow_zero, bool *percent, unsigned *value) {
  char buf[32];
  if (len == 0 || len >= sizeof buf) return HF_EINVAL;
  memcpy(buf, s, len);
  buf[len] = '\0';
  *percent = false;
  if (buf[len - 1] == '%') { *percent = true; buf[--len] = '\0'; }
  if (len == 0) return HF_EINVAL;
  for (size_t i = 0; i < len; i++)
    if (buf[i] < '0' || buf[i] > '9') return HF_EINVAL;
  errno = 0;
  unsigned long v = strtoul(buf, NULL, 10);
  if (errno || v > 1000000 || (!allow_zero && v == 0) || (*percent && v > 100)) return HF_EINVAL;
  *value = (unsigned)v;
  return 0;
}

int hf_plan_parse_stages(const char *spec, struct hf_stages *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  const char *p = spec;
  for (size_t idx = 1;; idx++) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (out->n == HF_PLAN_MAX_STAGES) {
      snprintf(err, errlen, "--stages: more than %d stages", HF_PLAN_MAX_STAGES);
      return HF_EINVAL;
    }
    struct hf_stage_size *sz = &out->size[out->n];
    if (parse_size(p, len, false, &sz->percent, &sz->value) != 0) {
      snprintf(err, errlen, "--stages: element %zu \"%.*s\" is not a host count (\"5\") or a percentage (\"10%%\", 1-100)",
               idx, (int)(len > 20 ? 20 : len), p);
      return HF_EINVAL;
    }
    if (out->n > 0) {
      const struct hf_stage_size *prev = &out->size[out->n - 1];
      if (prev->percent == sz->percent && sz->value < prev->value) {
        snprintf(err, errlen, "--stages: element %zu shrinks (stages are cumulative: each names the hosts done by its end)", idx);
        return HF_EINVAL;
      }
    }
    out->n++;
    if (!comma) break;
    p = comma + 1;
  }
  return 0;
}

int hf_plan_parse_budget(const char *spec, struct hf_budget *out, char *err, size_t errlen) {
  if (parse_size(spec, strlen(spec), true, &out->percent, &out->value) != 0) {
    snprintf(err, errlen, "--max-failures: \"%.20s\" is not a host count (\"2\") or a percentage (\"10%%\")", spec);
    return HF_EINVAL;
  }
  return 0;
}

unsigned hf_plan_budget_hosts(const struct hf_budget *b, size_t nhosts) {
  if (!b->percent) return b->value;
  return (unsigned)((nhosts * b->value) / 100);
}

/* Cumulative host count at the end of a stage of the given size. */
static size_t stage_end(const struct hf_stage_size *sz, size_t nhosts) {
  size_t n = sz->percent ? (nhosts * sz->value + 99) / 100 : sz->value; /* percentages round up: 10% of 8 is 1 */
  return n > nhosts ? nhosts : n;
}

size_t hf_plan_assign(const struct hf_stages *stages, const bool *canary, size_t nhosts,
                      unsigned *stage_of, size_t *order) {
  if (nhosts == 0) return 0;
  size_t ncanary = 0, k = 0;
  for (size_t i = 0; i < nhosts; i++)
    if (canary[i]) order[k++] = i;
  ncanary = k;
  for (size_t i = 0; i < nhosts; i++)
    if (!canary[i]) order[k++] = i;

  /* Cumulative ends of each stage, in rollout order. */
  size_t ends[HF_PLAN_MAX_STAGES + 1], nends = 0;
  if (stages == NULL || stages->n == 0) {
    ends[nends++] = ncanary ? ncanary : 1;
  } else {
    for (size_t s = 0; s < stages->n; s++) ends[nends++] = stage_end(&stages->size[s], nhosts);
    if (ends[0] < ncanary) ends[0] = ncanary;
  }
  ends[nends++] = nhosts; /* the last stage always takes every host left */

  size_t pos = 0, stage = 0;
  for (size_t s = 0; s < nends && pos < nhosts; s++) {
    size_t end = ends[s] < pos ? pos : ends[s];
    if (end == pos) continue; /* empty stage: renumber */
    for (; pos < end; pos++) stage_of[order[pos]] = (unsigned)stage;
    stage++;
  }
  return stage;
}
