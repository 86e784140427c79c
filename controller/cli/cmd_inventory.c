/* cmd_inventory.c: `hubfleet inventory check|list`: show what every host resolves to, or why not. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_controller.h"
#include "hf_inventory.h"
#include "hf_proto.h"
#include "hf_sanitize.h"

static void inv_usage(FILE *f) {
  fprintf(f,
    "usage: hubfleet inventory check FILE [--json]\n"
    "       hubfleet inventory list FILE [--limit PATTERN]\n"
    "\n"
    "FILE is an Ansible INI inventory or the JSON printed by `ansible-inventory --list`;\n"
    "'-' reads it from standard input.\n"
    "\n"
    "  check   print every host with its connection settings, groups and hub\n"
    "          variables (--json: the same as one JSON document)\n"
    "  list    print the host names, one per line, optionally only those matching\n"
    "          PATTERN: all, a host or group name, globs (hub0*), unions (a,b or a:b),\n"
    "          !x to exclude, &x to intersect\n"
    "\n"
    "Variables are described in docs/inventory.md.\n"
    "Exit status: 0 valid, 2 bad arguments or invalid inventory (the error names\n"
    "FILE:LINE or FILE: JSON.path and what was expected), 70 internal error.\n");
}

/* Loads path or prints the precise error; returns an exit code. */
static int load(const char *path, struct hf_inventory **inv) {
  struct hf_inv_error err;
  char msg[1400];
  /* "-" reads standard input: ansible-inventory --list | hubfleet inventory check - */
  int r = hf_inv_load(strcmp(path, "-") ? path : "/dev/stdin", inv, &err);
  if (r == 0) return HF_EXIT_OK;
  hf_inv_error_format(&err, msg, sizeof msg);
  /* Exactly FILE:LINE: message (or FILE: PATH: message), as compilers do,
   * so editors and scripts can jump to the place. */
  fprintf(stderr, "%s\n", msg);
  return r == HF_ENOMEM ? HF_EXIT_INTERNAL : HF_EXIT_USAGE;
}

/* Prints a hub value: strings bare, arrays joined with sep, others as JSON. */
static void print_value(const json_t *v, const char *sep) {
  if (json_is_string(v)) {
    fputs(json_string_value(v), stdout);
  } else if (json_is_array(v)) {
    size_t i;
    if (json_array_size(v) == 0) fputs("(none)", stdout);
    for (i = 0; i < json_array_size(v); i++) {
      const json_t *e = json_array_get(v, i);
      if (i) fputs(sep, stdout);
      if (json_is_string(e)) fputs(json_string_value(e), stdout);
    }
  } else {
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    fputs(s ? s : "?", stdout);
    free(s);
  }
}

/* How the host's hub will be driven: its supervisor and tool, and whether
 * the agent runs its steps as root through sudo -n (become) or as the SSH
 * login; the same words as the dry run's "driven" check. */
static void driven(const struct hf_host *h, char *out, size_t outlen) {
  const char *svc = json_string_value(json_object_get(h->hub, "service"));
  const char *tool;
  bool become = json_is_true(json_object_get(h->hub, "become"));
  bool root = h->user != NULL && strcmp(h->user, "root") == 0;
  if (svc == NULL) svc = "systemd:jupyterhub";
  tool = !strncmp(svc, "systemd:", 8) ? "systemctl" : !strncmp(svc, "supervisord:", 12) ? "supervisorctl"
       : !strncmp(svc, "docker:", 7) ? "docker" : "the inventory's start/stop commands";
  snprintf(out, outlen, "%s through %s, %s", svc, tool,
           root ? "as root (the SSH login)" : become ? "as root through sudo -n (become)"
                : "as the SSH login, no sudo (become off)");
}

static void print_host(const struct hf_host *h) {
  char how[256];
  const char *k;
  json_t *v;
  size_t i;
  printf("%s\n", h->name);
  printf("  %-18s %s%s%s:%d\n", "ssh", h->user ? h->user : "", h->user ? "@" : "", h->address, h->port);
  printf("  %-18s %s\n", "key_file", h->key_file ? h->key_file : "(ssh-agent / default keys)");
  printf("  %-18s %s\n", "known_hosts", h->known_hosts ? h->known_hosts : "~/.ssh/known_hosts");
  if (h->jump) printf("  %-18s %s\n", "jump", h->jump);
  printf("  %-18s ", "groups");
  if (h->ngroups == 0) fputs("(ungrouped)", stdout);
  for (i = 0; i < h->ngroups; i++) printf("%s%s", i ? ", " : "", h->groups[i]);
  printf("%s\n", h->canary ? "  [canary: goes first]" : "");
  driven(h, how, sizeof how);
  printf("  %-18s %s\n", "driven", how);
  json_object_foreach(h->hub, k, v) {
    printf("  %-18s ", k);
    if (!strcmp(k, "db") && json_is_string(v)) {   /* a password in the URL is never shown */
      char red[4096];
      hf_inv_redact_url(json_string_value(v), red, sizeof red);
      puts(red);
      continue;
    }
    /* argv lists read best as the command line they are. */
    print_value(v, !strcmp(k, "start") || !strcmp(k, "stop") || !strcmp(k, "db_dump") ? " " : ", ");
    putchar('\n');
  }
}

