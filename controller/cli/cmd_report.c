/* cmd_report.c: `hubfleet report`: one self-contained HTML page for a rollout
 * (timeline, version matrix, stages, failures) or for an audit document. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hf_sanitize.h"
#include <time.h>
#include <unistd.h>
#include "hf_controller.h"
#include "hf_rollout.h"
#include "hf_state.h"
#include "hf_proto.h"

/* Writes s with HTML's five special characters escaped; control characters
 * other than tab and newline become '?' (hf_clean_bytes) so hostile log lines stay text. */
static void esc(FILE *f, const char *s) {
  /* Through the one sanitiser first: no C1 control, bidi override, DEL or
   * broken UTF-8 reaches the page (or a terminal that cats it). */
  size_t n = s ? strlen(s) : 0;
  char *clean = malloc(n + 1);
  if (clean == NULL) return;
  clean[hf_clean_bytes(s ? s : "", n, clean, NULL, true)] = '\0';
  for (const unsigned char *p = (const unsigned char *)clean; *p; p++) {
    switch (*p) {
    case '<': fputs("&lt;", f); break;
    case '>': fputs("&gt;", f); break;
    case '&': fputs("&amp;", f); break;
    case '"': fputs("&quot;", f); break;
    case '\'': fputs("&#39;", f); break;
    default: fputc(*p, f); /* controls are '?' already */
    }
  }
  free(clean);
}

