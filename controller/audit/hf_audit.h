/* hf_audit.h: folding of per-host audit answers into groups, drift and
 * mismatch findings, and their rendering (table and JSON). Pure code. */
#ifndef HF_AUDIT_H
#define HF_AUDIT_H

#include <stdbool.h>
#include <stdio.h>
#include <jansson.h>

/* hosts (borrowed): array of per-host records
 *   {"name": S, "ok": true, "facts": {...facts data...}}
 *   {"name": S, "ok": false, "error": {"code": S, "message": S}}
 * expect: version the whole fleet should run, or NULL.
 * Returns a new document:
 *   {"summary": {"total","audited","failed","differ"},
 *    "groups": [{"hub","users":[...],"alembic","count","hosts":[...]}], (largest first)
 *    "versions": {"V": hosts running V in any environment},
 *    "drift": bool (more than one jupyterhub version in the fleet),
 *    "mismatch": [{"host","hub","users":[...]}] (hub vs single-user major differs),
 *    "failed": [{"host","code","message"}],
 *    "expect": V or null, "differ": [host names not on V (failed hosts included)],
 *    "hosts": hosts}
 * NULL only on out-of-memory. */
json_t *hf_audit_fold(const json_t *hosts, const char *expect);

/* Major version number of a version string ("5.2.1" -> 5); -1 when it does
 * not start with a digit. */
long hf_audit_major(const char *version);

/* Writes the human table for a folded document. max_names: host names shown
 * per group. */
void hf_audit_print(FILE *f, const json_t *doc, int max_names);

/* The exit code the document calls for: HF_EXIT_OK, or HF_EXIT_FAIL when a
 * host failed or (with expect) differs. */
int hf_audit_exit_code(const json_t *doc);

#endif /* HF_AUDIT_H */
