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
#include "stage.h"

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

/* Does e hold every string pin of pins ({pkg: ver}), by its files? */
static bool env_at(const struct hf_env *e, json_t *pins) {
  const char *pkg;
  json_t *v;
  json_object_foreach(pins, pkg, v) {
    char ver[1][HF_VER_LEN];
    if (!json_is_string(v)) continue;
    hf_env_versions(e, &pkg, 1, ver);
    if (strcmp(ver[0], json_string_value(v)) != 0) return false;
  }
  return true;
}

/* Brings every environment to the pins: want[prefix] = {pkg: ver}. Envs
 * already there are skipped, so a repeated install runs nothing. */
int hf__install_envs(struct hf_req *r, const char *step, json_t *want, json_t *installed) {
  struct envset *es = malloc(sizeof *es);
  int i, rc = 0;
  if (es == NULL) return HF_ENOMEM;
  hf__envs_load(r, es);
  /* A rollback first switches back the environments an install switched out (stage.c), when
   * they hold exactly the wanted versions: no installer, no package source. */
  if (strcmp(step, "rollback") == 0) {
    json_t *by = json_object(), *det;
    for (i = 0; i < es->n && rc == 0; i++) {
      json_t *pins = json_object_get(want, es->env[i].prefix);
      bool restored = false, undone = false;
      /* An install cut in the middle of its switch: the environment put back first. */
      if ((rc = hf__stage_undo_cut(r, es->env[i].prefix, &undone)) != 0) break;
      if (undone) hf_env_inspect(es->env[i].prefix, r->hub.installer, &es->env[i]);
      if (!json_is_object(pins) || env_at(&es->env[i], pins)) {
        if (undone) json_object_set_new(by, es->env[i].prefix, json_string("switch"));
        continue;
      }
      rc = hf__stage_restore_prev(r, &es->env[i], pins, &restored);
      if (restored) hf_env_inspect(es->env[i].prefix, r->hub.installer, &es->env[i]);
      json_object_set_new(by, es->env[i].prefix, json_string(restored ? "switch" : "pip"));
    }
    if (rc != 0) { json_decref(by); free(es); return rc; }
    if (json_object_size(by) > 0) {
      /* Said in the journal (a record of the rollback still begun, with how). */
      det = json_object();
      json_object_set_new(det, "restored_by", by);
      if ((rc = hf__jrec(r, step, "begin", det)) != 0) { free(es); return rc; }
    } else {
      json_decref(by);
    }
  }
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

json_t *hf__install_want(struct hf_req *r, const struct envset *es) {
  json_t *want = json_object();
  int i;
  size_t k;
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
  return want;
}

/* Switches in every environment staged before the stop (stage.c), then brings whatever is left
 * to the pins with the installer, and verifies every environment from its files. */
int hf__op_install(struct hf_req *r, json_t *data) {
  json_t *want = NULL, *installed = json_object(), *previous = json_object(), *det;
  struct envset *es = malloc(sizeof *es);
  int i, rc, n_sw = 0;

  if (es == NULL) { json_decref(installed); json_decref(previous); return HF_ENOMEM; }
  if ((rc = hf__need_backup(r, NULL)) != 0) goto out;
  hf__envs_load(r, es);
  want = hf__install_want(r, es);
  det = json_object();
  json_object_set_new(det, "target", json_string(r->target));
  json_object_set(det, "want", want);
  if ((rc = hf__jrec(r, "install", "begin", det)) != 0) goto out;
  for (i = 0; i < es->n; i++) {
    bool sw = false;
    if ((rc = hf__stage_switch(r, &es->env[i], json_object_get(want, es->env[i].prefix), previous, &sw)) != 0) {
      rc = hf__fail_step(r, "install", rc);
      goto out;
    }
    n_sw += sw;
  }
  if ((rc = hf__install_envs(r, "install", want, installed)) != 0) { rc = hf__fail_step(r, "install", rc); goto out; }
  det = json_object();
  json_object_set(det, "installed", installed);
  json_object_set_new(det, "switched", json_boolean(n_sw == es->n));
  json_object_set(det, "previous", previous);
  if ((rc = hf__jrec(r, "install", "done", det)) != 0) goto out;
  json_object_set(data, "installed", installed);
  json_object_set_new(data, "switched", json_boolean(n_sw == es->n));
  json_object_set(data, "previous", previous);
out:
  free(es);
  json_decref(want);
  json_decref(installed);
  json_decref(previous);
  return rc;
}

/* ---- migrate ------------------------------------------------------------------------------------ */

/* The live database's alembic revision ("" when unknown: not SQLite or PostgreSQL, or no table). */
int hf__alembic_now(struct hf_req *r, char *out, size_t outlen) {
  int64_t users;
  out[0] = '\0';
  if (r->hub.sqlite) return hf_db_info(r->hub.db_path, out, outlen, &users, r->msg, sizeof r->msg) != 0 ? HF_EDB : 0;
  if (hf_pg_ours(&r->hub)) {
    struct hf_pg pg;
    int rc = hf_pg_open(r, &pg);
    if (rc == 0) rc = hf_pg_alembic(r, &pg, pg.url, "migrate", out, outlen);
    return rc != 0 ? HF_EDB : 0;
  }
  return 0;
}

int hf__op_migrate(struct hf_req *r, json_t *data) {
  const char *expect = json_string_value(json_object_get(r->args, "expect_revision"));
  char before[128] = "", after[128] = "", bin[PATH_MAX];
  struct hf_argv a;
  json_t *det;
  int rc;

  if ((rc = hf__need_backup(r, NULL)) != 0) return rc;
  if ((rc = hf__alembic_now(r, before, sizeof before)) != 0) return rc;
  /* The rehearsal said what the revision will be: when the database already has it, upgrade-db
   * would only cost its Python start-up inside the downtime. */
  if (expect != NULL && before[0] && strcmp(before, expect) == 0) {
    hf__event(r, "info", "migrate: the database is at %s already, as expected: upgrade-db not run", before);
    det = json_object();
    json_object_set_new(det, "alembic_before", json_string(before));
    json_object_set_new(det, "alembic_after", json_string(before));
    json_object_set_new(det, "skipped", json_true());
    if ((rc = hf__jrec(r, "migrate", "begin", json_deep_copy(det))) != 0) { json_decref(det); return rc; }
    if ((rc = hf__jrec(r, "migrate", "done", json_deep_copy(det))) != 0) { json_decref(det); return rc; }
    json_object_update(data, det);
    json_object_set_new(data, "expect_met", json_true());
    json_decref(det);
    return 0;
  }
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
  if ((rc = hf__alembic_now(r, after, sizeof after)) != 0) return hf__fail_step(r, "migrate", rc);
  det = json_object();
  json_object_set_new(det, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(det, "alembic_after", after[0] ? json_string(after) : json_null());
  if ((rc = hf__jrec(r, "migrate", "done", det)) != 0) return rc;
  json_object_set_new(data, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(data, "alembic_after", after[0] ? json_string(after) : json_null());
  json_object_set_new(data, "skipped", json_false());
  /* The rehearsal's prediction against what the live database reached. */
  if (expect != NULL) {
    if (strcmp(after, expect) != 0)
      hf__event(r, "warn", "migrate: the database is at %s, but the rehearsal predicted %s", after[0] ? after : "?", expect);
    json_object_set_new(data, "expect_met", json_boolean(strcmp(after, expect) == 0));
  }
  return 0;
}
