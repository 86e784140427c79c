/* hf_files.h: whole-file reading and writing, the fsync that makes a rename durable, and the
 * removal of a tree the program made; part of common/ (agent and controller), libc only.
 * Every call returns 0, or -1 with errno set: each caller turns that into its own error. The
 * agent's writes of files that matter (journal, backups, caches) go through agent/safefile.c,
 * which uses these for its loops. */
#ifndef HF_FILES_H
#define HF_FILES_H

#include <stddef.h>

/* write(2) until all n bytes are written (EINTR retried; a write of 0 is EIO). */
int hf_write_all(int fd, const void *buf, size_t n);

/* Reads the regular file open at fd from offset 0 (pread: the file offset is not moved),
 * at most max bytes: *out (new, free(); NUL-terminated) and *len. A file that shrinks while
 * it is read gives what was there. EINVAL when fd is not a regular file, EFBIG when it is
 * larger than max. */
int hf_read_fd(int fd, size_t max, char **out, size_t *len);
/* The same for the file at path (opened O_RDONLY|O_CLOEXEC, following symlinks). */
int hf_read_file(const char *path, size_t max, char **out, size_t *len);

/* fsync of the directory holding path, so that a create or rename of path survives a
 * power cut. */
int hf_fsync_parent(const char *path);

/* Removes the tree at path depth first, never following a symlink out of it. path must be
 * absolute and not "/" (anything else is left alone: EINVAL); errors inside are ignored
 * (best effort: what could not be removed stays). */
int hf_rm_tree(const char *path);

#endif /* HF_FILES_H */
