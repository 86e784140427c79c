/* op_install.c: install (every environment to the pins) and migrate (the database schema), each
 * journaled before and after. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_int.h"
#include "hub.h"
#include "ops.h"
#include "pg.h"
#include "prep.h"

/* ---- installer ---------------------------------------------------------------------------- */

/* Installs pins (borrowed strings "NAME==V") into e with its own installer. */
static int env_install(struct hf_req *r, const struct hf_env *e, const char *const *pins, int n, int64_t timeout) {
  struct hf_argv a;
  char tool[PATH_MAX];
  int i, rc;

  hf__argv_start(r, &a);
  if (strcmp(e->installer, "conda") == 0) {
    char cbin[PATH_MAX];
    if (!hf__which("conda", tool, sizeof tool)) {
      /* An environment inside a conda installation: PREFIX/../../bin/conda. */
      if (hf__pathf(cbin, sizeof cbin, "%s/../../bin/conda", e->prefix) != 0 || access(cbin, X_OK) != 0) {
        hf_argv_free(&a);
        snprintf(r->msg, sizeof r->msg, "%s: conda environment but no conda program found", e->prefix);
        return HF_EUNSUPPORTED;
      }
      if (realpath(cbin, tool) == NULL) snprintf(tool, sizeof tool, "%s", cbin);
    }
    hf_argv_push(&a, tool);
    hf_argv_push(&a, "install");
    hf_argv_push(&a, "--yes");
    hf_argv_push(&a, "--prefix");
    hf_argv_push(&a, e->prefix);
    hf_argv_push(&a, "--channel");
    hf_argv_push(&a, "conda-forge");
  } else {
    hf__pip_install_cmd(r, &a, e->prefix);
  }
  for (i = 0; i < n; i++) {
    if (!hf_valid_pkgpin(pins[i])) {
      hf_argv_free(&a);
      snprintf(r->msg, sizeof r->msg, "refusing to install %.80s: not NAME==VERSION", pins[i]);
      return HF_EBADARG;
    }
    hf_argv_push(&a, pins[i]);
  }
  rc = hf__cmd(r, &a, NULL, NULL, NULL, timeout, "install", false, NULL);
  hf_argv_free(&a);
  return rc;
}

/* ---- install ------------------------------------------------------------------------------------ */

/* Brings every environment to the pins: want[prefix] = {pkg: ver}. Envs
 * already there are skipped, so a repeated install runs nothing. */
int hf__install_envs(struct hf_req *r, const char *step, json_t *want, json_t *installed) {
  struct envset *es = malloc(sizeof *es);
  int i, rc = 0;
  if (es == NULL) return HF_ENOMEM;
  hf__envs_load(r, es);
  /* Separate environments side by side (issue 7); the loop below then finds
   * them at the pins, and verifies every one from its files. */
  if ((rc = hf__install_prepass(r, step, es->env, es->n, want, NULL)) != 0) { free(es); return rc; }
  for (i = 0; i < es->n; i++) {
    struct hf_env *e = &es->env[i];
    json_t *pins = json_object_get(want, e->prefix), *v;
    const char *pkg, *names[64], *pinv[64];
    char pinbuf[64][200], vers[64][HF_VER_LEN];
    int n = 0, k;
    bool same = true;
    hf__progress(r, step, i, es->n);
    if (!e->exists) { snprintf(r->msg, sizeof r->msg, "environment %s does not exist", e->prefix); rc = HF_ENOTFOUND; break; }
    json_object_foreach(pins, pkg, v) {
      if (!json_is_string(v) || n >= 64) continue; /* null: was not installed; left alone */
      names[n] = pkg;
      snprintf(pinbuf[n], sizeof pinbuf[n], "%s==%s", pkg, json_string_value(v));
      pinv[n] = pinbuf[n];
      n++;
    }
    hf_env_versions(e, names, n, vers);
    for (k = 0; k < n; k++)
      if (strcmp(vers[k], json_string_value(json_object_get(pins, names[k]))) != 0) same = false;
    if (!same) {
      hf__event(r, "info", "%s: %s environment %s", step, es->role[i], e->prefix);
      if ((rc = env_install(r, e, pinv, n, hf__left_ms(r))) != 0) break;
      /* Trust the files, not the installer's exit code. */
      hf_env_inspect(e->prefix, r->hub.installer, e);
      hf_env_versions(e, names, n, vers);
      for (k = 0; k < n; k++)
        if (strcmp(vers[k], json_string_value(json_object_get(pins, names[k]))) != 0) {
          snprintf(r->msg, sizeof r->msg, "%s: %s is %s in %s after the install, expected %s", step, names[k],
                   vers[k][0] ? vers[k] : "missing", e->prefix, json_string_value(json_object_get(pins, names[k])));
          rc = HF_ECMD;
        }
      if (rc) break;
    } else {
      hf__event(r, "info", "%s: %s already at the wanted versions", step, e->prefix);
    }
    {
      json_t *o = json_object();
      for (k = 0; k < n; k++) json_object_set_new(o, names[k], json_string(vers[k]));
      json_object_set_new(installed, e->prefix, o);
    }
  }
  if (rc == 0) hf__progress(r, step, es->n, es->n);
  free(es);
  return rc;
}

