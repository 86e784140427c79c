/* env.c: reads what a Python environment holds from its files alone (pyvenv.cfg, *.dist-info,
 * *.egg-info, conda-meta) so that facts never start an interpreter. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"

void hf_pep503(const char *in, size_t inlen, char *out, size_t outlen) {
  size_t i, o = 0;
  bool sep = false;
  if (outlen == 0) return;
  for (i = 0; i < inlen && in[i] != '\0'; i++) {
    char c = in[i];
    if (c == '-' || c == '_' || c == '.') { sep = true; continue; }
    if (sep && o > 0 && o + 1 < outlen) out[o++] = '-';
    sep = false;
    if (o + 1 < outlen) out[o++] = (char)tolower((unsigned char)c);
  }
  out[o] = '\0';
}

/* Copies the trimmed value of a "Key: value" header line into out. */
static void header_value(const char *p, const char *end, char *out, size_t outlen) {
  size_t n;
  while (p < end && (*p == ' ' || *p == '\t')) p++;
  while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r')) end--;
  n = (size_t)(end - p);
  if (n >= outlen) n = outlen - 1;
  memcpy(out, p, n);
  out[n] = '\0';
}

int hf_metadata_parse(const char *text, size_t len, char *name, size_t namelen, char *ver, size_t verlen) {
  const char *p = text, *end = text + len;
  name[0] = ver[0] = '\0';
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end;
    if (le == p || (le == p + 1 && *p == '\r')) break; /* blank line: the body starts */
    if (le - p > 5 && strncasecmp(p, "Name:", 5) == 0 && name[0] == '\0')
      header_value(p + 5, le, name, namelen);
    else if (le - p > 8 && strncasecmp(p, "Version:", 8) == 0 && ver[0] == '\0')
      header_value(p + 8, le, ver, verlen);
    if (eol == NULL) break;
    p = eol + 1;
  }
  return (name[0] && ver[0]) ? 0 : HF_ENOTFOUND;
}

/* Reads at most cap bytes of a file into buf (NUL-terminated); returns bytes or -1.
 * The environment's files are the hub user's: read through the safe open (a
 * FIFO or a symlink there is skipped, as a missing file is). */
static ssize_t read_head(const char *path, char *buf, size_t cap) {
  size_t have = 0;
  char err[64];
  int fd = hf_sf_open_read(path, err, sizeof err);
  if (fd < 0) return -1;
  while (have + 1 < cap) {
    ssize_t n = read(fd, buf + have, cap - 1 - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += (size_t)n;
  }
  close(fd);
  buf[have] = '\0';
  return (ssize_t)have;
}

static bool is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Finds PREFIX/lib/python3.X/site-packages; ver gets "3.X". */
static void find_site(const char *prefix, char *site, size_t sitelen, char *ver, size_t verlen) {
  char lib[PATH_MAX];
  DIR *d;
  struct dirent *de;
  site[0] = '\0';
  if (hf__pathf(lib, sizeof lib, "%s/lib", prefix) != 0 || (d = opendir(lib)) == NULL) return;
  while ((de = readdir(d)) != NULL) {
    char cand[PATH_MAX];
    if (strncmp(de->d_name, "python3.", 8) != 0 || !isdigit((unsigned char)de->d_name[8])) continue;
    if (hf__pathf(cand, sizeof cand, "%s/%s/site-packages", lib, de->d_name) != 0) continue;
    if (!is_dir(cand)) continue;
    snprintf(site, sitelen, "%s", cand);
    snprintf(ver, verlen, "%s", de->d_name + 6);
    break;
  }
  closedir(d);
}

int hf_env_inspect(const char *prefix, const char *installer, struct hf_env *e) {
  char path[PATH_MAX], buf[4096], libver[16] = "", pfx[PATH_MAX];
  bool conda, system_site = false;

  /* prefix may point into *e (re-inspecting after an install). */
  snprintf(pfx, sizeof pfx, "%s", prefix);
  prefix = pfx;
  memset(e, 0, sizeof *e);
  snprintf(e->prefix, sizeof e->prefix, "%s", prefix);
  e->exists = is_dir(prefix);
  if (hf__pathf(path, sizeof path, "%s/conda-meta", prefix) != 0) return HF_EINVAL;
  conda = is_dir(path);
  if (installer != NULL && strcmp(installer, "pip") == 0) conda = false;
  else if (installer != NULL && strcmp(installer, "conda") == 0) conda = true;
  snprintf(e->installer, sizeof e->installer, "%s", conda ? "conda" : "pip");
  if (!e->exists) return 0;
  find_site(prefix, e->site, sizeof e->site, libver, sizeof libver);
  snprintf(e->python, sizeof e->python, "%s", libver);

  /* pyvenv.cfg holds the exact interpreter version and whether the system's
   * site-packages are visible too (a --system-site-packages venv). */
  if (hf__pathf(path, sizeof path, "%s/pyvenv.cfg", prefix) == 0 && read_head(path, buf, sizeof buf) > 0) {
    char *line, *save = NULL;
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      char *eq = strchr(line, '=');
      char key[64], val[128];
      if (eq == NULL) continue;
      header_value(line, eq, key, sizeof key);
      header_value(eq + 1, eq + strlen(eq), val, sizeof val);
      if (strcmp(key, "version") == 0 || strcmp(key, "version_info") == 0) {
        if (val[0] && strlen(val) < sizeof e->python) snprintf(e->python, sizeof e->python, "%s", val);
      } else if (strcmp(key, "include-system-site-packages") == 0) {
        system_site = strcasecmp(val, "true") == 0;
      }
    }
  }
  if (system_site && libver[0]) {
    /* Debian's layout: distribution packages in /usr/lib/python3/dist-packages,
     * local ones in /usr/local/lib/python3.X/dist-packages. */
    if (hf__pathf(path, sizeof path, "/usr/local/lib/python%s/dist-packages", libver) == 0 && is_dir(path))
      snprintf(e->syssite[e->n_syssite++], PATH_MAX, "%s", path);
    if (is_dir("/usr/lib/python3/dist-packages"))
      snprintf(e->syssite[e->n_syssite++], PATH_MAX, "%s", "/usr/lib/python3/dist-packages");
  }
  return 0;
}

