/* cmd_audit.c: `hubfleet audit`: facts from every host in parallel, folded
 * into a version table (or one JSON document). */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hf_proto.h"
#include "hf_inventory.h"
#include "hf_controller.h"
#include "hf_engine.h"
#include "hf_audit.h"
#include "hf_prom.h"
#include "hf_ctl_util.h"
#include "hf_sanitize.h"

static const char usage_text[] =
  "usage: hubfleet audit -i INVENTORY [OPTIONS]\n"
  "\n"
  "Asks every host's agent for its facts (deploying the agent when needed) and\n"
  "prints the jupyterhub versions of hub and single-user environments, folded\n"
  "by identical answers, with drift and hub/user major-version mismatch flagged.\n"
  "\n"
  "options:\n"
  "  -i, --inventory FILE     Ansible inventory (INI or ansible-inventory JSON)\n"
  "  -l, --limit PATTERN      only hosts matching PATTERN (host, group, glob, a:b, !x)\n"
  "  -p, --parallel N         hosts in flight at once (default 50)\n"
  "      --handshakes N       SSH handshakes in flight per endpoint (default 8)\n"
  "      --max-handshakes N   SSH handshakes in flight overall (default 64)\n"
  "      --retries N          retries of connections sshd drops in banner/key exchange (default 10)\n"
  "      --max-uploads N      agent uploads in flight at once (default 8); a host waiting for\n"
  "                           its turn looks again first, so hosts sharing a home upload once\n"
  "  -t, --timeout SECONDS    deadline of each phase: connect, handshake, agent start, facts (default 15)\n"
  "      --expect VERSION     exit 1 unless every environment of every host runs VERSION\n"
  "      --json               one JSON document on stdout instead of the table\n"
  "      --prometheus FILE    also write node_exporter textfile metrics to FILE (atomically)\n"
  "      --accept-new         trust and record unknown host keys (never changed ones)\n"
  "      --known-hosts FILE   known_hosts for hosts without hubfleet_known_hosts\n"
  "                           (default ~/.ssh/known_hosts)\n"
  "      --agent PATH         hubfleet-agent to deploy (default: $HUBFLEET_AGENT, the build\n"
  "                           tree's, or the installed one)\n"
  "      --stats              print wall time, CPU, longest loop stall, retries to stderr\n"
  "  -v, --verbose            log every session state change to stderr\n"
  "  -h, --help               this text\n"
  "\n"
  "exit status:\n"
  "  0   every host audited (and, with --expect, runs VERSION)\n"
  "  1   some hosts failed or were unreachable, or differ from --expect\n"
  "  2   bad arguments or bad inventory: nothing was done\n"
  "  70  internal error (out of memory, event loop)\n";

struct audit_run {
  struct hf_inventory *inv;
  const struct hf_host **hosts;
  size_t nhosts;
  json_t **records;      /* per host, new: the bounded record the output needs */
  size_t done, failed;
  int inflight;
  size_t next;           /* next host to open: sessions are opened as slots free, so
                            the controller holds at most --parallel of them */
  struct hf_engine *engine;
  int exit_code;
  uv_timer_t progress;
  bool tty;
  unsigned timeout_ms;
  int parallel;
};

struct host_ctx { struct audit_run *run; size_t idx; };

static void record_error(struct audit_run *r, size_t idx, int code, const char *msg) {
  json_decref(r->records[idx]);
  r->records[idx] = json_pack("{s:s, s:b, s:{s:s, s:s}}", "name", r->hosts[idx]->name, "ok", 0,
                              "error", "code", hf_err_code(code), "message", msg ? msg : hf_strerror(code));
  r->failed++;
}

static void open_more(struct audit_run *r);

static void on_closed(struct hf_session *s, void *ctx) {
  struct host_ctx *hc = ctx;
  struct audit_run *r = hc->run;
  r->inflight--;
  r->done++;
  free(hc);
  open_more(r);
}

