/* hf_sanitize.h: the controller's output edge (docs/security.md). Text that
 * hosts send (event lines, error messages, versions, paths) and text read
 * back from the state file is printed by many commands; instead of cleaning
 * it at every printf, stdout and stderr themselves are filtered once:
 * C0 controls other than newline and tab, DEL, C1 controls, bidirectional
 * overrides and bytes that are not UTF-8 become '?', so no host can move the
 * cursor, set the title, write the clipboard (OSC 52) or overwrite a line.
 * The controller's own escape sequences (the progress line) go past the
 * filter through hf_term_raw only.
 *
 * Files the controller writes for other programs (report, Prometheus) are
 * created under a random O_EXCL|O_NOFOLLOW name in the destination's
 * directory and renamed into place (hf_out_open / hf_out_commit). */
#ifndef HF_SANITIZE_H
#define HF_SANITIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Cleans n bytes of in into out (room for n bytes; never more is written):
 * returns the bytes written. *used receives how many input bytes were
 * consumed: fewer than n only when in ends inside a UTF-8 sequence and final
 * is false (the caller keeps the tail for the next call). */
size_t hf_clean_bytes(const char *in, size_t n, char *out, size_t *used, bool final);
/* NUL-terminated in, cleaned into out (outlen >= 1), cut to fit. Returns out. */
char *hf_clean(char *out, size_t outlen, const char *in);
/* The same for text that must stay one line (a host's text inside one of
 * the controller's lines): newlines and tabs become spaces too, so no host
 * can start a line of its own ("h2: upgraded"). */
char *hf_clean_line(char *out, size_t outlen, const char *in);
/* Replaces stdout and stderr with filtered streams (line-buffered) writing to
 * the same descriptors. Idempotent; 0, or -1 when a stream could not be made
 * (the originals then stay). */
int hf_sanitize_stdio(void);
/* Writes s (the controller's own constant escape sequences) to f's descriptor
 * past the filter, after flushing f. */
void hf_term_raw(FILE *f, const char *s);

/* A file being written for others: tmp names the random temporary file. */
struct hf_out {
  FILE *f;
  char  path[4096];
  char  tmp[4096];
};
/* Creates the temporary file beside path (mode, then fchmod to it); 0 or -1
 * with err set. */
int hf_out_open(struct hf_out *o, const char *path, int mode, char *err, size_t errlen);
/* fflush, fsync, fclose, rename over path (ok true), or removal (ok false).
 * 0 or -1 with err set; the temporary file never stays behind. */
int hf_out_commit(struct hf_out *o, bool ok, char *err, size_t errlen);

#endif /* HF_SANITIZE_H */
