/* prom.c: an audit as Prometheus metrics in node_exporter's textfile-collector
 * format, written atomically (temporary file in the same directory + rename). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "hf_prom.h"
#include "hf_sanitize.h"
#include "hf_proto.h"

/* Writes s as a label value: backslash, double quote and newline escaped
 * (the exposition format's three), other control bytes dropped. */
static void label(FILE *f, const char *s) {
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '\\') fputs("\\\\", f);
    else if (*p == '"') fputs("\\\"", f);
    else if (*p == '\n') fputs("\\n", f);
    else if (*p >= 0x20 && *p != 0x7f) fputc(*p, f);
  }
}

static const char *jstr(const json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

/* The host's groups as one label value ("canary,hubs"), "" without an inventory. */
static void groups_of(const struct hf_inventory *inv, const char *host, char *buf, size_t len) {
  const struct hf_host *h = inv ? hf_inv_find(inv, host) : NULL;
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; h && i < h->ngroups; i++) {
    int n = snprintf(buf + off, len - off, "%s%s", off ? "," : "", h->groups[i]);
    if (n < 0 || (size_t)n >= len - off) break;
    off += (size_t)n;
  }
}

static void host_labels(FILE *f, const char *host, const char *groups) {
  fputs("host=\"", f);
  label(f, host);
  fputs("\",group=\"", f);
  label(f, groups);
  fputc('"', f);
}

static int write_metrics(FILE *f, const json_t *doc, const struct hf_inventory *inv, double wall_s) {
  json_t *hosts = json_object_get(doc, "hosts");
  size_t i;
  json_t *h;
  long unreachable = 0, total = 0;
  char groups[1024];

  fputs("# HELP hubfleet_jupyterhub_version_info jupyterhub version installed in one environment of a host (1 per environment).\n"
        "# TYPE hubfleet_jupyterhub_version_info gauge\n", f);
  json_array_foreach(hosts, i, h) {
    const char *name = jstr(h, "name")[0] ? jstr(h, "name") : jstr(h, "host");
    total++;
    if (!json_is_true(json_object_get(h, "ok"))) { unreachable++; continue; }
    groups_of(inv, name, groups, sizeof groups);
    size_t k;
    json_t *e;
    json_array_foreach(json_object_get(json_object_get(h, "facts"), "envs"), k, e) {
      const char *v = jstr(e, "jupyterhub");
      if (!v[0]) continue;
      fputs("hubfleet_jupyterhub_version_info{", f);
      host_labels(f, name, groups);
      fputs(",env=\"", f);
      label(f, jstr(e, "role"));
      fputs("\",prefix=\"", f);
      label(f, jstr(e, "prefix"));
      fputs("\",version=\"", f);
      label(f, v);
      fputs("\"} 1\n", f);
    }
  }
  fputs("# HELP hubfleet_hub_up Whether the hub answered GET /hub/api during the audit.\n"
        "# TYPE hubfleet_hub_up gauge\n", f);
  json_array_foreach(hosts, i, h) {
    const char *name = jstr(h, "name")[0] ? jstr(h, "name") : jstr(h, "host");
    if (!json_is_true(json_object_get(h, "ok"))) continue;
    groups_of(inv, name, groups, sizeof groups);
    json_t *api = json_object_get(json_object_get(h, "facts"), "api_version");
    fputs("hubfleet_hub_up{", f);
    host_labels(f, name, groups);
    fprintf(f, "} %d\n", json_is_string(api) ? 1 : 0);
  }
  fputs("# HELP hubfleet_hub_alembic_revision_info Alembic revision of the hub database (1 per host).\n"
        "# TYPE hubfleet_hub_alembic_revision_info gauge\n", f);
  json_array_foreach(hosts, i, h) {
    const char *name = jstr(h, "name")[0] ? jstr(h, "name") : jstr(h, "host");
    if (!json_is_true(json_object_get(h, "ok"))) continue;
    const char *rev = jstr(json_object_get(json_object_get(h, "facts"), "db"), "alembic_revision");
    if (!rev[0]) continue;
    groups_of(inv, name, groups, sizeof groups);
    fputs("hubfleet_hub_alembic_revision_info{", f);
    host_labels(f, name, groups);
    fputs(",revision=\"", f);
    label(f, rev);
    fputs("\"} 1\n", f);
  }
  fputs("# HELP hubfleet_host_reachable Whether the audit reached the host's agent.\n"
        "# TYPE hubfleet_host_reachable gauge\n", f);
  json_array_foreach(hosts, i, h) {
    const char *name = jstr(h, "name")[0] ? jstr(h, "name") : jstr(h, "host");
    groups_of(inv, name, groups, sizeof groups);
    fputs("hubfleet_host_reachable{", f);
    host_labels(f, name, groups);
    fprintf(f, "} %d\n", json_is_true(json_object_get(h, "ok")) ? 1 : 0);
  }
  fprintf(f, "# HELP hubfleet_audit_hosts Hosts in the last audit.\n# TYPE hubfleet_audit_hosts gauge\n"
             "hubfleet_audit_hosts %ld\n", total);
  fprintf(f, "# HELP hubfleet_audit_hosts_unreachable Hosts the last audit could not audit.\n"
             "# TYPE hubfleet_audit_hosts_unreachable gauge\nhubfleet_audit_hosts_unreachable %ld\n", unreachable);
  fprintf(f, "# HELP hubfleet_audit_last_run_timestamp_seconds When the last audit finished.\n"
             "# TYPE hubfleet_audit_last_run_timestamp_seconds gauge\nhubfleet_audit_last_run_timestamp_seconds %lld\n",
          (long long)time(NULL));
  fprintf(f, "# HELP hubfleet_audit_duration_seconds How long the last audit took.\n"
             "# TYPE hubfleet_audit_duration_seconds gauge\nhubfleet_audit_duration_seconds %.3f\n", wall_s);
  return ferror(f) ? HF_EIO : 0;
}

int hf_prom_write_audit(const char *path, const json_t *doc, const struct hf_inventory *inv, double wall_s,
                        char *err, size_t errlen) {
  struct hf_out o;
  /* A random O_EXCL|O_NOFOLLOW name beside path: nobody who can write the
   * collector's directory can point the write elsewhere (issue 13). */
  if (hf_out_open(&o, path, 0644, err, errlen) != 0) return HF_EIO;
  int r = write_metrics(o.f, doc, inv, wall_s);
  if (r != 0) snprintf(err, errlen, "%s: %s", path, strerror(errno));
  /* The collector must never read half a file: data on disk, then rename. */
  if (hf_out_commit(&o, r == 0, err, errlen) != 0) r = HF_EIO;
  return r;
}