static const char *jstr(const json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

static const char page_head[] =
  "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
  "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
  "<title>%s</title>\n<style>\n"
  "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2330;background:#fff}\n"
  "h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}\n"
  ".meta{color:#556}.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}\n"
  ".s-done,.s-upgraded,.s-ok{background:#d8f3dc;color:#1b5e20}.s-halted,.s-failed,.s-needs_attention{background:#fde2e1;color:#8a1c12}\n"
  ".s-rolled_back{background:#ffe8cc;color:#8a4b00}.s-running,.s-paused,.s-pending,.s-prepared{background:#e3e8f4;color:#2b3a67}\n"
  "table{border-collapse:collapse;margin:6px 0}td,th{padding:4px 10px;border-bottom:1px solid #eef;text-align:left;vertical-align:top}\n"
  "th{background:#f5f6fa;font-weight:600}td.num{text-align:right}.drift{background:#fff4d6}\n"
  "pre{background:#f7f7f9;padding:8px;border-radius:4px;white-space:pre-wrap;max-height:16em;overflow:auto;margin:4px 0}\n"
  "svg text{font:12px system-ui,sans-serif;fill:#1d2330}.legend span{margin-right:14px}\n"
  ".sw{display:inline-block;width:12px;height:12px;vertical-align:-2px;margin-right:4px;border-radius:2px}\n"
  "</style></head><body>\n";

/* Step colours by outcome; rollback steps have their own. */
static const char *step_colour(const char *step, const char *outcome) {
  if (!strcmp(outcome, "failed")) return "#d93025";
  if (!strcmp(outcome, "unknown") || !strcmp(outcome, "sent")) return "#9aa0a6";
  if (!strcmp(step, "rollback")) return "#f29900";
  if (!strcmp(step, "preflight") || !strcmp(step, "backup")) return "#4a7bd0";
  return "#1e8e3e";
}

static void fmt_dur(int64_t ms, char *buf, size_t len) {
  if (ms < 60000) snprintf(buf, len, "%.1fs", (double)ms / 1000.0);
  else snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", ms / 60000, (ms / 1000) % 60);
}

/* The SVG timeline: one row per host, one bar per step, downtime hatched. */
static void timeline(FILE *f, json_t *hosts, json_t *steps, int64_t t0) {
  int64_t t1 = t0 + 1000;
  size_t i, k;
  json_t *s, *h;
  json_array_foreach(steps, i, s) {
    json_t *fin = json_object_get(s, "finished");
    int64_t end = json_is_integer(fin) ? json_integer_value(fin) : json_integer_value(json_object_get(s, "started"));
    if (end > t1) t1 = end;
  }
  const int label_w = 190, width = 1000, row_h = 26, top = 24;
  size_t n = json_array_size(hosts);
  double scale = (double)(width - label_w - 20) / (double)(t1 - t0);
  fprintf(f, "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%zu\" role=\"img\" "
             "aria-label=\"rollout timeline\">\n", width, top + n * row_h + 10);
  fputs("<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
        "patternTransform=\"rotate(45)\"><rect width=\"3\" height=\"6\" fill=\"#d93025\" fill-opacity=\"0.25\"/>"
        "</pattern></defs>\n", f);
  /* time axis: 5 ticks */
  for (int t = 0; t <= 4; t++) {
    double x = label_w + (double)(width - label_w - 20) * t / 4.0;
    char d[32];
    fmt_dur((t1 - t0) * t / 4, d, sizeof d);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%zu\" stroke=\"#e3e5ea\"/>"
               "<text x=\"%.1f\" y=\"14\" text-anchor=\"middle\">+%s</text>\n",
            x, top - 4, x, top + n * row_h, x, d);
  }
  json_array_foreach(hosts, k, h) {
    const char *name = jstr(h, "host");
    int y = top + (int)k * row_h;
    fprintf(f, "<g class=\"host-row\" data-host=\"");
    esc(f, name);
    fprintf(f, "\" data-status=\"%s\">\n<text x=\"4\" y=\"%d\"><title>", jstr(h, "status"), y + 17);
    esc(f, name);
    fputs("</title>", f);
    /* long names are cut to the label column (whole UTF-8 characters); the title holds all of it */
    size_t cut = 0, chars = 0;
    while (name[cut] && chars < 24) { cut++; while (((unsigned char)name[cut] & 0xC0) == 0x80) cut++; chars++; }
    char label[128];
    snprintf(label, sizeof label, "%.*s%s", (int)(cut < 100 ? cut : 100), name, name[cut] ? "…" : "");
    esc(f, label);
    fputs("</text>\n", f);
    int64_t stop_at = 0, up_at = 0;
    json_array_foreach(steps, i, s) {
      if (strcmp(jstr(s, "host"), name)) continue;
      const char *step = jstr(s, "step"), *outcome = jstr(s, "outcome");
      int64_t st = json_integer_value(json_object_get(s, "started"));
      json_t *fin = json_object_get(s, "finished");
      int64_t en = json_is_integer(fin) ? json_integer_value(fin) : st;
      if (!strcmp(step, "journal")) continue;
      if (!strcmp(step, "stop") && !stop_at) stop_at = st;
      if ((!strcmp(step, "health") || !strcmp(step, "rollback")) && !strcmp(outcome, "ok")) up_at = en;
      double x = label_w + (double)(st - t0) * scale, w = (double)(en - st) * scale;
      if (w < 2) w = 2;
      char d[32];
      fmt_dur(en - st, d, sizeof d);
      fprintf(f, "<rect class=\"step\" data-step=\"%s\" data-outcome=\"%s\" x=\"%.1f\" y=\"%d\" width=\"%.1f\" "
                 "height=\"16\" rx=\"2\" fill=\"%s\"><title>", step, outcome, x, y + 4, w, step_colour(step, outcome));
      esc(f, name);
      fprintf(f, ": %s %s in %s", step, outcome, d);
      if (json_is_string(json_object_get(s, "error"))) { fputs(" — ", f); esc(f, jstr(s, "error")); }
      fputs("</title></rect>\n", f);
    }
    if (stop_at && up_at > stop_at) {
      char d[32];
      fmt_dur(up_at - stop_at, d, sizeof d);
      fprintf(f, "<rect class=\"downtime\" x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"22\" fill=\"url(#hatch)\" "
                 "stroke=\"#d93025\" stroke-opacity=\"0.4\"><title>downtime %s</title></rect>\n",
              label_w + (double)(stop_at - t0) * scale, y + 1, (double)(up_at - stop_at) * scale, d);
    }
    fputs("</g>\n", f);
  }
  fputs("</svg>\n<div class=\"legend\"><span><i class=\"sw\" style=\"background:#4a7bd0\"></i>preflight, backup</span>"
        "<span><i class=\"sw\" style=\"background:#1e8e3e\"></i>step ok</span>"
        "<span><i class=\"sw\" style=\"background:#d93025\"></i>failed</span>"
        "<span><i class=\"sw\" style=\"background:#f29900\"></i>rollback</span>"
        "<span><i class=\"sw\" style=\"background:#9aa0a6\"></i>unknown (interrupted)</span>"
        "<span><i class=\"sw\" style=\"background:repeating-linear-gradient(45deg,#f5c6c2 0 3px,#fff 3px 6px)\"></i>downtime</span></div>\n", f);
}

