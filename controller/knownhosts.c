/* knownhosts.c: known_hosts files read once per run, indexed by host name;
 * see hf_knownhosts.h for the rules. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "hf_knownhosts.h"

enum { MARK_NONE, MARK_REVOKED, MARK_CA };

struct entry {
  char *hosts;                  /* the host field as written */
  ssh_key key;
  unsigned char mark;
  bool hashed;
  unsigned char salt[64], hash[64];
  size_t saltlen, hashlen;
};

struct slot {                   /* literal name -> entries naming it */
  char *name;
  int *idx;
  size_t n, cap;
};

struct hf_khfile {
  char *path;
  bool ends_in_newline;         /* false: the next append starts a line first */
  struct entry *e;
  size_t n, cap;
  struct slot *tab;             /* open addressing, tabcap a power of two */
  size_t tabcap, tabn;
  int *scan;                    /* entries with wildcards, negations or hashes */
  size_t nscan, scancap;
  size_t skipped;
  struct hf_khfile *next;
};

struct hf_kh { struct hf_khfile *files; };

/* libssh 0.10's default host key algorithms, in its order. */
static const char DEFAULT_ALGOS[] =
    "ssh-ed25519,ecdsa-sha2-nistp521,ecdsa-sha2-nistp384,ecdsa-sha2-nistp256,"
    "sk-ssh-ed25519@openssh.com,sk-ecdsa-sha2-nistp256@openssh.com,rsa-sha2-512,rsa-sha2-256";

static bool grow(void **p, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return true;
  size_t c = *cap ? *cap : 8;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * size);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) { h ^= (unsigned char)tolower((unsigned char)*s); h *= 1099511628211ull; }
  return h;
}

static struct slot *find_slot(const struct hf_khfile *f, const char *name) {
  if (!f->tabcap) return NULL;
  for (size_t i = hash_name(name) & (f->tabcap - 1);; i = (i + 1) & (f->tabcap - 1)) {
    struct slot *s = &f->tab[i];
    if (!s->name) return NULL;
    if (strcasecmp(s->name, name) == 0) return s;
  }
}

static bool index_name(struct hf_khfile *f, const char *name, size_t len, int entry) {
  if ((f->tabn + 1) * 2 > f->tabcap) {   /* keep the load under 1/2 */
    size_t nc = f->tabcap ? f->tabcap * 2 : 64;
    struct slot *nt = calloc(nc, sizeof *nt);
    if (!nt) return false;
    for (size_t i = 0; i < f->tabcap; i++) {
      if (!f->tab[i].name) continue;
      size_t j = hash_name(f->tab[i].name) & (nc - 1);
      while (nt[j].name) j = (j + 1) & (nc - 1);
      nt[j] = f->tab[i];
    }
    free(f->tab);
    f->tab = nt;
    f->tabcap = nc;
  }
  char *n = strndup(name, len);
  if (!n) return false;
  size_t i = hash_name(n) & (f->tabcap - 1);
  while (f->tab[i].name && strcasecmp(f->tab[i].name, n) != 0) i = (i + 1) & (f->tabcap - 1);
  struct slot *s = &f->tab[i];
  if (s->name) {
    free(n);
  } else {
    s->name = n;
    f->tabn++;
  }
  if (!grow((void **)&s->idx, &s->cap, s->n + 1, sizeof *s->idx)) return false;
  s->idx[s->n++] = entry;
  return true;
}

/* Standard base64 without line breaks into out; returns the length or -1. */
static long b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outcap) {
  if (inlen == 0 || inlen % 4 || inlen / 4 * 3 > outcap) return -1;
  int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)inlen);
  if (n < 0) return -1;
  if (in[inlen - 1] == '=') n--;
  if (in[inlen - 2] == '=') n--;
  return n;
}

/* |1|base64(salt)|base64(hmac-sha1(salt, name)) */
static bool parse_hashed(struct entry *e) {
  const char *s = e->hosts + 3, *bar = strchr(s, '|');
  if (!bar) return false;
  long sl = b64_decode(s, (size_t)(bar - s), e->salt, sizeof e->salt);
  long hl = b64_decode(bar + 1, strlen(bar + 1), e->hash, sizeof e->hash);
  if (sl <= 0 || hl != 20) return false;
  e->saltlen = (size_t)sl;
  e->hashlen = (size_t)hl;
  return true;
}

