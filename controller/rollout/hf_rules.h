/* hf_rules.h: version-aware preflight rules (controller/upgrade-rules.json):
 * which of JupyterHub's upgrade notes apply to a from->to pair, and how a
 * host's facts fare against them. */
#ifndef HF_RULES_H
#define HF_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

/* Finds the rules file: explicit path, env HUBFLEET_RULES, next to the
 * executable (build tree), the installed data path. 0 or HF_ENOTFOUND. */
int hf_rules_find(const char *explicit_path, char *buf, size_t len);
/* Loads and validates a rules document; *out new. HF_EINVAL with err naming
 * the file and JSON path. */
int hf_rules_load(const char *path, json_t **out, char *err, size_t errlen);
/* Validates a document already parsed (borrowed). */
int hf_rules_validate(const json_t *doc, char *err, size_t errlen);
/* Whether rule (borrowed) applies to from -> to. from/to may be NULL (unknown:
 * range conditions then do not apply). */
bool hf_rules_applies(const json_t *rule, const char *from, const char *to, bool schema_change);
/* Evaluates every applicable rule against a host's preflight facts
 * (borrowed: {envs:[{role, prefix, jupyterhub, python}], db:{running_servers},
 * rehearsal:{alembic_before, alembic_after}}). Returns a new array of
 * {name, outcome: pass/warn/refuse, detail, title, link}. */
json_t *hf_rules_eval(const json_t *doc, const char *target, const json_t *facts);

#endif
