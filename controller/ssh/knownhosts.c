/* knownhosts.c: known_hosts files read once per run, indexed by host name;
 * see hf_knownhosts.h for the rules. */
/* SHA1_Transform (one block from a saved state) is deprecated in OpenSSL 3
 * but is the only call that does this; see sha1_block. */
#define OPENSSL_SUPPRESS_DEPRECATED
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
#include <openssl/sha.h>

#include "hf_files.h"
#include "hf_knownhosts.h"

enum { MARK_NONE, MARK_REVOKED, MARK_CA };

struct entry {
  char *hosts;                  /* the host field as written */
  ssh_key key;
  unsigned char mark;
  bool hashed;
  uint32_t istate[5], ostate[5];/* hashed: HMAC-SHA1 keyed with the salt, after its pad block */
  unsigned char hash[20];
};

struct slot {                   /* literal name -> entries naming it */
  char *name;
  int *idx;
  size_t n, cap;
};

struct hf_khfile {
  char *path;
  bool have_id;                 /* the file existed when read: dev/ino identify it */
  dev_t dev;
  ino_t ino;
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

/* Hashed names cost one HMAC-SHA1 per line and host: a run checks every
 * host against every hashed line, so each line keeps its HMAC key state
 * (the pad blocks are hashed once, at load) and a short name costs two
 * SHA-1 blocks, each one call of libcrypto's block function (SHA
 * instructions where the CPU has them). */
static void sha1_block(uint32_t h[5], const unsigned char *p) {
  SHA_CTX c;
  memset(&c, 0, sizeof c);
  c.h0 = h[0]; c.h1 = h[1]; c.h2 = h[2]; c.h3 = h[3]; c.h4 = h[4];
  SHA1_Transform(&c, p);
  h[0] = c.h0; h[1] = c.h1; h[2] = c.h2; h[3] = c.h3; h[4] = c.h4;
}

/* Finishes a SHA-1 whose state st has taken `done` bytes (a multiple of
 * 64), with the message tail msg[len]; the digest into out. */
static void sha1_finish(const uint32_t st[5], uint64_t done, const unsigned char *msg, size_t len,
                        unsigned char out[20]) {
  uint32_t h[5] = { st[0], st[1], st[2], st[3], st[4] };
  unsigned char blk[128];
  uint64_t bits = (done + len) * 8;
  for (; len >= 64; len -= 64, msg += 64) sha1_block(h, msg);
  size_t n = len < 56 ? 64 : 128;
  memset(blk, 0, n);
  memcpy(blk, msg, len);
  blk[len] = 0x80;
  for (int i = 0; i < 8; i++) blk[n - 1 - i] = (unsigned char)(bits >> (8 * i));
  sha1_block(h, blk);
  if (n == 128) sha1_block(h, blk + 64);
  for (int i = 0; i < 5; i++) {
    out[4 * i] = (unsigned char)(h[i] >> 24); out[4 * i + 1] = (unsigned char)(h[i] >> 16);
    out[4 * i + 2] = (unsigned char)(h[i] >> 8); out[4 * i + 3] = (unsigned char)h[i];
  }
}

static const uint32_t SHA1_IV[5] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0 };

/* |1|base64(salt)|base64(hmac-sha1(salt, name)) */
static bool parse_hashed(struct entry *e) {
  const char *s = e->hosts + 3, *bar = strchr(s, '|');
  unsigned char salt[64], hash[64], pad[64];
  if (!bar) return false;
  long sl = b64_decode(s, (size_t)(bar - s), salt, sizeof salt);
  long hl = b64_decode(bar + 1, strlen(bar + 1), hash, sizeof hash);
  if (sl <= 0 || sl > 64 || hl != 20) return false;
  memcpy(e->hash, hash, 20);
  memcpy(e->istate, SHA1_IV, sizeof e->istate);
  memcpy(e->ostate, SHA1_IV, sizeof e->ostate);
  for (int i = 0; i < 64; i++) pad[i] = (unsigned char)((i < sl ? salt[i] : 0) ^ 0x36);
  sha1_block(e->istate, pad);
  for (int i = 0; i < 64; i++) pad[i] = (unsigned char)((i < sl ? salt[i] : 0) ^ 0x5c);
  sha1_block(e->ostate, pad);
  return true;
}