/* OpenSSH's wildcard match: '*' any run, '?' one character, case-insensitive. */
static bool wild(const char *s, const char *p, const char *pend) {
  for (; p < pend; p++, s++) {
    if (*p == '*') {
      for (p++; p < pend && *p == '*'; p++) {}
      if (p == pend) return true;
      for (; *s; s++)
        if (wild(s, p, pend)) return true;
      return false;
    }
    if (!*s) return false;
    if (*p != '?' && tolower((unsigned char)*p) != tolower((unsigned char)*s)) return false;
  }
  return *s == '\0';
}

/* The host field as a pattern list: a negated match wins, else any match. */
static bool match_list(const char *list, const char *spec, const char *spec22) {
  bool hit = false;
  for (const char *p = list; *p;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    bool neg = *p == '!';
    const char *q = p + neg;
    /* A [host]:22 pattern names the default port too. */
    const char *s = (*q == '[' && spec22) ? spec22 : spec;
    if (q < end && wild(s, q, end)) {
      if (neg) return false;
      hit = true;
    }
    p = *end ? end + 1 : end;
  }
  return hit;
}

static bool match_entry(const struct entry *e, const char *spec, const char *spec22) {
  if (e->hashed) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    if (!HMAC(EVP_sha1(), e->salt, (int)e->saltlen, (const unsigned char *)spec, strlen(spec),
              mac, &ml))
      return false;
    return ml == e->hashlen && memcmp(mac, e->hash, ml) == 0;
  }
  return match_list(e->hosts, spec, spec22);
}

/* Adds one line; returns 1 added, 2 ignored on purpose, 0 not parsable, -1 out of memory. */
static int add_line(struct hf_khfile *f, char *line) {
  char *tok[5];
  int nt = 0;
  for (char *p = line; *p && nt < 5;) {
    while (*p == ' ' || *p == '\t') p++;
    if (!*p || (*p == '#' && nt == 0)) break;
    tok[nt++] = p;
    while (*p && *p != ' ' && *p != '\t') p++;
    if (*p) *p++ = '\0';
  }
  if (nt == 0) return 0;
  unsigned char mark = MARK_NONE;
  int t = 0;
  if (tok[0][0] == '@') {
    if (strcmp(tok[0], "@revoked") == 0) mark = MARK_REVOKED;
    else if (strcmp(tok[0], "@cert-authority") == 0) mark = MARK_CA;
    else return 0;
    t = 1;
  }
  if (nt - t < 3) return 0;
  if (mark == MARK_CA) return 2;   /* host certificates are not taken: ignored, not bad */
  enum ssh_keytypes_e type = ssh_key_type_from_name(tok[t + 1]);
  if (type == SSH_KEYTYPE_UNKNOWN) return 0;
  ssh_key key = NULL;
  if (ssh_pki_import_pubkey_base64(tok[t + 2], type, &key) != SSH_OK) return 0;
  if (!grow((void **)&f->e, &f->cap, f->n + 1, sizeof *f->e)) { ssh_key_free(key); return -1; }
  struct entry *e = &f->e[f->n];
  memset(e, 0, sizeof *e);
  e->key = key;
  e->mark = mark;
  e->hosts = strdup(tok[t]);
  if (!e->hosts) { ssh_key_free(key); return -1; }
  int idx = (int)f->n;
  f->n++;
  if (strncmp(e->hosts, "|1|", 3) == 0) {
    e->hashed = true;
    if (!parse_hashed(e)) { f->n--; free(e->hosts); ssh_key_free(key); return 0; }
  }
  if (e->hashed || strpbrk(e->hosts, "*?!")) {
    if (!grow((void **)&f->scan, &f->scancap, f->nscan + 1, sizeof *f->scan)) return -1;
    f->scan[f->nscan++] = idx;
    return 1;
  }
  for (const char *p = e->hosts; *p;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    if (end > p && !index_name(f, p, (size_t)(end - p), idx)) return -1;
    p = *end ? end + 1 : end;
  }
  return 1;
}

static void file_free(struct hf_khfile *f) {
  for (size_t i = 0; i < f->n; i++) { free(f->e[i].hosts); ssh_key_free(f->e[i].key); }
  for (size_t i = 0; i < f->tabcap; i++) { free(f->tab[i].name); free(f->tab[i].idx); }
  free(f->e); free(f->tab); free(f->scan); free(f->path); free(f);
}