int hf__op_install(struct hf_req *r, json_t *data) {
  json_t *want = json_object(), *installed = json_object(), *det;
  struct envset *es = malloc(sizeof *es);
  int i, rc;
  size_t k;

  if (es == NULL) { json_decref(want); json_decref(installed); return HF_ENOMEM; }
  if ((rc = hf__need_backup(r, NULL)) != 0) goto out;
  hf__envs_load(r, es);
  for (i = 0; i < es->n; i++) {
    json_t *o = json_object();
    json_object_set_new(o, "jupyterhub", json_string(r->target));
    for (k = 0; k < json_array_size(r->hub.extra_packages); k++) {
      const char *pin = json_string_value(json_array_get(r->hub.extra_packages, k));
      const char *eq = strstr(pin, "==");
      char nm[130];
      if (eq == NULL || (size_t)(eq - pin) >= sizeof nm) continue;
      memcpy(nm, pin, (size_t)(eq - pin));
      nm[eq - pin] = '\0';
      json_object_set_new(o, nm, json_string(eq + 2));
    }
    json_object_set_new(want, es->env[i].prefix, o);
  }
  det = json_object();
  json_object_set_new(det, "target", json_string(r->target));
  json_object_set(det, "want", want);
  if ((rc = hf__jrec(r, "install", "begin", det)) != 0) goto out;
  if ((rc = hf__install_envs(r, "install", want, installed)) != 0) { rc = hf__fail_step(r, "install", rc); goto out; }
  det = json_object();
  json_object_set(det, "installed", installed);
  if ((rc = hf__jrec(r, "install", "done", det)) != 0) goto out;
  json_object_set(data, "installed", installed);
out:
  free(es);
  json_decref(want);
  json_decref(installed);
  return rc;
}

/* ---- migrate ------------------------------------------------------------------------------------ */

/* The live database's alembic revision ("" when unknown: not SQLite or PostgreSQL, or no table). */
static int alembic_now(struct hf_req *r, char *out, size_t outlen) {
  int64_t users;
  out[0] = '\0';
  if (r->hub.sqlite) return hf_db_info(r->hub.db_path, out, outlen, &users, r->msg, sizeof r->msg) != 0 ? HF_EDB : 0;
  if (hf_pg_is(&r->hub)) {
    struct hf_pg pg;
    int rc = hf_pg_open(r, &pg);
    if (rc == 0) rc = hf_pg_alembic(r, &pg, pg.url, "migrate", out, outlen);
    return rc != 0 ? HF_EDB : 0;
  }
  return 0;
}

int hf__op_migrate(struct hf_req *r, json_t *data) {
  char before[128] = "", after[128] = "", bin[PATH_MAX];
  struct hf_argv a;
  json_t *det;
  int rc;

  if ((rc = hf__need_backup(r, NULL)) != 0) return rc;
  if ((rc = alembic_now(r, before, sizeof before)) != 0) return rc;
  det = json_object();
  json_object_set_new(det, "alembic_before", before[0] ? json_string(before) : json_null());
  if ((rc = hf__jrec(r, "migrate", "begin", det)) != 0) return rc;
  if (hf__pathf(bin, sizeof bin, "%s/bin", r->hub.hub_env) != 0) return hf__fail_step(r, "migrate", HF_EBADARG);
  hf__argv_start(r, &a);
  hf_argv_pushf(&a, "%s/jupyterhub", bin);
  hf_argv_push(&a, "upgrade-db");
  hf_argv_pushf(&a, "--config=%s", r->hub.config);
  /* In the config's directory: relative paths in the config resolve as the hub sees them. */
  rc = hf__cmd(r, &a, r->hub.config_dir, bin, NULL, hf__left_ms(r), "migrate", false, NULL);
  hf_argv_free(&a);
  if (rc != 0) return hf__fail_step(r, "migrate", rc);
  if ((rc = alembic_now(r, after, sizeof after)) != 0) return hf__fail_step(r, "migrate", rc);
  det = json_object();
  json_object_set_new(det, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(det, "alembic_after", after[0] ? json_string(after) : json_null());
  if ((rc = hf__jrec(r, "migrate", "done", det)) != 0) return rc;
  json_object_set_new(data, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(data, "alembic_after", after[0] ? json_string(after) : json_null());
  return 0;
}