/* Folds hosts by an identical string key; returns {key: [hosts]} (new). */
static void fold_add(json_t *fold, const char *key, const char *host) {
  json_t *arr = json_object_get(fold, key);
  if (!arr) { arr = json_array(); json_object_set_new(fold, key, arr); }
  json_array_append_new(arr, json_string(host));
}

/* "hub 3.0.0 · user 3.0.0" from preflight envs (before) or install data (after). */
static void versions_key(json_t *v, char *buf, size_t len) {
  size_t off = 0, i;
  json_t *e;
  const char *k;
  buf[0] = '\0';
  if (json_is_array(v)) {
    json_array_foreach(v, i, e) {
      int n = snprintf(buf + off, len - off, "%s%s %s", off ? " · " : "", jstr(e, "role")[0] ? jstr(e, "role") : "env",
                       jstr(e, "jupyterhub")[0] ? jstr(e, "jupyterhub") : "none");
      if (n < 0 || (size_t)n >= len - off) return;
      off += (size_t)n;
    }
  } else if (json_is_object(v)) {
    json_object_foreach(v, k, e) {
      const char *ver = jstr(e, "jupyterhub");
      int n = snprintf(buf + off, len - off, "%s%s %s", off ? " · " : "", k, ver[0] ? ver : "none");
      if (n < 0 || (size_t)n >= len - off) return;
      off += (size_t)n;
    }
  }
  if (!buf[0]) snprintf(buf, len, "unknown");
}

static void fold_table(FILE *f, const char *title, json_t *fold) {
  const char *key;
  json_t *arr;
  fprintf(f, "<h3>%s</h3>\n<table class=\"versions\"><tr><th>versions</th><th>hosts</th><th></th></tr>\n", title);
  bool drift = json_object_size(fold) > 1;
  json_object_foreach(fold, key, arr) {
    fprintf(f, "<tr%s><td>", drift ? " class=\"drift\"" : "");
    esc(f, key);
    fprintf(f, "</td><td class=\"num\">%zu</td><td>", json_array_size(arr));
    size_t i;
    json_t *hn;
    json_array_foreach(arr, i, hn) { if (i) fputs(", ", f); if (i == 12) { fputs("…", f); break; } esc(f, json_string_value(hn)); }
    fputs("</td></tr>\n", f);
  }
  fputs("</table>\n", f);
}