/* What a host said, cut to what the output needs and bounded whatever the
 * host sent: the controller keeps one such record per host for the whole
 * run, so its memory must not grow with a host's answer. */
#define REC_STR_MAX 256
#define REC_ENVS_MAX 16
#define REC_PKGS_MAX 32
#define REC_BYTES_MAX 8192      /* the whole record, as compact JSON */

static json_t *rec_str(const json_t *v) {
  const char *s = json_string_value(v);
  if (!s) return json_is_null(v) || !v ? json_null() : NULL;
  size_t n = strnlen(s, REC_STR_MAX + 1);
  if (n <= REC_STR_MAX) return json_string(s);
  /* Cut on a UTF-8 boundary. */
  n = REC_STR_MAX;
  while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  return json_stringn(s, n);
}

/* Copies the listed keys of src into dst: strings bounded, numbers and
 * booleans as they are; anything else is left out. */
static void rec_keys(json_t *dst, const json_t *src, const char *const *keys) {
  for (; *keys; keys++) {
    const json_t *v = json_object_get(src, *keys);
    if (!v) continue;
    json_t *c = NULL;
    if (json_is_string(v) || json_is_null(v)) c = rec_str(v);
    else if (json_is_number(v) || json_is_boolean(v)) c = json_copy((json_t *)(uintptr_t)v);
    if (c) json_object_set_new(dst, *keys, c);
  }
}

/* An upper bound of v's compact JSON size, without dumping it: a string
 * counts its escapes (6 bytes for a control character, 2 for a quote or
 * backslash), a number 32 bytes. */
static size_t str_bound(const char *p, size_t n) {
  size_t b = n + 2;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)p[i] < 0x20) b += 5;
    else if (p[i] == '"' || p[i] == '\\') b += 1;
  return b;
}

static size_t rec_bound(const json_t *v) {
  size_t b = 2, i;
  const char *k;
  const json_t *x;
  switch (json_typeof(v)) {
  case JSON_STRING: return str_bound(json_string_value(v), json_string_length(v));
  case JSON_OBJECT:
    json_object_foreach((json_t *)(uintptr_t)v, k, x) b += str_bound(k, strlen(k)) + 2 + rec_bound(x);
    return b;
  case JSON_ARRAY:
    json_array_foreach(v, i, x) b += rec_bound(x) + 1;
    return b;
  default: return 32;
  }
}

static json_t *facts_record(const json_t *facts) {
  static const char *const top[] = { "api_version", "hub_running", "backup_free_bytes", NULL };
  static const char *const envk[] = { "role", "jupyterhub", "prefix", "installer", "python", "exists", NULL };
  static const char *const dbk[] = { "kind", "alembic_revision", "users", "running_servers", "bytes", "path", NULL };
  static const char *const smk[] = { "kind", "name", NULL };
  json_t *out = json_object(), *envs = json_array();
  if (!out || !envs) { json_decref(out); json_decref(envs); return NULL; }
  rec_keys(out, facts, top);
  size_t i;
  const json_t *e;
  json_array_foreach(json_object_get(facts, "envs"), i, e) {
    if (i >= REC_ENVS_MAX) break;
    json_t *re = json_object(), *pk = json_object();
    rec_keys(re, e, envk);
    const char *name;
    const json_t *ver;
    size_t k = 0;
    json_object_foreach((json_t *)(uintptr_t)json_object_get(e, "packages"), name, ver) {
      if (k++ >= REC_PKGS_MAX || strlen(name) > REC_STR_MAX) break;
      json_t *c = rec_str(ver);
      if (c) json_object_set_new(pk, name, c);
    }
    json_object_set_new(re, "packages", pk);
    json_array_append_new(envs, re);
  }
  json_object_set_new(out, "envs", envs);
  const json_t *db = json_object_get(facts, "db");
  if (json_is_object(db)) {
    json_t *rd = json_object();
    rec_keys(rd, db, dbk);
    json_object_set_new(out, "db", rd);
  }
  const json_t *sm = json_object_get(facts, "service_manager");
  if (json_is_object(sm)) {
    json_t *rs = json_object();
    rec_keys(rs, sm, smk);
    json_object_set_new(out, "service_manager", rs);
  }
  /* Each piece is bounded; the whole too: a host that sends the most of
   * every piece loses its package lists, then all but the versions, then
   * its last environments until the rest fits (at most 16 dumps, and only
   * for such a host). */
  if (rec_bound(out) > REC_BYTES_MAX && json_dumpb(out, NULL, 0, JSON_COMPACT) > REC_BYTES_MAX) {
    json_array_foreach(envs, i, e) json_object_del((json_t *)(uintptr_t)e, "packages");
    json_object_set_new(out, "truncated", json_true());
    if (json_dumpb(out, NULL, 0, JSON_COMPACT) > REC_BYTES_MAX) {
      json_array_foreach(envs, i, e) {
        json_object_del((json_t *)(uintptr_t)e, "prefix");
        json_object_del((json_t *)(uintptr_t)e, "python");
        json_object_del((json_t *)(uintptr_t)e, "installer");
      }
      json_object_del(out, "db");
      while (json_array_size(envs) > 0 && json_dumpb(out, NULL, 0, JSON_COMPACT) > REC_BYTES_MAX)
        json_array_remove(envs, json_array_size(envs) - 1);
    }
  }
  return out;
}