/* Index of the wanted package whose normalised name is norm, or -1. */
static int wanted(char (*norms)[130], int n, const char *norm) {
  int i;
  for (i = 0; i < n; i++)
    if (strcmp(norms[i], norm) == 0) return i;
  return -1;
}

/* One pass over a site-packages directory for every still-missing name. */
static int scan_site(const char *dir, char (*norms)[130], int n, char (*vers)[HF_VER_LEN], int missing) {
  DIR *d = opendir(dir);
  struct dirent *de;
  if (d == NULL) return missing;
  while (missing > 0 && (de = readdir(d)) != NULL) {
    const char *nm = de->d_name, *dash, *ext;
    char norm[130], path[PATH_MAX], buf[8192], mname[130], mver[HF_VER_LEN];
    size_t len = strlen(nm);
    bool egg;
    int i;
    if (len > 10 && strcmp(nm + len - 10, ".dist-info") == 0) { ext = nm + len - 10; egg = false; }
    else if (len > 9 && strcmp(nm + len - 9, ".egg-info") == 0) { ext = nm + len - 9; egg = true; }
    else continue;
    /* NAME-VERSION.dist-info: the name ends at the first '-' (wheel names
     * escape '-' in the project name as '_'). */
    dash = memchr(nm, '-', (size_t)(ext - nm));
    hf_pep503(nm, (size_t)((dash ? dash : ext) - nm), norm, sizeof norm);
    if ((i = wanted(norms, n, norm)) < 0 || vers[i][0] != '\0') continue;
    if (egg) {
      /* egg-info is a directory holding PKG-INFO, or the PKG-INFO file itself. */
      if (hf__pathf(path, sizeof path, "%s/%s/PKG-INFO", dir, nm) != 0) continue;
      if (read_head(path, buf, sizeof buf) < 0) {
        if (hf__pathf(path, sizeof path, "%s/%s", dir, nm) != 0 || read_head(path, buf, sizeof buf) < 0) continue;
      }
    } else {
      if (hf__pathf(path, sizeof path, "%s/%s/METADATA", dir, nm) != 0 || read_head(path, buf, sizeof buf) < 0) continue;
    }
    if (hf_metadata_parse(buf, strlen(buf), mname, sizeof mname, mver, sizeof mver) != 0) continue;
    hf_pep503(mname, strlen(mname), norm, sizeof norm);
    if (wanted(norms, n, norm) != i) continue;
    snprintf(vers[i], HF_VER_LEN, "%s", mver);
    missing--;
  }
  closedir(d);
  return missing;
}

/* conda-meta/NAME-VERSION-BUILD.json: the file name alone answers. */
static void scan_conda(const char *prefix, char (*norms)[130], int n, char (*vers)[HF_VER_LEN]) {
  char dir[PATH_MAX];
  DIR *d;
  struct dirent *de;
  if (hf__pathf(dir, sizeof dir, "%s/conda-meta", prefix) != 0 || (d = opendir(dir)) == NULL) return;
  while ((de = readdir(d)) != NULL) {
    char base[256], norm[130];
    char *b, *v;
    size_t len = strlen(de->d_name);
    int i;
    if (len < 6 || len >= sizeof base || strcmp(de->d_name + len - 5, ".json") != 0) continue;
    memcpy(base, de->d_name, len - 5);
    base[len - 5] = '\0';
    if ((b = strrchr(base, '-')) == NULL) continue;
    *b = '\0';
    if ((v = strrchr(base, '-')) == NULL) continue;
    *v++ = '\0';
    hf_pep503(base, strlen(base), norm, sizeof norm);
    if ((i = wanted(norms, n, norm)) >= 0 && strlen(v) < HF_VER_LEN) snprintf(vers[i], HF_VER_LEN, "%s", v);
  }
  closedir(d);
}

void hf_env_versions(const struct hf_env *e, const char *const *names, int n, char (*vers)[HF_VER_LEN]) {
  char (*norms)[130];
  int i, missing = n;
  for (i = 0; i < n; i++) vers[i][0] = '\0';
  if (n <= 0 || !e->exists) return;
  norms = calloc((size_t)n, sizeof *norms);
  if (norms == NULL) return;
  for (i = 0; i < n; i++) hf_pep503(names[i], strlen(names[i]), norms[i], sizeof norms[i]);
  if (strcmp(e->installer, "conda") == 0) {
    scan_conda(e->prefix, norms, n, vers);
  } else {
    if (e->site[0]) missing = scan_site(e->site, norms, n, vers, missing);
    for (i = 0; i < e->n_syssite && missing > 0; i++) missing = scan_site(e->syssite[i], norms, n, vers, missing);
  }
  free(norms);
}