static int report_rollout(FILE *f, struct hf_state *st, const char *id) {
  json_t *ro = hf_state_rollout_get(st, id);
  if (!ro) return HF_ENOTFOUND;
  json_t *hosts = hf_state_hosts(st, id), *steps = hf_state_steps(st, id, NULL), *events = hf_state_events(st, id, 0);
  int64_t t0 = json_integer_value(json_object_get(ro, "created"));
  char title[128];
  snprintf(title, sizeof title, "hubfleet rollout %s", id);
  fprintf(f, page_head, title);
  fputs("<h1>Rollout ", f);
  esc(f, id);
  fprintf(f, " <span class=\"pill s-%s\" id=\"rollout-status\">%s</span></h1>\n", jstr(ro, "status"), jstr(ro, "status"));
  fputs("<div class=\"meta\">target <b>", f);
  esc(f, jstr(ro, "target"));
  fputs("</b> · inventory ", f);
  esc(f, jstr(ro, "inventory"));
  char when[64];
  time_t t = (time_t)(t0 / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
  fprintf(f, " · started %s · failure budget %" JSON_INTEGER_FORMAT ", used <span id=\"budget-used\">%" JSON_INTEGER_FORMAT "</span></div>\n",
          when, json_integer_value(json_object_get(ro, "budget")), json_integer_value(json_object_get(ro, "failures")));

  fputs("<h2>Timeline</h2>\n", f);
  timeline(f, hosts, steps, t0);

  fputs("<h2>Stages</h2>\n<table id=\"stages\"><tr><th>stage</th><th>hosts</th><th>upgraded</th><th>rolled back</th>"
        "<th>failed</th><th>needs attention</th><th>untouched</th><th>longest downtime</th></tr>\n", f);
  long long nst = json_integer_value(json_object_get(ro, "nstages"));
  for (long long s = 0; s < nst && s < 1000; s++) {
    int c[5] = { 0 }, total = 0;
    int64_t maxdown = -1;
    size_t i;
    json_t *h;
    json_array_foreach(hosts, i, h) {
      if (json_integer_value(json_object_get(h, "stage")) != s) continue;
      total++;
      const char *stt = jstr(h, "status");
      c[!strcmp(stt, HF_HOST_UPGRADED) ? 0 : !strcmp(stt, HF_HOST_ROLLEDBACK) ? 1 : !strcmp(stt, HF_HOST_ATTENTION) ? 3
        : !strcmp(stt, HF_HOST_PENDING) ? 4 : 2]++;
      json_t *d = json_object_get(h, "downtime_ms");
      if (json_is_integer(d) && json_integer_value(d) > maxdown) maxdown = json_integer_value(d);
    }
    char d[32] = "-";
    if (maxdown >= 0) fmt_dur(maxdown, d, sizeof d);
    fprintf(f, "<tr><td>%lld</td><td class=\"num\">%d</td><td class=\"num\">%d</td><td class=\"num\">%d</td><td class=\"num\">%d</td>"
               "<td class=\"num\">%d</td><td class=\"num\">%d</td><td class=\"num\">%s</td></tr>\n",
            s + 1, total, c[0], c[1], c[2], c[3], c[4], d);
  }
  fputs("</table>\n", f);

  fputs("<h2>Hosts</h2>\n<table id=\"hosts\"><tr><th>host</th><th>stage</th><th>status</th><th>last step</th><th>hub downtime</th><th>users' downtime</th></tr>\n", f);
  size_t i;
  json_t *h;
  json_array_foreach(hosts, i, h) {
    char d[32] = "-", ud[32] = "-";
    json_t *dm = json_object_get(h, "downtime_ms"), *um = json_object_get(h, "users_downtime_ms");
    if (json_is_integer(dm)) fmt_dur(json_integer_value(dm), d, sizeof d);
    if (json_is_integer(um)) fmt_dur(json_integer_value(um), ud, sizeof ud);
    fputs("<tr><td>", f);
    esc(f, jstr(h, "host"));
    fprintf(f, "</td><td>%" JSON_INTEGER_FORMAT "</td><td><span class=\"pill s-%s\">%s</span></td><td>",
            json_integer_value(json_object_get(h, "stage")) + 1, jstr(h, "status"), jstr(h, "status"));
    esc(f, jstr(h, "step"));
    fprintf(f, "</td><td>%s</td><td>%s</td></tr>\n", d, ud);
  }
  fputs("</table>\n", f);

  fputs("<h2>Versions</h2>\n", f);
  json_t *before = json_object(), *after = json_object();
  json_array_foreach(hosts, i, h) {
    char key[1024];
    if (json_object_get(h, "before")) versions_key(json_object_get(h, "before"), key, sizeof key);
    else snprintf(key, sizeof key, "not reached (untouched)");
    fold_add(before, key, jstr(h, "host"));
    json_t *a = json_object_get(h, "after"), *b = json_object_get(h, "before");
    if (!strcmp(jstr(h, "status"), HF_HOST_UPGRADED) && json_is_object(a) && json_is_array(b)) {
      /* install data is keyed by prefix: name each environment by its role, as before */
      json_t *roles = json_array();
      size_t j;
      json_t *e;
      json_array_foreach(b, j, e) {
        json_t *pk = json_object_get(a, jstr(e, "prefix"));
        json_array_append_new(roles, json_pack("{s:s,s:s}", "role", jstr(e, "role"), "jupyterhub",
                                               pk ? jstr(pk, "jupyterhub") : jstr(e, "jupyterhub")));
      }
      versions_key(roles, key, sizeof key);
      json_decref(roles);
    } else if (!b) snprintf(key, sizeof key, "not reached (untouched)");
    fold_add(after, key, jstr(h, "host"));
  }
  fold_table(f, "Before", before);
  fold_table(f, "After", after);
  json_decref(before);
  json_decref(after);

  fputs("<h2>Failures</h2>\n", f);
  int nfail = 0;
  json_array_foreach(hosts, i, h) {
    const char *stt = jstr(h, "status");
    if (strcmp(stt, HF_HOST_FAILED) && strcmp(stt, HF_HOST_ROLLEDBACK) && strcmp(stt, HF_HOST_ATTENTION)) continue;
    nfail++;
    fputs("<div class=\"failure\"><h3>", f);
    esc(f, jstr(h, "host"));
    fprintf(f, " <span class=\"pill s-%s\">%s</span></h3>\n<p>", stt, stt);
    esc(f, jstr(h, "error"));
    fputs("</p>\n", f);
    json_t *bk = json_object_get(json_object_get(h, "backup"), "backup");
    if (bk) { fputs("<p class=\"meta\">backup: ", f); esc(f, jstr(bk, "dir")); fputs("</p>\n", f); }
    /* last log lines of this host */
    size_t n = 0, j;
    json_t *ev;
    json_array_foreach(events, j, ev) n += !strcmp(jstr(ev, "host"), jstr(h, "host"));
    size_t skip = n > 15 ? n - 15 : 0, seen = 0;
    fputs("<pre class=\"log\">", f);
    json_array_foreach(events, j, ev) {
      if (strcmp(jstr(ev, "host"), jstr(h, "host")) || seen++ < skip) continue;
      fprintf(f, "[%s] ", jstr(ev, "level"));
      esc(f, jstr(ev, "text"));
      fputc('\n', f);
    }
    fputs("</pre></div>\n", f);
  }
  if (!nfail) fputs("<p>No host failed.</p>\n", f);
  fprintf(f, "<p class=\"meta\">hubfleet %s</p>\n</body></html>\n", HF_VERSION);
  json_decref(ro);
  json_decref(hosts);
  json_decref(steps);
  json_decref(events);
  return 0;
}

/* An audit document (hubfleet audit --json): versions by host and group, drift highlighted. */
/* The host's name in an audit document ("name"; older documents: "host"). */
static const char *host_name(const json_t *h) {
  const char *n = jstr(h, "name");
  return n[0] ? n : jstr(h, "host");
}

static int report_audit(FILE *f, json_t *doc, const struct hf_inventory *inv) {
  fprintf(f, page_head, "hubfleet audit");
  fputs("<h1>Audit</h1>\n", f);
  json_t *hosts = json_object_get(doc, "hosts");
  if (!json_is_array(hosts)) return HF_EINVAL;
  size_t i;
  json_t *h;
  json_t *fold = json_object(), *groups = json_object();
  int unreachable = 0;
  json_array_foreach(hosts, i, h) {
    const char *name = host_name(h);
    if (!json_is_true(json_object_get(h, "ok"))) { unreachable++; continue; }
    char key[1024];
    versions_key(json_object_get(json_object_get(h, "facts"), "envs"), key, sizeof key);
    fold_add(fold, key, name);
    const struct hf_host *ih = inv ? hf_inv_find(inv, name) : NULL;
    for (size_t g = 0; ih && g < ih->ngroups; g++) {
      json_t *gf = json_object_get(groups, ih->groups[g]);
      if (!gf) { gf = json_object(); json_object_set_new(groups, ih->groups[g], gf); }
      fold_add(gf, key, name);
    }
  }
  fprintf(f, "<div class=\"meta\">%zu hosts · %zu distinct version sets%s · %d unreachable or failed</div>\n",
          json_array_size(hosts), json_object_size(fold), json_object_size(fold) > 1 ? " (drift)" : "", unreachable);
  fputs("<h2>Versions across the fleet</h2>\n", f);
  fold_table(f, "All hosts", fold);
  const char *g;
  json_t *gf;
  if (!inv) fputs("<p class=\"meta\">Groups: pass the inventory with -i to see versions by group.</p>\n", f);
  else fputs("<h2>By group</h2>\n", f);
  json_object_foreach(groups, g, gf) {
    char t[300];
    snprintf(t, sizeof t, "group %s", g);
    fputs("<div class=\"group\">", f);
    FILE *mem = f;
    fprintf(mem, "<h3>");
    esc(mem, t);
    fprintf(mem, "</h3>");
    fold_table(f, "", gf);
    fputs("</div>\n", f);
  }
  fputs("<h2>Hosts</h2>\n<table id=\"hosts\"><tr><th>host</th><th>versions</th><th>hub api</th><th>error</th></tr>\n", f);
  json_array_foreach(hosts, i, h) {
    char key[1024] = "";
    json_t *facts = json_object_get(h, "facts");
    if (facts) versions_key(json_object_get(facts, "envs"), key, sizeof key);
    fprintf(f, "<tr%s><td>", json_object_size(fold) > 1 ? " class=\"drift\"" : "");
    esc(f, host_name(h));
    fputs("</td><td>", f);
    esc(f, key);
    fputs("</td><td>", f);
    esc(f, jstr(facts, "api_version"));
    fputs("</td><td>", f);
    esc(f, jstr(h, "error"));
    fputs("</td></tr>\n", f);
  }
  fputs("</table>\n</body></html>\n", f);
  json_decref(fold);
  json_decref(groups);
  return 0;
}

static void usage(FILE *f) {
  fputs("usage: hubfleet report [ROLLOUT] -o FILE.html [--state FILE]\n"
        "       hubfleet report --audit AUDIT.json [-i INVENTORY] -o FILE.html\n\n"
        "Writes one self-contained HTML page (no external assets): for a rollout\n"
        "(default: the latest) a timeline of every host's steps with downtime\n"
        "marked, stage summary, failure budget, versions before and after folded\n"
        "by identical answers, and each failed host's error and last log lines;\n"
        "for an audit document ('hubfleet audit --json' output), versions by host\n"
        "and group (groups from -i INVENTORY) with drift highlighted. The file is\n"
        "written atomically.\n\n"
        "Exit codes: 0 written, 2 bad arguments or unknown rollout, 70 error.\n", f);
}

int hf_cmd_report(int argc, char **argv) {
  static const struct option opts[] = {
    { "output", required_argument, NULL, 'o' }, { "state", required_argument, NULL, 's' },
    { "audit", required_argument, NULL, 'a' }, { "inventory", required_argument, NULL, 'i' },
    { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
  const char *out = NULL, *state = NULL, *audit = NULL, *id = NULL, *inv_path = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:i:h", opts, NULL)) != -1) {
    switch (c) {
    case 'i': inv_path = optarg; break;
    case 'o': out = optarg; break;
    case 's': state = optarg; break;
    case 'a': audit = optarg; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return HF_EXIT_USAGE;
    }
  }
  if (optind < argc) id = argv[optind++];
  if (optind < argc || !out) { usage(stderr); return HF_EXIT_USAGE; }
  if (id && !hf_valid_id(id)) { fprintf(stderr, "hubfleet report: '%s' is not a rollout id\n", id); return HF_EXIT_USAGE; }

  hf_sanitize_stdio(); /* error messages may quote what hosts sent */
  struct hf_out o;
  char oerr[600];
  if (hf_out_open(&o, out, 0644, oerr, sizeof oerr) != 0) { fprintf(stderr, "hubfleet report: %s\n", oerr); return HF_EXIT_USAGE; }
  FILE *f = o.f;
  int r, rc = 0;
  if (audit) {
    json_error_t je;
    json_t *doc = !strcmp(audit, "-") ? json_loadf(stdin, 0, &je) : json_load_file(audit, 0, &je);
    if (!doc) { fprintf(stderr, "hubfleet report: %s:%d: %s\n", audit, je.line, je.text); rc = HF_EXIT_USAGE; goto out; }
    struct hf_inventory *inv = NULL;
    struct hf_inv_error ierr;
    if (inv_path && hf_inv_load(inv_path, &inv, &ierr) != 0) {
      char msg[1400];
      hf_inv_error_format(&ierr, msg, sizeof msg);
      fprintf(stderr, "hubfleet report: %s\n", msg);
      json_decref(doc);
      rc = HF_EXIT_USAGE;
      goto out;
    }
    r = report_audit(f, doc, inv);
    hf_inv_free(inv);
    json_decref(doc);
    if (r) { fprintf(stderr, "hubfleet report: %s: not an audit document (expected \"hosts\": [...])\n", audit); rc = HF_EXIT_USAGE; goto out; }
  } else {
    char err[512], latest[64];
    struct hf_state *st;
    if (hf_state_open(state, &st, err, sizeof err) != 0) { fprintf(stderr, "hubfleet report: %s\n", err); rc = HF_EXIT_INTERNAL; goto out; }
    if (!id) {
      if (hf_state_rollout_latest(st, latest, sizeof latest) != 0) { fprintf(stderr, "hubfleet report: no rollout recorded yet\n"); hf_state_close(st); rc = HF_EXIT_USAGE; goto out; }
      id = latest;
    }
    r = report_rollout(f, st, id);
    hf_state_close(st);
    if (r) { fprintf(stderr, "hubfleet report: no rollout '%s' in the state file\n", id); rc = HF_EXIT_USAGE; goto out; }
  }
out:
  if (hf_out_commit(&o, rc == 0, oerr, sizeof oerr) != 0) { fprintf(stderr, "hubfleet report: %s\n", oerr); rc = HF_EXIT_INTERNAL; }
  if (rc == 0) fprintf(stderr, "hubfleet report: wrote %s\n", out);
  return rc;
}