static int cmd_check(const char *path, int as_json) {
  struct hf_inventory *inv = NULL;
  size_t i, ncanary = 0;
  int rc = load(path, &inv);
  if (rc != HF_EXIT_OK) return rc;
  if (as_json) {
    json_t *j = hf_inv_to_json(inv), *hj;
    char *s, how[256];
    json_array_foreach(json_object_get(j, "hosts"), i, hj) {
      if (i >= inv->nhosts) break;
      driven(&inv->hosts[i], how, sizeof how);
      json_object_set_new(hj, "driven", json_string(how));
    }
    s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (s == NULL) { hf_inv_free(inv); fprintf(stderr, "hubfleet: out of memory\n"); return HF_EXIT_INTERNAL; }
    puts(s);
    free(s);
  } else {
    for (i = 0; i < inv->nhosts; i++) ncanary += inv->hosts[i].canary;
    printf("%s: %zu host%s, %zu canary\n", path, inv->nhosts, inv->nhosts == 1 ? "" : "s", ncanary);
    for (i = 0; i < inv->nhosts; i++) {
      putchar('\n');
      print_host(&inv->hosts[i]);
    }
  }
  hf_inv_free(inv);
  return fflush(stdout) == 0 ? HF_EXIT_OK : HF_EXIT_INTERNAL;
}

static int cmd_list(const char *path, const char *limit) {
  struct hf_inventory *inv = NULL;
  size_t i;
  int rc = load(path, &inv);
  if (rc != HF_EXIT_OK) return rc;
  for (i = 0; i < inv->nhosts; i++)
    if (limit == NULL || hf_inv_match(&inv->hosts[i], limit)) puts(inv->hosts[i].name);
  hf_inv_free(inv);
  return fflush(stdout) == 0 ? HF_EXIT_OK : HF_EXIT_INTERNAL;
}

int hf_cmd_inventory(int argc, char **argv) {
  hf_sanitize_stdio();   /* an inventory (or a dynamic one's JSON) may carry escapes: one output edge */
  const char *verb, *file = NULL, *limit = NULL;
  int as_json = 0, i;
  if (argc < 2) { inv_usage(stderr); return HF_EXIT_USAGE; }
  verb = argv[1];
  if (!strcmp(verb, "--help") || !strcmp(verb, "-h") || !strcmp(verb, "help")) { inv_usage(stdout); return HF_EXIT_OK; }
  if (strcmp(verb, "check") != 0 && strcmp(verb, "list") != 0) {
    fprintf(stderr, "hubfleet inventory: unknown action '%s': expected check or list\n", verb);
    inv_usage(stderr);
    return HF_EXIT_USAGE;
  }
  for (i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { inv_usage(stdout); return HF_EXIT_OK; }
    if (!strcmp(argv[i], "--json") && !strcmp(verb, "check")) as_json = 1;
    else if (!strcmp(argv[i], "--limit") && !strcmp(verb, "list")) {
      if (++i == argc) { fprintf(stderr, "hubfleet inventory list: --limit needs a PATTERN\n"); return HF_EXIT_USAGE; }
      limit = argv[i];
    } else if (!strncmp(argv[i], "--limit=", 8) && !strcmp(verb, "list")) limit = argv[i] + 8;
    else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      fprintf(stderr, "hubfleet inventory %s: unknown option '%s'\n", verb, argv[i]);
      inv_usage(stderr);
      return HF_EXIT_USAGE;
    } else if (file == NULL) file = argv[i];
    else {
      fprintf(stderr, "hubfleet inventory %s: one FILE only, got '%s' too\n", verb, argv[i]);
      return HF_EXIT_USAGE;
    }
  }
  if (file == NULL) {
    fprintf(stderr, "hubfleet inventory %s: missing FILE\n", verb);
    inv_usage(stderr);
    return HF_EXIT_USAGE;
  }
  return !strcmp(verb, "check") ? cmd_check(file, as_json) : cmd_list(file, limit);
}
