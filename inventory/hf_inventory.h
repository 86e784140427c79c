/* hf_inventory.h: reads an Ansible inventory (INI, or the JSON that
 * `ansible-inventory --list` prints) into one validated host list.
 *
 * Ownership: hf_inv_load hands back a new inventory; hf_inv_free releases it
 * and everything it points to (and accepts NULL). Pointers inside are
 * borrowed from the inventory.
 */
#ifndef HF_INVENTORY_H
#define HF_INVENTORY_H

#include <stddef.h>
#include <stdbool.h>
#include <jansson.h>

struct hf_host {
  char   *name;          /* inventory hostname */
  char   *address;       /* ansible_host, else name */
  int     port;          /* ansible_port, default 22 */
  char   *user;          /* ansible_user, NULL = current user */
  char   *key_file;      /* ansible_ssh_private_key_file, NULL = agent/default keys; a leading ~ is expanded */
  char   *known_hosts;   /* hubfleet_known_hosts, NULL = ~/.ssh/known_hosts; a leading ~ is expanded */
  char   *jump;          /* hubfleet_jump: [user@]host[:port], NULL = direct */
  char  **groups;        /* groups the host belongs to (direct and inherited), sorted */
  size_t  ngroups;
  bool    canary;        /* member of group "canary" */
  json_t *hub;           /* the protocol's hub description (docs/protocol.md), validated */
  json_t *vars;          /* every variable of the host after merging (strings/numbers/bools/lists) */
};

struct hf_inventory {
  char           *path;
  struct hf_host *hosts;   /* in inventory order, each name once */
  size_t          nhosts;
  json_t         *byname;  /* name -> index in hosts (hf_inv_find), or NULL */
};

struct hf_inv_error {
  char file[512];
  int  line;          /* INI: 1-based line; 0 when not applicable */
  char where[256];    /* JSON path (e.g. "_meta.hostvars.hub01.hubfleet_become") or "" */
  char message[512];  /* what was wrong and what was expected */
};

/* Loads path, detecting the format (JSON when the first non-blank byte is
 * '{', or '[' opening a JSON array; INI otherwise). Variables, types,
 * precedence and errors: docs/inventory.md. Returns 0 and *out (new), or HF_EINVENTORY (or
 * HF_EIO / HF_ENOMEM) with err filled; nothing is half-loaded: *out is NULL
 * on any error. */
int hf_inv_load(const char *path, struct hf_inventory **out, struct hf_inv_error *err);
/* The same with flags. HF_INV_LEAN: each host keeps its hub description and
 * connection fields but not every merged variable (vars is NULL): what an
 * audit or a rollout needs, in a third less memory per host, and each host's
 * own variables are let go as soon as it is resolved. */
#define HF_INV_LEAN 1u
int hf_inv_load_flags(const char *path, unsigned flags, struct hf_inventory **out, struct hf_inv_error *err);
/* Same, from memory; name is used in messages. */
int hf_inv_load_buffer(const char *name, const char *data, size_t len,
                       struct hf_inventory **out, struct hf_inv_error *err);
void hf_inv_free(struct hf_inventory *inv);
/* Formats err as "FILE:LINE: message" or "FILE: JSON-PATH: message" into buf. */
void hf_inv_error_format(const struct hf_inv_error *err, char *buf, size_t len);
/* Finds a host by name; NULL when absent. Borrowed. */
const struct hf_host *hf_inv_find(const struct hf_inventory *inv, const char *name);
/* Host selection with Ansible-like patterns: "all", a host name, a group name,
 * shell globs on host names ("hub0*"), comma/colon-separated unions, "!x" to
 * exclude. Returns true when host matches pattern. */
bool hf_inv_match(const struct hf_host *h, const char *pattern);
/* The whole inventory as JSON, new (NULL only when out of memory):
 *   {"path": FILE, "hosts": [{"name", "address", "port", "user", "key_file",
 *     "known_hosts", "jump" (null when unset), "groups": [...], "canary",
 *     "hub": {...the hub description...}, "vars": {...merged variables...}}]} */
json_t *hf_inv_to_json(const struct hf_inventory *inv);
/* A database URL as people may see it: a password in its user info
 * (scheme://user:PASSWORD@host) or in a password= query parameter becomes
 * "***". Anything else is copied as is. Writes into buf (truncated to len). */
void hf_inv_redact_url(const char *url, char *buf, size_t len);

#endif /* HF_INVENTORY_H */
