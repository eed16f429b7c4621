/*
 * tls.h — OpenSSL 3 contexts for servers and clients.
 *
 * TLS 1.2 is the floor; the cipher list is a modern one (ECDHE with AEAD
 * only for TLS 1.2).  A server context holds a certificate and key that
 * tls_ctx_reload() replaces (on SIGHUP): new handshakes use the new
 * SSL_CTX, connections already open keep the one they started with.
 */
#ifndef RAMPART_TLS_H
#define RAMPART_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>

struct tls_ctx;

/* Server: cert and key files (PEM).  NULL and a reason on failure. */
struct tls_ctx *tls_server_new(const char *cert_file, const char *key_file, char *why, size_t whylen);
/* Client: ca_file may be NULL (system store); verify=false for opportunistic TLS. */
struct tls_ctx *tls_client_new(const char *ca_file, bool verify, char *why, size_t whylen);
/* Re-read the files; on failure the old context stays and why says why. */
bool tls_ctx_reload(struct tls_ctx *t, char *why, size_t whylen);
/* The current SSL_CTX (the caller may SSL_new() from it). */
SSL_CTX *tls_ctx_ssl(struct tls_ctx *t);
void tls_ctx_free(struct tls_ctx *t);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" of an established connection, into out. */
void tls_describe(SSL *ssl, char *out, size_t outlen);

#endif
