/* hf_safefile.h: the one set of file-writing helpers of the agent (docs/security.md).
 *
 * The agent runs as root (or as the hub's SSH user) in directories the hub's
 * unprivileged user may own. Every file it writes goes through these:
 *  - directories are opened O_DIRECTORY|O_NOFOLLOW and everything else is
 *    relative to that descriptor;
 *  - a replaced file is written to a fresh random name (O_CREAT|O_EXCL|
 *    O_NOFOLLOW), given the destination's owner and mode (fchown/fchmod),
 *    fsynced, renamed over the destination (renameat) and the directory
 *    fsynced;
 *  - a file appended to or locked (journal, lock, logs) is opened O_NOFOLLOW
 *    and must be a regular file with one link, owned by the effective user;
 *  - the agent's own directories (state, backups) and every parent must be
 *    owned by the effective user (parents: or root) and not writable by
 *    group or others (a parent may be a sticky, root-owned /tmp). */
#ifndef HF_SAFEFILE_H
#define HF_SAFEFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "hf_sha256.h"

/* Checks dir for the agent's own files (see above); creates it (0700) and
 * missing parents when create is true. what names it in the message
 * ("state directory"). 0, or HF_ESTATE / HF_EIO with err saying what to fix. */
int hf_sf_private_dir(const char *dir, bool create, const char *what, char *err, size_t errlen);

/* Opens the directory holding path (O_DIRECTORY|O_NOFOLLOW); *name points
 * into path at its last component. -1 with err set. */
int hf_sf_open_parent(const char *path, const char **name, char *err, size_t errlen);

/* A file being replaced: created by hf_sf_begin, written through fd, then
 * hf_sf_commit or hf_sf_abort. */
struct hf_sf {
  int    dirfd;
  int    fd;             /* the temporary file, open for reading and writing */
  char   path[4096];     /* the destination */
  char   tmp[40];        /* the temporary file's name in the directory */
  const char *name;      /* the destination's name (into path) */
  uid_t  uid;            /* what the destination gets */
  gid_t  gid;
  mode_t mode;
  bool   existed;        /* the destination existed (a regular file) */
};

/* Opens the destination's directory, refuses a destination that is not a
 * regular file (a symlink, a directory), notes its owner and mode (or the
 * effective user's and mode when it does not exist) and creates the random
 * temporary file. 0, or an HF_E code with err set (nothing created). */
int  hf_sf_begin(struct hf_sf *s, const char *path, mode_t mode, char *err, size_t errlen);
/* Owner and mode, fsync, renameat over the destination, fsync of the
 * directory. Closes everything; on failure the temporary file is removed. */
int  hf_sf_commit(struct hf_sf *s, char *err, size_t errlen);
/* Removes the temporary file and closes everything (safe after commit too). */
void hf_sf_abort(struct hf_sf *s);

/* The whole file at path replaced by buf (begin, write, commit). */
int  hf_sf_write_file(const char *path, const void *buf, size_t n, mode_t mode, char *err, size_t errlen);
/* Opens path for appending/locking: O_RDWR|O_NOFOLLOW (O_APPEND when append),
 * created O_EXCL (mode) when missing (*created set), truncated when trunc; the
 * file must be a regular file with one link owned by the effective user.
 * Returns the fd or -1 with err set. */
int  hf_sf_open_own(const char *path, mode_t mode, bool append, bool trunc, bool *created, char *err, size_t errlen);
/* Opens path to read, the one way the agent reads a file the hub's user may
 * control (config, database, hub log, an environment's pyvenv.cfg, METADATA):
 * O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC (a FIFO cannot block the open, a
 * symlink is refused), then it must be a regular file (fstat), then
 * O_NONBLOCK is cleared. fd or -1 with err ("... is a symbolic link: refused",
 * "... is a FIFO: refused") and errno set. */
int  hf_sf_open_read(const char *path, char *err, size_t errlen);
/* The same for a system file only root can change that may legitimately be a
 * symlink (/etc/machine-id): symlinks followed, the rest as above. */
int  hf_sf_open_read_sys(const char *path, char *err, size_t errlen);
/* SHA-256 (hex) of the file at path opened with hf_sf_open_read. 0, or -1
 * with err set and hex "". */
int  hf_sf_sha256(const char *path, char hex[HF_SHA256_HEX], char *err, size_t errlen);
/* Renames name aside in dirfd to a fresh random name (out, outlen >= 48);
 * 0, 1 when name did not exist, -1 on error. */
int  hf_sf_move_aside(int dirfd, const char *name, char *out, size_t outlen);

#endif /* HF_SAFEFILE_H */