static void on_facts(struct hf_session *s, int status, const json_t *data, const char *msg, void *ctx) {
  struct host_ctx *hc = ctx;
  struct audit_run *r = hc->run;
  if (status == 0) {
    json_decref(r->records[hc->idx]);
    r->records[hc->idx] = json_pack("{s:s, s:b, s:o, s:s, s:b, s:i}", "name", r->hosts[hc->idx]->name,
                                    "ok", 1, "facts", data ? facts_record(data) : json_object(),
                                    "agent", hf_session_agent_version(s),
                                    "uploaded", hf_session_uploaded(s),
                                    "retries", hf_session_retries(s));
  } else if (status != HF_ECANCELED) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s: facts: %s", r->hosts[hc->idx]->name, msg ? msg : hf_strerror(status));
    record_error(r, hc->idx, status, buf);
  }
  hf_session_close(s, on_closed, hc);
}

static void on_ready(struct hf_session *s, int status, void *ctx) {
  struct host_ctx *hc = ctx;
  struct audit_run *r = hc->run;
  if (status == 0) {
    const struct hf_host *h = r->hosts[hc->idx];
    json_t *args = json_pack("{s:O}", "hub", h->hub ? h->hub : json_object());
    int rc = hf_session_request(s, "facts", args, r->timeout_ms, NULL, on_facts, hc);
    if (rc == 0) return;
    record_error(r, hc->idx, rc, hf_strerror(rc));
  } else if (status != HF_ECANCELED) {
    record_error(r, hc->idx, status, hf_session_error(s));
  }
  hf_session_close(s, on_closed, hc);
}

static void open_more(struct audit_run *r) {
  while (r->next < r->nhosts && r->inflight < r->parallel) {
    size_t i = r->next++;
    struct host_ctx *hc = malloc(sizeof *hc);
    if (!hc) { r->exit_code = HF_EXIT_INTERNAL; r->next = r->nhosts; return; }
    hc->run = r;
    hc->idx = i;
    struct hf_session *s;
    int rc = hf_session_open(r->engine, r->hosts[i], on_ready, NULL, hc, &s);
    if (rc < 0) {
      char buf[512];
      snprintf(buf, sizeof buf, "%s: cannot open a session: %s", r->hosts[i]->name, hf_strerror(rc));
      record_error(r, i, rc, buf);
      r->done++;
      free(hc);
      continue;
    }
    r->inflight++;
  }
}

