/* hf_payload.h: the agent as it travels to a host.
 *
 * The host keeps and runs the binary named by the SHA-256 of its
 * uncompressed bytes; what crosses the network is a gzip stream of it,
 * inflated on the host by gzip and checked against that SHA-256 before it
 * is made executable (see hf_deploy_cmd_upload). The stream is the build's
 * AGENT.gz when that inflates to exactly the agent, else made here (gzip
 * level 1) the first time a host needs an upload. */
#ifndef HF_PAYLOAD_H
#define HF_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>

#include "hf_sha256.h"

struct hf_payload {
  char *path;                 /* the agent file (new) */
  unsigned char *bin;         /* its bytes (new) */
  size_t bin_len;
  char hex[HF_SHA256_HEX];    /* SHA-256 of bin */
  unsigned char *gz;          /* gzip stream of bin (new), NULL until hf_payload_gzip */
  size_t gz_len;
  bool gz_shipped;            /* gz is the build's AGENT.gz, verified */
};

/* Reads and hashes the agent at path. Returns 0, or a negative errno with
 * err set (then p holds nothing). */
int hf_payload_load(const char *path, struct hf_payload *p, char *err, size_t errlen);
/* Makes p->gz if not yet there. Returns 0, or a negative errno with err set. */
int hf_payload_gzip(struct hf_payload *p, char *err, size_t errlen);
void hf_payload_free(struct hf_payload *p);

#endif /* HF_PAYLOAD_H */
