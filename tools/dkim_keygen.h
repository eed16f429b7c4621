/*
 * dkim_keygen.h — `rampartctl dkim keygen`: make a DKIM signing key and
 * print the DNS TXT record to publish and the key-table line to add.
 *
 *   rampartctl dkim keygen DOMAIN SELECTOR [--ed25519] [--bits N] [--dir DIR] [--txt-only]
 *
 * RSA (default 2048 bits, 1024..4096) or ed25519 (RFC 8463).  The private
 * key goes to DIR/SELECTOR._domainkey.DOMAIN.key (PKCS#8 PEM, mode 0600;
 * an existing file is never overwritten).  --txt-only prints one line,
 * "SELECTOR._domainkey.DOMAIN v=DKIM1; k=...; p=...", the form opendkim's
 * TestPublicKeys file and the lab's dkim-keys.txt use.
 */
#ifndef RAMPART_DKIM_KEYGEN_H
#define RAMPART_DKIM_KEYGEN_H

#include <stdio.h>

/* argv[0] is the command name ("keygen"), the arguments follow.
 * Returns the exit status: 0 done, 1 failed, 2 usage. */
int dkim_keygen_main(int argc, char **argv);

/* The same, printing to out and err instead of stdout and stderr. */
int dkim_keygen_run(int argc, char **argv, FILE *out, FILE *err);

#endif