static void on_progress(uv_timer_t *t) {
  struct audit_run *r = t->data;
  fprintf(stderr, "\r\033[Kaudit: %zu/%zu hosts done, %zu failed, %d in progress, %zu waiting",
          r->done, r->nhosts, r->failed, r->inflight, r->nhosts - r->next);
  fflush(stderr);
}

/* --json goes out in 64 KB pieces: jansson's own json_dumpf writes each
 * token to stdout, and stdout (the sanitiser's stream, line-buffered) then
 * cleaned and wrote every line with its own write(2), some 50 per host. */
struct dump_buf { size_t n; char b[65536]; };

static void dump_flush(struct dump_buf *d) {
  if (d->n) fwrite(d->b, 1, d->n, stdout);
  d->n = 0;
}

static int dump_chunk(const char *buf, size_t size, void *data) {
  struct dump_buf *d = data;
  if (d->n + size > sizeof d->b) dump_flush(d);
  if (size >= sizeof d->b) { fwrite(buf, 1, size, stdout); return 0; }
  memcpy(d->b + d->n, buf, size);
  d->n += size;
  return 0;
}

int hf_cmd_audit(int argc, char **argv) {
  static const struct option longopts[] = {
    { "inventory", required_argument, NULL, 'i' },
    { "limit", required_argument, NULL, 'l' },
    { "parallel", required_argument, NULL, 'p' },
    { "handshakes", required_argument, NULL, 'H' },
    { "max-handshakes", required_argument, NULL, 'M' },
    { "retries", required_argument, NULL, 'R' },
    { "max-uploads", required_argument, NULL, 'U' },
    { "timeout", required_argument, NULL, 't' },
    { "expect", required_argument, NULL, 'e' },
    { "json", no_argument, NULL, 'j' },
    { "prometheus", required_argument, NULL, 'P' },
    { "accept-new", no_argument, NULL, 'a' },
    { "known-hosts", required_argument, NULL, 'k' },
    { "agent", required_argument, NULL, 'A' },
    { "stats", no_argument, NULL, 's' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *inv_path = NULL, *limit = NULL, *expect = NULL, *agent_opt = NULL, *prom_path = NULL;
  struct hf_engine_opts eo = { .max_retries = -1 };
  bool json_out = false, stats = false;
  long v, timeout_s = 15;
  int c;
  hf_sanitize_stdio();   /* versions, paths and errors come from hosts: --json too */
  optind = 1;
  while ((c = getopt_long(argc, argv, "i:l:p:t:vh", longopts, NULL)) != -1) {
    switch (c) {
    case 'i': inv_path = optarg; break;
    case 'l': limit = optarg; break;
    case 'p': if (hf_parse_uint(optarg, 1, 10000, &v)) goto bad; eo.parallel = (int)v; break;
    case 'H': if (hf_parse_uint(optarg, 1, 1000, &v)) goto bad; eo.endpoint_handshakes = (int)v; break;
    case 'M': if (hf_parse_uint(optarg, 1, 10000, &v)) goto bad; eo.max_handshakes = (int)v; break;
    case 'R': if (hf_parse_uint(optarg, 0, 100, &v)) goto bad; eo.max_retries = (int)v; break;
    case 'U': if (hf_parse_uint(optarg, 1, 10000, &v)) goto bad; eo.max_uploads = (int)v; break;
    case 't': if (hf_parse_uint(optarg, 1, 86400, &timeout_s)) goto bad; break;
    case 'e':
      if (!hf_valid_version(optarg)) {
        fprintf(stderr, "hubfleet audit: --expect: '%s' is not a PEP 440 version\n", optarg);
        return HF_EXIT_USAGE;
      }
      expect = optarg;
      break;
    case 'j': json_out = true; break;
    case 'P': prom_path = optarg; break;
    case 'a': eo.accept_new = true; break;
    case 'k': eo.known_hosts = optarg; break;
    case 'A': agent_opt = optarg; break;
    case 's': stats = true; break;
    case 'v': eo.verbose = 1; break;
    case 'h': fputs(usage_text, stdout); return HF_EXIT_OK;
    default: fputs(usage_text, stderr); return HF_EXIT_USAGE;
    bad:
      fprintf(stderr, "hubfleet audit: --%s: bad value '%s'\n", c == 'p' ? "parallel" : c == 't' ? "timeout" :
              c == 'H' ? "handshakes" : c == 'M' ? "max-handshakes" : c == 'U' ? "max-uploads" : "retries", optarg);
      return HF_EXIT_USAGE;
    }
  }
  if (!inv_path || optind < argc) {
    fprintf(stderr, "hubfleet audit: %s\n", inv_path ? "unexpected argument" : "-i INVENTORY is required");
    fputs(usage_text, stderr);
    return HF_EXIT_USAGE;
  }
  eo.timeout_ms = (unsigned)timeout_s * 1000u;
  eo.request_timeout_ms = eo.timeout_ms;

  struct audit_run r = { 0 };
  r.timeout_ms = eo.timeout_ms;
  r.parallel = eo.parallel > 0 ? eo.parallel : 50;
  struct hf_inv_error ierr;
  if (hf_inv_load_flags(inv_path, HF_INV_LEAN, &r.inv, &ierr) < 0) {
    char buf[1400];
    hf_inv_error_format(&ierr, buf, sizeof buf);
    fprintf(stderr, "hubfleet audit: %s\n", buf);
    return HF_EXIT_USAGE;
  }
  char agent_path[4096];
  if (hf_engine_find_agent(agent_opt, agent_path, sizeof agent_path) < 0) {
    fprintf(stderr, "hubfleet audit: cannot find hubfleet-agent; give --agent PATH or set HUBFLEET_AGENT\n");
    hf_inv_free(r.inv);
    return HF_EXIT_USAGE;
  }
  eo.agent_path = agent_path;
  r.hosts = calloc(r.inv->nhosts ? r.inv->nhosts : 1, sizeof *r.hosts);
  if (!r.hosts) { hf_inv_free(r.inv); return HF_EXIT_INTERNAL; }
  for (size_t i = 0; i < r.inv->nhosts; i++)
    if (!limit || hf_inv_match(&r.inv->hosts[i], limit)) r.hosts[r.nhosts++] = &r.inv->hosts[i];
  if (r.nhosts == 0) {
    fprintf(stderr, "hubfleet audit: no host matches%s%s\n", limit ? " --limit " : "", limit ? limit : "");
    free(r.hosts);
    hf_inv_free(r.inv);
    return HF_EXIT_USAGE;
  }
  r.records = calloc(r.nhosts, sizeof *r.records);

  uv_loop_t loop;
  uv_loop_init(&loop);
  struct hf_engine *e;
  char err[512];
  uint64_t t0 = uv_hrtime();
  int rc = hf_engine_new(&loop, &eo, &e, err, sizeof err);
  if (rc < 0) {
    fprintf(stderr, "hubfleet audit: %s\n", err);
    uv_loop_close(&loop);
    free(r.records);
    free(r.hosts);
    hf_inv_free(r.inv);
    return rc == HF_ENOMEM ? HF_EXIT_INTERNAL : HF_EXIT_USAGE;
  }
  r.engine = e;
  r.parallel = hf_engine_parallel(e);
  r.exit_code = HF_EXIT_OK;
  open_more(&r);
  r.tty = isatty(2) && !eo.verbose;
  if (r.tty) {
    uv_timer_init(&loop, &r.progress);
    r.progress.data = &r;
    uv_timer_start(&r.progress, on_progress, 100, 200);
    uv_unref((uv_handle_t *)&r.progress);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uint64_t wall_ns = uv_hrtime() - t0;
  if (r.tty) {
    fprintf(stderr, "\r\033[K");
    uv_close((uv_handle_t *)&r.progress, NULL);
  }
  struct hf_engine_stats st;
  hf_engine_stats(e, &st);
  hf_engine_free(e);
  int exit_code = r.exit_code;
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) fprintf(stderr, "hubfleet audit: internal: handles left open\n");

  json_t *hosts = json_array();
  for (size_t i = 0; i < r.nhosts; i++) {
    if (!r.records[i]) record_error(&r, i, HF_ECANCELED, "not audited");
    json_array_append_new(hosts, r.records[i]);
  }
  json_t *doc = hf_audit_fold(hosts, expect);
  json_decref(hosts);
  if (!doc) { exit_code = HF_EXIT_INTERNAL; goto out; }
  if (stats) {
    json_object_set_new(doc, "stats", json_pack("{s:f, s:I, s:f, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:I, s:i}",
        "wall_s", (double)wall_ns / 1e9, "cpu_us", (json_int_t)st.cpu_us,
        "cpu_ms_per_host", (double)st.cpu_us / 1000.0 / (double)r.nhosts,
        "max_stall_ms", (double)st.max_stall_ns / 1e6,
        "max_stall_wall_ms", (double)st.max_stall_wall_ns / 1e6,
        "max_stall_cpu_ms", (double)st.max_stall_cpu_ns / 1e6, "retries", (json_int_t)st.retries,
        "uploads", (json_int_t)st.uploads, "upload_bytes", (json_int_t)st.upload_bytes,
        "reused", (json_int_t)st.reused, "maxrss_kb", (json_int_t)st.maxrss_kb,
        "peak_handshakes", st.peak_handshakes, "deferred", (json_int_t)st.deferred,
        "upload_skipped", (json_int_t)st.upload_skipped, "agent_bytes", (json_int_t)st.agent_bytes,
        "payload_bytes", (json_int_t)st.payload_bytes, "parallel", r.parallel));
  }
  if (prom_path) {
    char perr[512];
    if (hf_prom_write_audit(prom_path, doc, r.inv, (double)wall_ns / 1e9, perr, sizeof perr) != 0) {
      fprintf(stderr, "hubfleet audit: --prometheus: %s\n", perr);
      exit_code = HF_EXIT_INTERNAL;
    }
  }
  if (json_out) {
    struct dump_buf db = { .n = 0 };
    json_dump_callback(doc, dump_chunk, &db, JSON_INDENT(2) | JSON_SORT_KEYS);
    dump_chunk("\n", 1, &db);
    dump_flush(&db);
  } else {
    hf_audit_print(stdout, doc, 4);
  }
  if (stats)
    fprintf(stderr, "stats: %zu hosts, wall %.2f s, cpu %.1f ms (%.3f ms/host), longest loop stall "
            "%.1f ms (%.1f ms CPU; %.1f ms of wall time counting waits for a CPU), handshake retries %llu, uploads %llu (%llu bytes, "
            "%.0f per upload), uploads skipped (a shared home had the agent) %llu, agents reused %llu, "
            "peak handshakes %d, max rss %.1f MB\n",
            r.nhosts, (double)wall_ns / 1e9, (double)st.cpu_us / 1000.0,
            (double)st.cpu_us / 1000.0 / (double)r.nhosts, (double)st.max_stall_ns / 1e6,
            (double)st.max_stall_cpu_ns / 1e6, (double)st.max_stall_wall_ns / 1e6,
            (unsigned long long)st.retries, (unsigned long long)st.uploads,
            (unsigned long long)st.upload_bytes,
            st.uploads ? (double)st.upload_bytes / (double)st.uploads : 0.0,
            (unsigned long long)st.upload_skipped, (unsigned long long)st.reused,
            st.peak_handshakes, (double)st.maxrss_kb / 1024.0);
  if (exit_code == HF_EXIT_OK) exit_code = hf_audit_exit_code(doc);
  json_decref(doc);
out:
  free(r.records);
  free(r.hosts);
  hf_inv_free(r.inv);
  return exit_code;
}
