/* op_rollback.c: the rollback: the database restored from the rollout's backup (SQLite file or PostgreSQL dump), the previous versions
 * reinstalled, the hub started and its health checked; journaled. */
#include <stdio.h>
#include <string.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "ops.h"
#include "pg.h"
#include "probe.h"

/* ---- rollback ----------------------------------------------------------------------------------- */

/* Does every environment hold the versions in want ({prefix: {pkg: ver}})? */
static bool versions_match(struct hf_req *r, json_t *want) {
  const char *prefix, *pkg;
  json_t *pins, *v;
  json_object_foreach(want, prefix, pins) {
    struct hf_env e;
    char ver[1][HF_VER_LEN];
    hf_env_inspect(prefix, r->hub.installer, &e);
    json_object_foreach(pins, pkg, v) {
      if (!json_is_string(v)) continue;
      hf_env_versions(&e, &pkg, 1, ver);
      if (strcmp(ver[0], json_string_value(v)) != 0) return false;
    }
  }
  return true;
}

int hf__op_rollback(struct hf_req *r, json_t *data) {
  json_t *recs = NULL, *bkrec, *bk, *prev, *det, *restored = json_object(), *hdata = NULL;
  const char *dbf, *dbsha, *cff, *cfsha, *oldver = NULL;
  char sha[HF_SHA256_HEX], err[512];
  bool was, hub_was_running;
  int64_t log_off = -1;
  int rc;

  if ((rc = hf__jread(r, &recs)) != 0) { json_decref(restored); return rc; }
  bkrec = hf__jlast(recs, "backup", "done");
  if (bkrec == NULL) {
    /* Nothing was changed without a backup (stop/install/migrate refuse to
     * run before one), so there is nothing to undo. */
    json_decref(recs);
    json_decref(restored);
    json_object_set_new(data, "nothing_to_undo", json_true());
    json_object_set_new(data, "restored_versions", json_object());
    json_object_set_new(data, "db_sha256", json_null());
    json_object_set_new(data, "api_version", json_null());
    return 0;
  }
  bk = json_object_get(json_object_get(bkrec, "detail"), "backup");
  prev = json_object_get(json_object_get(bkrec, "detail"), "previous");
  if (json_is_object(json_object_get(r->args, "previous")) && !json_is_object(prev))
    prev = json_object_get(r->args, "previous");
  dbf = json_string_value(json_object_get(bk, "db_file"));
  dbsha = json_string_value(json_object_get(bk, "db_sha256"));
  cff = json_string_value(json_object_get(bk, "config_file"));
  cfsha = json_string_value(json_object_get(bk, "config_sha256"));
  hub_was_running = !json_is_false(json_object_get(bk, "hub_running"));
  oldver = json_string_value(json_object_get(json_object_get(prev, r->hub.hub_env), "jupyterhub"));

  /* Idempotent: a rollback that completed, with nothing journaled after it,
   * is the answer again. Restoring once more would throw away what the
   * restored hub has written since. The versions are re-checked: if someone
   * changed an environment since, the rollback runs again. */
  {
    json_t *last = json_array_get(recs, json_array_size(recs) - 1);
    json_t *ld = json_object_get(last, "detail");
    if (strcmp(json_string_value(json_object_get(last, "step")) ?: "", "rollback") == 0 &&
        strcmp(json_string_value(json_object_get(last, "state")) ?: "", "done") == 0 &&
        versions_match(r, prev)) {
      hf__event(r, "info", "rollback: already done at %s; nothing changed since", json_string_value(json_object_get(last, "time")) ?: "?");
      json_object_set(data, "restored_versions", json_object_get(ld, "restored_versions"));
      json_object_set(data, "db_sha256", json_object_get(ld, "db_sha256"));
      json_object_set(data, "api_version", json_object_get(ld, "api_version"));
      json_object_set_new(data, "already", json_true());
      rc = 0;
      goto out;
    }
  }
  det = json_object();
  json_object_set_new(det, "from_step", json_deep_copy(json_array_get(recs, json_array_size(recs) - 1)));
  if ((rc = hf__jrec(r, "rollback", "begin", det)) != 0) goto out;

  hf__event(r, "info", "rollback: stopping the hub");
  if ((rc = hf__svc_stop(r, &was)) != 0) goto fail;
  hf__event(r, "info", "rollback: reinstalling the previous versions");
  if ((rc = hf__install_envs(r, "rollback", prev, restored)) != 0) goto fail;
  if (r->hub.sqlite && dbf && dbsha) {
    /* The live files are hashed only through the safe open (hf_sf_open_read):
     * a FIFO the hub's user put there must not block the agent in open(2)
     * while it holds agent.lock, nor a symlink make it read another file.
     * One that is refused is no match: the restore below refuses to replace
     * it (hf_sf_begin), with the message naming it. */
    if (hf_sf_sha256(r->hub.db_path, sha, err, sizeof err) == 0 && strcmp(sha, dbsha) == 0) {
      hf__event(r, "info", "rollback: database already equals the backup (%s)", sha);
    } else {
      /* Verified first, side files moved aside, deleted only once it worked. */
      if ((rc = hf_db_restore(dbf, r->hub.db_path, dbsha, sha, r->msg, sizeof r->msg)) != 0) goto fail;
    }
    if (hf_sf_sha256(r->hub.db_path, sha, err, sizeof err) != 0 || strcmp(sha, dbsha) != 0) {
      snprintf(r->msg, sizeof r->msg, "database %s does not match the backup after restore%s%s", r->hub.db_path,
               sha[0] ? "" : ": ", sha[0] ? "" : err);
      rc = HF_EINTEGRITY;
      goto fail;
    }
    hf__event(r, "info", "rollback: database restored, sha256 %s", sha);
    json_object_set_new(data, "db_sha256", json_string(sha));
  } else if (dbf && dbsha && strcmp(json_string_value(json_object_get(bk, "db_kind")) ?: "", "postgresql") == 0) {
    /* PostgreSQL: the backup's pg_dump loaded in one transaction (tables
     * it does not hold dropped), then proven by dumping again. */
    struct hf_pg pg;
    const char *content = json_string_value(json_object_get(bk, "db_content_sha256"));
    if ((rc = hf_pg_open(r, &pg)) != 0) goto fail;
    if ((rc = hf_pg_restore(r, &pg, dbf, dbsha, content)) != 0) goto fail;
    json_object_set_new(data, "db_sha256", json_string(dbsha));
    json_object_set_new(data, "db_content_sha256", content ? json_string(content) : json_null());
  } else {
    /* A dump is restored by the operator's own tools: say so. */
    json_object_set_new(data, "db_sha256", json_null());
    if (dbf) hf__event(r, "warn", "rollback: non-SQLite database: restore the dump %s with your database's tools", dbf);
  }
  if (cff && cfsha && (hf_sf_sha256(r->hub.config, sha, err, sizeof err) != 0 || strcmp(sha, cfsha) != 0)) {
    if ((rc = hf_file_install(cff, r->hub.config, cfsha, sha, r->msg, sizeof r->msg)) != 0) goto fail;
    hf__event(r, "info", "rollback: %s restored", r->hub.config);
  }
  if (hub_was_running) {
    int64_t off = hf__log_mark(r);
    log_off = off < 0 ? 0 : off;
    hf__event(r, "info", "rollback: starting the hub");
    if ((rc = hf__svc_start(r, &was)) != 0) goto fail;
    if (oldver != NULL) {
      hdata = json_object();
      if ((rc = hf__wait_healthy(r, oldver, hf__left_ms(r), off < 0 ? 0 : off, hdata)) != 0) goto fail;
      json_object_set(data, "api_version", json_object_get(hdata, "api_version"));
    }
  }
  if (json_object_get(data, "api_version") == NULL) json_object_set_new(data, "api_version", json_null());
  json_object_set(data, "restored_versions", restored);
  det = json_object();
  json_object_set(det, "restored_versions", restored);
  json_object_set(det, "db_sha256", json_object_get(data, "db_sha256"));
  json_object_set(det, "api_version", json_object_get(data, "api_version"));
  if (log_off >= 0) json_object_set_new(det, "log_offset", json_integer(log_off));
  rc = hf__jrec(r, "rollback", "done", det);
  goto out;
fail:
  {
    char keep[sizeof r->msg];
    snprintf(keep, sizeof keep, "%s", r->msg);
    hf__fail_step(r, "rollback", rc);
    snprintf(r->msg, sizeof r->msg, "rollback did not restore a healthy hub (%s): %s; backup in %s", hf_err_code(rc),
             keep, json_string_value(json_object_get(bk, "dir")) ?: "?");
    rc = HF_EROLLBACK;
  }
out:
  /* The rollback's verdict is in: the users' probe started by its stop (or
   * by the failed upgrade's) finishes and gives its figures. */
  if (r->rollout) hf__probe_end(r, data);
  json_decref(hdata);
  json_decref(restored);
  json_decref(recs);
  return rc;
}