static bool hashed_match(const struct entry *e, const char *name) {
  unsigned char inner[20], mac[20];
  sha1_finish(e->istate, 64, (const unsigned char *)name, strlen(name), inner);
  sha1_finish(e->ostate, 64, inner, 20, mac);
  return memcmp(mac, e->hash, 20) == 0;
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
  if (e->hashed) return hashed_match(e, spec);
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
  if (!fp) {
    if (errno == ENOENT) return 0;
    snprintf(err, errlen, "cannot read known_hosts file %s: %s", f->path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fileno(fp), &st) == 0) { f->have_id = true; f->dev = st.st_dev; f->ino = st.st_ino; }
  char *line = NULL;
  size_t cap = 0;
  int rc = 0;
  while (getline(&line, &cap, fp) > 0) {
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
  /* The same file under another name (a host's path and --known-hosts) is
   * one index: a key added through one is seen through the other. */
  struct stat st;
  bool exists = stat(path, &st) == 0;
  for (struct hf_khfile *f = kh->files; f; f = f->next)
    if (strcmp(f->path, path) == 0 ||
        (exists && f->have_id && f->dev == st.st_dev && f->ino == st.st_ino))
      return f;
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
 * "[host]:22" for port 22 (libssh lets a bracketed line name the default
 * port too), else "". */
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

static bool match_push(struct hf_kh_match *m, int idx) {
  for (size_t i = 0; i < m->n; i++)
    if (m->idx[i] == idx) return true;
  if (!grow((void **)&m->idx, &m->cap, m->n + 1, sizeof *m->idx)) return false;
  m->idx[m->n++] = idx;
  return true;
}

int hf_kh_match(const struct hf_khfile *f, const char *host, int port, struct hf_kh_match *m) {
  char spec[600], spec22[600];
  if (!host_specs(host, port, spec, sizeof spec, spec22, sizeof spec22)) return -1;
  const char *s22 = spec22[0] ? spec22 : NULL;
  if (!m->started) {
    /* First time: the index for literal names, a scan of the others. */
    const char *names[2] = { spec, s22 };
    for (int k = 0; k < 2 && names[k]; k++) {
      const struct slot *sl = find_slot(f, names[k]);
      for (size_t i = 0; sl && i < sl->n; i++)
        if (!match_push(m, sl->idx[i])) return -1;
    }
    for (size_t i = 0; i < f->nscan; i++)
      if (match_entry(&f->e[f->scan[i]], spec, s22) && !match_push(m, f->scan[i])) return -1;
  } else {
    /* Later: only the lines added since (hf_kh_add appends). */
    for (size_t i = m->scanned; i < f->n; i++)
      if (match_entry(&f->e[i], spec, s22) && !match_push(m, (int)i)) return -1;
  }
  m->started = true;
  m->scanned = f->n;
  return 0;
}

void hf_kh_match_free(struct hf_kh_match *m) {
  free(m->idx);
  memset(m, 0, sizeof *m);
}

enum hf_kh_verdict hf_kh_match_check(const struct hf_khfile *f, const struct hf_kh_match *m,
                                     const ssh_key key) {
  bool same = false, same_type = false, any = false;
  for (size_t i = 0; i < m->n; i++) {
    const struct entry *e = &f->e[m->idx[i]];
    bool equal = ssh_key_cmp(e->key, key, SSH_KEY_CMP_PUBLIC) == 0;
    if (e->mark == MARK_REVOKED) {
      if (equal) return HF_KH_REVOKED;
      continue;
    }
    any = true;
    if (equal) same = true;
    else if (ssh_key_type(e->key) == ssh_key_type(key)) same_type = true;
  }
  if (same) return HF_KH_OK;
  if (same_type) return HF_KH_CHANGED;
  return any ? HF_KH_OTHER : HF_KH_UNKNOWN;
}

/* The host key algorithm names a recorded key of type t can be checked with. */
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

/* True when the comma list has the name name[0..n). */
static bool list_has(const char *list, const char *name, size_t n) {
  for (const char *q = list; q && *q;) {
    const char *qe = strchr(q, ',');
    if (!qe) qe = q + strlen(q);
    if ((size_t)(qe - q) == n && memcmp(q, name, n) == 0) return true;
    q = *qe ? qe + 1 : qe;
  }
  return false;
}

/* Appends to buf (used bytes so far in *used) each name of DEFAULT_ALGOS
 * for which want(name) holds and that is not there yet. */
static bool append_defaults(char *buf, size_t len, size_t *used, const char *recorded, bool want_recorded) {
  for (const char *p = DEFAULT_ALGOS; *p;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    size_t n = (size_t)(end - p);
    if (list_has(recorded, p, n) == want_recorded && !list_has(buf, p, n)) {
      if (*used + n + 2 > len) return false;
      if (*used) buf[(*used)++] = ',';
      memcpy(buf + *used, p, n);
      *used += n;
      buf[*used] = '\0';
    }
    p = *end ? end + 1 : end;
  }
  return true;
}

int hf_kh_match_algorithms(const struct hf_khfile *f, const struct hf_kh_match *m, char *buf, size_t len) {
  if (!len) return -1;
  buf[0] = '\0';
  /* The recorded types, then the others, each in libssh's own order. */
  char recorded[512] = "";
  size_t rused = 0;
  for (size_t i = 0; i < m->n; i++) {
    const struct entry *e = &f->e[m->idx[i]];
    const char *a = e->mark == MARK_NONE ? algos_of(ssh_key_type(e->key)) : NULL;
    if (!a || strlen(a) + rused + 2 > sizeof recorded) continue;
    rused += (size_t)snprintf(recorded + rused, sizeof recorded - rused, "%s%s", rused ? "," : "", a);
  }
  if (!rused) return 0;
  size_t used = 0;
  if (!append_defaults(buf, len, &used, recorded, true) || !append_defaults(buf, len, &used, recorded, false))
    return -1;
  return 1;
}

int hf_kh_add(struct hf_khfile *f, const char *host, int port, const ssh_key key,
              char *err, size_t errlen) {
  char spec[600], spec22[600];
  char *b64 = NULL;
  const char *type = ssh_key_type_to_char(ssh_key_type(key));
  if (!type || !host_specs(host, port, spec, sizeof spec, spec22, sizeof spec22) ||
      ssh_pki_export_pubkey_base64(key, &b64) != SSH_OK) {
    snprintf(err, errlen, "cannot format the key of %s", host);
    return -1;
  }
  size_t need = strlen(spec) + strlen(type) + strlen(b64) + 4;
  char *line = malloc(need + 1);
  if (!line) {
    ssh_string_free_char(b64);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  int n = snprintf(line, need + 1, "\n%s %s %s\n", spec, type, b64);
  ssh_string_free_char(b64);
  int fd = open(f->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 && errno == ENOENT) {
    /* The directory (usually ~/.ssh) is missing: make it, private. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", f->path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
      *slash = '\0';
      if (mkdir(dir, 0700) == 0 || errno == EEXIST)
        fd = open(f->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    }
  }
  if (fd < 0) {
    snprintf(err, errlen, "cannot write %s: %s", f->path, strerror(errno));
    free(line);
    return -1;
  }
  /* Starts a line of its own when the file (as it is now, whoever wrote
   * last) does not end in one. */
  struct stat st;
  char last = '\n';
  if (fstat(fd, &st) == 0 && st.st_size > 0 && pread(fd, &last, 1, st.st_size - 1) != 1) last = 0;
  const char *text = last == '\n' ? line + 1 : line;
  int rc = hf_write_all(fd, text, (size_t)n - (size_t)(text - line));
  int werr = errno;
  if (close(fd) < 0 && rc == 0) { rc = -1; werr = errno; }
  if (rc < 0) {
    snprintf(err, errlen, "cannot write %s: %s", f->path, strerror(werr));
    free(line);
    return -1;
  }
  if (!f->have_id && stat(f->path, &st) == 0) { f->have_id = true; f->dev = st.st_dev; f->ino = st.st_ino; }
  /* The same line, now in the index too (this host's retries and the
   * sessions matching incrementally find it). */
  line[n - 1] = '\0';
  int a = add_line(f, line + 1);
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
