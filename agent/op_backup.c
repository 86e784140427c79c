/* op_backup.c: the backup operation: the database (SQLite online copy, checked; PostgreSQL pg_dump), the configuration and the
 * package versions, journaled; a rollout's only way back. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "ops.h"
#include "pg.h"

/* ---- backup ---------------------------------------------------------------------------------- */

/* Bytes under path (files only), bounded in entries. */
static int64_t tree_bytes(const char *path, int depth, int64_t *budget) {
  struct stat st;
  DIR *d;
  struct dirent *de;
  int64_t sum = 0;
  if (--*budget < 0 || lstat(path, &st) != 0) return 0;
  if (!S_ISDIR(st.st_mode)) return S_ISREG(st.st_mode) ? (int64_t)st.st_size : 0;
  if (depth > 64 || (d = opendir(path)) == NULL) return 0;
  while ((de = readdir(d)) != NULL) {
    char sub[PATH_MAX];
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (hf__pathf(sub, sizeof sub, "%s/%s", path, de->d_name) != 0) continue;
    sum += tree_bytes(sub, depth + 1, budget);
  }
  closedir(d);
  return sum;
}

int hf__op_backup(struct hf_req *r, json_t *data) {
  struct envset *es = NULL;
  struct pkglist pl;
  json_t *recs = NULL, *done, *prev, *bk = NULL;
  char dir[PATH_MAX], dbf[PATH_MAX], cff[PATH_MAX], dbsha[HF_SHA256_HEX] = "", cfsha[HF_SHA256_HEX];
  int64_t need = 1 << 20, homes = 0, fb;
  bool want_homes = json_is_true(json_object_get(r->args, "homes")) && json_array_size(r->hub.backup_homes) > 0;
  bool running;
  char state[64];
  int rc, i;
  size_t k;

  if ((rc = hf__jread(r, &recs)) != 0) return rc;
  /* Idempotent, and never overwrite: a second backup after install would
   * save the upgraded database as "the previous state". */
  if ((done = hf__jlast(recs, "backup", "done")) != NULL) {
    json_t *d = json_object_get(done, "detail");
    const char *f = json_string_value(json_object_get(json_object_get(d, "backup"), "db_file"));
    const char *s = json_string_value(json_object_get(json_object_get(d, "backup"), "db_sha256"));
    char now[HF_SHA256_HEX];
    if (f && s && (hf_sha256_file(f, now) != 0 || strcmp(now, s) != 0)) {
      json_decref(recs);
      snprintf(r->msg, sizeof r->msg, "backup %s of rollout %s no longer matches its checksum", f, r->rollout);
      return HF_EINTEGRITY;
    }
    json_object_set(data, "backup", json_object_get(d, "backup"));
    json_object_set(data, "previous", json_object_get(d, "previous"));
    json_object_set_new(data, "already", json_true());
    json_decref(recs);
    return 0;
  }
  json_decref(recs);

  if (hf__pathf(dir, sizeof dir, "%s/%s", r->hub.backup_dir, r->rollout) != 0) return HF_EBADARG;
  if (hf__mkdirs(dir, 0700) != 0) {
    snprintf(r->msg, sizeof r->msg, "cannot create backup directory %s: %s", dir, strerror(errno));
    return HF_EIO;
  }
  if (r->hub.sqlite) need += hf__file_size(r->hub.db_path);
  need += hf__file_size(r->hub.config);
  if (want_homes) {
    int64_t budget = 2000000;
    for (k = 0; k < json_array_size(r->hub.backup_homes); k++)
      homes += tree_bytes(json_string_value(json_array_get(r->hub.backup_homes, k)), 0, &budget);
    hf__event(r, "info", "backup: home directories hold %lld bytes", (long long)homes);
    need += homes;
  }
  fb = hf__free_bytes(dir);
  if (fb >= 0 && fb < need) {
    snprintf(r->msg, sizeof r->msg, "backup needs %lld bytes at %s, %lld free", (long long)need, dir, (long long)fb);
    return HF_ENOSPC;
  }

  /* The versions an upgrade will change, per environment: what rollback reinstalls. */
  if ((es = malloc(sizeof *es)) == NULL) return HF_ENOMEM;
  hf__envs_load(r, es);
  hf__pkgs_load(r, &pl, false);
  prev = json_object();
  for (i = 0; i < es->n; i++) json_object_set_new(prev, es->env[i].prefix, hf__env_pkg_obj(&es->env[i], &pl, pl.n_change));
  free(es);
  if (hf__svc_status(r, &running, state, sizeof state) != 0) running = true;
  r->msg[0] = '\0';
  {
    json_t *det = json_object();
    json_object_set_new(det, "dir", json_string(dir));
    json_object_set(det, "previous", prev);
    if (r->target) json_object_set_new(det, "target", json_string(r->target));
    if ((rc = hf__jrec(r, "backup", "begin", det)) != 0) { json_decref(prev); return rc; }
  }

  bk = json_object();
  json_object_set_new(bk, "dir", json_string(dir));
  if (r->hub.sqlite) {
    char alembic[128] = "", err[512] = "";
    int64_t users;
    hf_db_info(r->hub.db_path, alembic, sizeof alembic, &users, err, sizeof err);
    if (hf__pathf(dbf, sizeof dbf, "%s/jupyterhub.sqlite", dir) != 0) { rc = HF_EBADARG; goto fail; }
    if ((rc = hf_db_backup(r->hub.db_path, dbf, dbsha, r->msg, sizeof r->msg)) != 0) goto fail;
    json_object_set_new(bk, "db_kind", json_string("sqlite"));
    json_object_set_new(bk, "db_file", json_string(dbf));
    json_object_set_new(bk, "db_sha256", json_string(dbsha));
    json_object_set_new(bk, "alembic_revision", alembic[0] ? json_string(alembic) : json_null());
    hf__event(r, "info", "backup: %s -> %s sha256 %s (integrity ok)", r->hub.db_path, dbf, dbsha);
  } else if (hf_pg_ours(&r->hub)) {
    /* PostgreSQL: a plain-SQL pg_dump (--clean --if-exists, so it restores
     * over the live database in one transaction), taken here, before the
     * stop; its checksum, and a digest of its content for the rollback to
     * prove the restore with. */
    struct hf_pg pg;
    char content[HF_SHA256_HEX], alembic[128] = "";
    if ((rc = hf_pg_open(r, &pg)) != 0) goto fail;
    if (hf__pathf(dbf, sizeof dbf, "%s/jupyterhub.pg.sql", dir) != 0) { rc = HF_EBADARG; goto fail; }
    if ((rc = hf_pg_alembic(r, &pg, pg.url, "backup", alembic, sizeof alembic)) != 0) goto fail;
    if ((rc = hf_pg_dump(r, &pg, pg.url, dbf, "backup", dbsha, content)) != 0) goto fail;
    json_object_set_new(bk, "db_kind", json_string("postgresql"));
    json_object_set_new(bk, "db_file", json_string(dbf));
    json_object_set_new(bk, "db_sha256", json_string(dbsha));
    json_object_set_new(bk, "db_content_sha256", json_string(content));
    json_object_set_new(bk, "db_bytes", json_integer(hf__file_size(dbf)));
    json_object_set_new(bk, "alembic_revision", alembic[0] ? json_string(alembic) : json_null());
    hf__event(r, "info", "backup: pg_dump of %s -> %s sha256 %s (%lld bytes, alembic %s)", pg.shown, dbf, dbsha,
              (long long)hf__file_size(dbf), alembic[0] ? alembic : "(none)");
  } else if (json_array_size(r->hub.db_dump) > 0) {
    struct hf_argv a;
    struct hf_run run;
    struct hf_sf sf;
    if (hf__pathf(dbf, sizeof dbf, "%s/db.dump", dir) != 0) { rc = HF_EBADARG; goto fail; }
    if ((rc = hf_sf_begin(&sf, dbf, 0600, r->msg, sizeof r->msg)) != 0) goto fail;
    hf_argv_init(&a);
    for (k = 0; k < json_array_size(r->hub.db_dump); k++) hf_argv_push(&a, json_string_value(json_array_get(r->hub.db_dump, k)));
    memset(&run, 0, sizeof run);
    run.argv = a.v; run.stdout_fd = sf.fd; run.timeout_ms = hf__left_ms(r);
    rc = hf_argv_error(&a) ? hf_argv_error(&a) : hf_run_exec(&run);
    if (rc != 0) hf_sf_abort(&sf);
    else if ((rc = hf_sf_commit(&sf, r->msg, sizeof r->msg)) != 0) { hf_run_free(&run); hf_argv_free(&a); goto fail; }
    if (rc != 0) snprintf(r->msg, sizeof r->msg, "db_dump %s failed (%s, status %d): %.1500s", a.v[0] ? a.v[0] : "",
                          hf_err_code(rc), run.status, run.out ? run.out : "");
    hf_run_free(&run);
    hf_argv_free(&a);
    if (rc != 0) goto fail;
    hf_sha256_file(dbf, dbsha);
    json_object_set_new(bk, "db_kind", json_string("dump"));
    json_object_set_new(bk, "db_file", json_string(dbf));
    json_object_set_new(bk, "db_sha256", json_string(dbsha));
  } else {
    /* (the URL is not shown: it may hold a password) */
    snprintf(r->msg, sizeof r->msg, "the hub database (hubfleet_db) is neither SQLite nor PostgreSQL and no db_dump "
             "command is configured: refusing to pretend it is backed up");
    rc = HF_EUNSUPPORTED;
    goto fail;
  }
  if (hf__pathf(cff, sizeof cff, "%s/jupyterhub_config.py", dir) != 0) { rc = HF_EBADARG; goto fail; }
  if ((rc = hf_file_install(r->hub.config, cff, NULL, cfsha, r->msg, sizeof r->msg)) != 0) goto fail;
  json_object_set_new(bk, "config_file", json_string(cff));
  json_object_set_new(bk, "config_sha256", json_string(cfsha));
  if (want_homes) {
    struct hf_argv a;
    char tar[PATH_MAX], tool[PATH_MAX];
    if (!hf__which("tar", tool, sizeof tool)) { snprintf(r->msg, sizeof r->msg, "tar not found"); rc = HF_EUNSUPPORTED; goto fail; }
    snprintf(tar, sizeof tar, "%s/homes.tar", dir);
    hf__argv_start(r, &a);
    hf_argv_push(&a, tool);
    hf_argv_push(&a, "--create");
    hf_argv_pushf(&a, "--file=%s", tar);
    hf_argv_push(&a, "--directory=/");
    hf_argv_push(&a, "--");
    for (k = 0; k < json_array_size(r->hub.backup_homes); k++)
      hf_argv_push(&a, json_string_value(json_array_get(r->hub.backup_homes, k)) + 1);
    rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "backup", false, NULL);
    hf_argv_free(&a);
    if (rc != 0) goto fail;
    json_object_set_new(bk, "homes_file", json_string(tar));
    json_object_set_new(bk, "homes_bytes", json_integer(homes));
  }
  json_object_set_new(bk, "hub_running", json_boolean(running));
  {
    json_t *det = json_object();
    json_object_set(det, "backup", bk);
    json_object_set(det, "previous", prev);
    if ((rc = hf__jrec(r, "backup", "done", det)) != 0) goto out;
  }
  json_object_set(data, "backup", bk);
  json_object_set(data, "previous", prev);
  rc = 0;
  goto out;
fail:
  {
    json_t *det = json_object();
    json_object_set_new(det, "error", json_string(r->msg));
    json_object_set_new(det, "code", json_string(hf_err_code(rc)));
    hf__jrec(r, "backup", "failed", det);
  }
out:
  json_decref(bk);
  json_decref(prev);
  return rc;
}
