/* hf_plan.h: a rollout's plan: stages, which hosts go in which stage, and the
 * one failure budget for the whole rollout. Pure code, no I/O. */
#ifndef HF_PLAN_H
#define HF_PLAN_H

#include <stddef.h>
#include <stdbool.h>

#define HF_PLAN_MAX_STAGES 32

/* One stage size as written on the command line: an absolute count ("1") or
 * a percentage of the selected hosts ("10%"). Sizes are cumulative. */
struct hf_stage_size {
  bool     percent;
  unsigned value;   /* hosts, or percent 1..100 */
};

struct hf_stages {
  struct hf_stage_size size[HF_PLAN_MAX_STAGES];
  size_t               n;
};

/* A failure budget: "N" hosts or "P%" of the selected hosts. */
struct hf_budget {
  bool     percent;
  unsigned value;
};

/* Parses "1,10%,50%,100%". Sizes must not shrink when both are absolute or
 * both are percentages; the last stage is always extended to every host.
 * Returns 0 or HF_EINVAL with err (errlen bytes) naming the bad element. */
int hf_plan_parse_stages(const char *spec, struct hf_stages *out, char *err, size_t errlen);
/* Parses "0", "3", "10%". Returns 0 or HF_EINVAL with err filled. */
int hf_plan_parse_budget(const char *spec, struct hf_budget *out, char *err, size_t errlen);
/* The budget in hosts for nhosts selected hosts (percent rounds down). */
unsigned hf_plan_budget_hosts(const struct hf_budget *b, size_t nhosts);

/* Assigns every host a stage. canary[i] tells whether host i is in the canary
 * group; canaries come first in host order, then the others in host order.
 * When stages is NULL the default applies: the canary group (or one host if
 * there is none), then the rest. Hosts of the canary group always form at
 * least the first stage: a first stage smaller than the canary group grows to
 * hold it. stage_of (nhosts entries, caller's) receives 0-based stage
 * numbers; order (nhosts entries) receives host indexes in rollout order.
 * Returns the number of non-empty stages (>= 1 when nhosts > 0), stages
 * renumbered so that none is empty. */
size_t hf_plan_assign(const struct hf_stages *stages, const bool *canary, size_t nhosts,
                      unsigned *stage_of, size_t *order);

#endif /* HF_PLAN_H */