static int load(struct hf_khfile *f, char *err, size_t errlen) {
  FILE *fp = fopen(f->path, "re");
  f->ends_in_newline = true;
  if (!fp) {
    if (errno == ENOENT) return 0;
    snprintf(err, errlen, "cannot read known_hosts file %s: %s", f->path, strerror(errno));
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int rc = 0;
  while ((len = getline(&line, &cap, fp)) > 0) {
    f->ends_in_newline = line[len - 1] == '\n';
    line[strcspn(line, "\r\n")] = '\0';
    int a = add_line(f, line);
    if (a < 0) { snprintf(err, errlen, "out of memory reading %s", f->path); rc = -1; break; }
    if (a == 0) {
      const char *p = line + strspn(line, " \t");
      if (*p && *p != '#') f->skipped++;
    }
  }
  if (rc == 0 && ferror(fp)) {
    snprintf(err, errlen, "cannot read known_hosts file %s: %s", f->path, strerror(errno));
    rc = -1;
  }
  free(line);
  fclose(fp);
  return rc;
}

struct hf_kh *hf_kh_new(void) { return calloc(1, sizeof(struct hf_kh)); }

void hf_kh_free(struct hf_kh *kh) {
  if (!kh) return;
  for (struct hf_khfile *f = kh->files, *n; f; f = n) { n = f->next; file_free(f); }
  free(kh);
}

struct hf_khfile *hf_kh_file(struct hf_kh *kh, const char *path, char *err, size_t errlen) {
  for (struct hf_khfile *f = kh->files; f; f = f->next)
    if (strcmp(f->path, path) == 0) return f;
  struct hf_khfile *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    free(f);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (load(f, err, errlen) < 0) { file_free(f); return NULL; }
  f->next = kh->files;
  kh->files = f;
  return f;
}

/* host lowercased; "[host]:port" unless the port is 22; spec22 is
 * "[host]:22" for port 22 (a bracketed pattern may name it), else "". */
static bool host_specs(const char *host, int port, char *spec, size_t len, char *spec22, size_t len22) {
  char low[512];
  size_t n = strlen(host);
  if (n >= sizeof low) return false;
  for (size_t i = 0; i <= n; i++) low[i] = (char)tolower((unsigned char)host[i]);
  int a = (port == 22 || port == 0) ? snprintf(spec, len, "%s", low)
                                    : snprintf(spec, len, "[%s]:%d", low, port);
  int b = (port == 22 || port == 0) ? snprintf(spec22, len22, "[%s]:22", low)
                                    : snprintf(spec22, len22, "%s", "");
  return a > 0 && (size_t)a < len && b >= 0 && (size_t)b < len22;
}

/* Calls fn for every entry naming the host; stops when fn returns false. */
static void each_match(const struct hf_khfile *f, const char *host, int port,
                       bool (*fn)(const struct entry *, void *), void *ctx) {
  char spec[600], spec22[600];
  if (!host_specs(host, port, spec, sizeof spec, spec22, sizeof spec22)) return;
  const char *names[2] = { spec, spec22[0] ? spec22 : NULL };
  for (int k = 0; k < 2 && names[k]; k++) {
    const struct slot *s = find_slot(f, names[k]);
    for (size_t i = 0; s && i < s->n; i++)
      if (!fn(&f->e[s->idx[i]], ctx)) return;
  }
  for (size_t i = 0; i < f->nscan; i++) {
    const struct entry *e = &f->e[f->scan[i]];
    if (match_entry(e, spec, spec22[0] ? spec22 : NULL) && !fn(e, ctx)) return;
  }
}

struct verdict_ctx { ssh_key key; bool same, same_type, any, revoked; };

static bool verdict_fn(const struct entry *e, void *p) {
  struct verdict_ctx *v = p;
  bool equal = ssh_key_cmp(e->key, v->key, SSH_KEY_CMP_PUBLIC) == 0;
  if (e->mark == MARK_REVOKED) {
    if (equal) { v->revoked = true; return false; }
    return true;
  }
  v->any = true;
  if (equal) v->same = true;
  else if (ssh_key_type(e->key) == ssh_key_type(v->key)) v->same_type = true;
  return true;
}

enum hf_kh_verdict hf_kh_check(const struct hf_khfile *f, const char *host, int port,
                               const ssh_key key) {
  struct verdict_ctx v = { .key = key };
  each_match(f, host, port, verdict_fn, &v);
  if (v.revoked) return HF_KH_REVOKED;
  if (v.same) return HF_KH_OK;
  if (v.same_type) return HF_KH_CHANGED;
  return v.any ? HF_KH_OTHER : HF_KH_UNKNOWN;
}

static const char *algos_of(enum ssh_keytypes_e t) {
  switch (t) {
  case SSH_KEYTYPE_ED25519: return "ssh-ed25519";
  case SSH_KEYTYPE_ECDSA_P256: return "ecdsa-sha2-nistp256";
  case SSH_KEYTYPE_ECDSA_P384: return "ecdsa-sha2-nistp384";
  case SSH_KEYTYPE_ECDSA_P521: return "ecdsa-sha2-nistp521";
  case SSH_KEYTYPE_SK_ED25519: return "sk-ssh-ed25519@openssh.com";
  case SSH_KEYTYPE_SK_ECDSA: return "sk-ecdsa-sha2-nistp256@openssh.com";
  case SSH_KEYTYPE_RSA: return "rsa-sha2-512,rsa-sha2-256";
  default: return NULL;
  }
}

struct algos_ctx { char *buf; size_t len, used; bool overflow; };

/* Appends the comma list add to c->buf, skipping names already there. */
static void append_algos(struct algos_ctx *c, const char *add) {
  for (const char *p = add; *p;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    size_t n = (size_t)(end - p);
    bool have = false;
    for (const char *q = c->buf; *q;) {
      const char *qe = strchr(q, ',');
      if (!qe) qe = q + strlen(q);
      if ((size_t)(qe - q) == n && memcmp(q, p, n) == 0) { have = true; break; }
      q = *qe ? qe + 1 : qe;
    }
    if (!have) {
      if (c->used + n + 2 > c->len) { c->overflow = true; return; }
      if (c->used) c->buf[c->used++] = ',';
      memcpy(c->buf + c->used, p, n);
      c->used += n;
      c->buf[c->used] = '\0';
    }
    p = *end ? end + 1 : end;
  }
}

static bool algos_fn(const struct entry *e, void *p) {
  const char *a = e->mark == MARK_NONE ? algos_of(ssh_key_type(e->key)) : NULL;
  if (a) append_algos(p, a);
  return true;
}

int hf_kh_hostkey_algorithms(const struct hf_khfile *f, const char *host, int port,
                             char *buf, size_t len) {
  if (!len) return -1;
  buf[0] = '\0';
  struct algos_ctx c = { .buf = buf, .len = len };
  each_match(f, host, port, algos_fn, &c);
  if (c.overflow) return -1;
  if (!c.used) return 0;
  append_algos(&c, DEFAULT_ALGOS);
  return c.overflow ? -1 : 1;
}

int hf_kh_add(struct hf_khfile *f, const char *host, int port, const ssh_key key,
              char *err, size_t errlen) {
  char spec[600], spec22[600];
  char *b64 = NULL;
  if (!host_specs(host, port, spec, sizeof spec, spec22, sizeof spec22) ||
      ssh_pki_export_pubkey_base64(key, &b64) != SSH_OK) {
    snprintf(err, errlen, "cannot format the key of %s", host);
    return -1;
  }
  const char *type = ssh_key_type_to_char(ssh_key_type(key));
  size_t need = strlen(spec) + strlen(type ? type : "") + strlen(b64) + 4;
  char *line = malloc(need + 1);
  if (!line || !type) {
    free(line);
    ssh_string_free_char(b64);
    snprintf(err, errlen, "cannot format the key of %s", host);
    return -1;
  }
  int n = snprintf(line, need + 1, "%s%s %s %s\n", f->ends_in_newline ? "" : "\n", spec, type, b64);
  ssh_string_free_char(b64);
  int fd = open(f->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 && errno == ENOENT) {
    /* The directory (usually ~/.ssh) is missing: make it, private. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", f->path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
      *slash = '\0';
      if (mkdir(dir, 0700) == 0 || errno == EEXIST)
        fd = open(f->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    }
  }
  if (fd < 0) {
    snprintf(err, errlen, "cannot write %s: %s", f->path, strerror(errno));
    free(line);
    return -1;
  }
  ssize_t w = write(fd, line, (size_t)n);
  int werr = errno;
  if (close(fd) < 0 && w == n) { w = -1; werr = errno; }
  if (w != n) {
    snprintf(err, errlen, "cannot write %s: %s", f->path, w < 0 ? strerror(werr) : "short write");
    free(line);
    return -1;
  }
  f->ends_in_newline = true;
  /* The same line, now in the index too (retries of this host find it). */
  line[n - 1] = '\0';
  int a = add_line(f, line + (line[0] == '\n'));
  free(line);
  if (a != 1) {
    snprintf(err, errlen, "recorded the key of %s in %s but could not index it", host, f->path);
    return -1;
  }
  return 0;
}

void hf_kh_counts(const struct hf_khfile *f, size_t *entries, size_t *indexed, size_t *skipped) {
  if (entries) *entries = f->n;
  if (indexed) *indexed = f->tabn;
  if (skipped) *skipped = f->skipped;
}
