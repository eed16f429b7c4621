/*
 * tls.c — OpenSSL 3 server and client contexts: TLS 1.2 floor, ECDHE+AEAD
 * for TLS 1.2, no compression, no renegotiation; a server context can be
 * rebuilt from its files (SIGHUP) while open connections keep the old one.
 */
#include "tls.h"
#include "alloc.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/* TLS 1.2 suites: forward secret key exchange with an AEAD cipher only.
 * TLS 1.3 suites are all AEAD and keep OpenSSL's default list. */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
#define TLS_GROUPS    "X25519:P-256:P-384"

struct tls_ctx {
	SSL_CTX *ctx;
	bool server;
	bool verify;            /* client: verify the peer */
	char *cert_file;        /* server */
	char *key_file;         /* server */
	char *ca_file;          /* client: NULL for the system store */
};

/* OpenSSL's error queue as one line (oldest first), and the queue emptied. */
static void ssl_errors(char *out, size_t outlen)
{
	size_t used = 0;
	unsigned long e;
	out[0] = '\0';
	while ((e = ERR_get_error()) != 0) {
		char one[256];
		const char *reason = ERR_SYSTEM_ERROR(e) ? strerror(ERR_GET_REASON(e))
							: ERR_reason_error_string(e);
		if (reason)
			snprintf(one, sizeof(one), "%s", reason);
		else
			ERR_error_string_n(e, one, sizeof(one));
		if (strstr(out, one))          /* the same reason twice says nothing more */
			continue;
		int n = snprintf(out + used, outlen - used, "%s%s", used ? "; " : "", one);
		if (n < 0 || (size_t)n >= outlen - used) {
			ERR_clear_error();
			break;
		}
		used += (size_t)n;
	}
	if (!out[0])
		snprintf(out, outlen, "unknown OpenSSL error");
}

/* Never prompt for a pass phrase: an encrypted key is an error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf; (void)size; (void)rwflag; (void)u;
	return 0;
}

/* Settings common to both sides. */
static bool ctx_common(SSL_CTX *ctx, char *why, size_t whylen)
{
	char err[512];
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot set TLS 1.2 as the minimum version: %s", err);
		return false;
	}
	if (!SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS)) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot set the TLS 1.2 cipher list: %s", err);
		return false;
	}
	/* Named groups for (EC)DHE; OpenSSL picks the shared one itself
	 * (what SSL_CTX_set_ecdh_auto() used to ask for). */
	if (!SSL_CTX_set1_groups_list(ctx, TLS_GROUPS)) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot set the key exchange groups: %s", err);
		return false;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
	return true;
}

static SSL_CTX *build_server(const char *cert_file, const char *key_file, char *why, size_t whylen)
{
	char err[512];
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot create a TLS server context: %s", err);
		return NULL;
	}
	if (!ctx_common(ctx, why, whylen))
		goto fail;
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	static const unsigned char sid_ctx[] = "rampart";
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);

	ERR_clear_error();
	if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot load certificate chain %s: %s", cert_file, err);
		goto fail;
	}
	X509 *cert = SSL_CTX_get0_certificate(ctx);

	/* The key is read here rather than by SSL_CTX_use_PrivateKey_file so
	 * that an unreadable key and a key of another certificate give two
	 * different reasons. */
	BIO *bio = BIO_new_file(key_file, "r");
	if (!bio) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot open private key %s: %s", key_file, err);
		goto fail;
	}
	EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	BIO_free(bio);
	if (!key) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot read private key %s: %s", key_file, err);
		goto fail;
	}
	if (!cert || X509_check_private_key(cert, key) != 1) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "private key %s does not match certificate %s: %s",
			key_file, cert_file, err);
		EVP_PKEY_free(key);
		goto fail;
	}
	int ok = SSL_CTX_use_PrivateKey(ctx, key);
	EVP_PKEY_free(key);
	if (ok != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "private key %s does not match certificate %s: %s",
			key_file, cert_file, err);
		goto fail;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
		log_warn(NULL, NULL, "tls_cert_expired", "file=%s", cert_file);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static SSL_CTX *build_client(const char *ca_file, bool verify, char *why, size_t whylen)
{
	char err[512];
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx) {
		ssl_errors(err, sizeof(err));
		set_why(why, whylen, "cannot create a TLS client context: %s", err);
		return NULL;
	}
	if (!ctx_common(ctx, why, whylen))
		goto fail;
	ERR_clear_error();
	/* Trust anchors are loaded even without verification, so that an
	 * opportunistic connection can still report whether the peer would
	 * have verified (SSL_get_verify_result). */
	if (ca_file) {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			ssl_errors(err, sizeof(err));
			set_why(why, whylen, "cannot load CA file %s: %s", ca_file, err);
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		ssl_errors(err, sizeof(err));
		if (verify) {
			set_why(why, whylen, "cannot load the system CA store: %s", err);
			goto fail;
		}
		log_warn(NULL, NULL, "tls_ca_store", "error=%s", err);
	}
	SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static SSL_CTX *build(const struct tls_ctx *t, char *why, size_t whylen)
{
	if (t->server)
		return build_server(t->cert_file, t->key_file, why, whylen);
	return build_client(t->ca_file, t->verify, why, whylen);
}

struct tls_ctx *tls_server_new(const char *cert_file, const char *key_file, char *why, size_t whylen)
{
	if (!cert_file || !key_file) {
		set_why(why, whylen, "a TLS server needs both a certificate and a key file");
		return NULL;
	}
	struct tls_ctx *t = xcalloc(1, sizeof(*t));
	t->server = true;
	t->cert_file = xstrdup(cert_file);
	t->key_file = xstrdup(key_file);
	t->ctx = build(t, why, whylen);
	if (!t->ctx) {
		tls_ctx_free(t);
		return NULL;
	}
	return t;
}

struct tls_ctx *tls_client_new(const char *ca_file, bool verify, char *why, size_t whylen)
{
	struct tls_ctx *t = xcalloc(1, sizeof(*t));
	t->verify = verify;
	t->ca_file = ca_file ? xstrdup(ca_file) : NULL;
	t->ctx = build(t, why, whylen);
	if (!t->ctx) {
		tls_ctx_free(t);
		return NULL;
	}
	return t;
}

bool tls_ctx_reload(struct tls_ctx *t, char *why, size_t whylen)
{
	SSL_CTX *fresh = build(t, why, whylen);
	if (!fresh)
		return false;
	/* Each SSL holds its own reference to the SSL_CTX it was made from:
	 * dropping ours frees the old context only when the last connection
	 * made from it is gone. */
	SSL_CTX_free(t->ctx);
	t->ctx = fresh;
	return true;
}

SSL_CTX *tls_ctx_ssl(struct tls_ctx *t)
{
	return t->ctx;
}

void tls_ctx_free(struct tls_ctx *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	free(t->cert_file);
	free(t->key_file);
	free(t->ca_file);
	free(t);
}

void tls_describe(SSL *ssl, char *out, size_t outlen)
{
	if (!out || !outlen)
		return;
	const SSL_CIPHER *c = ssl ? SSL_get_current_cipher(ssl) : NULL;
	if (!c) {
		snprintf(out, outlen, "none");
		return;
	}
	snprintf(out, outlen, "%s %s", SSL_get_version(ssl), SSL_CIPHER_get_name(c));
}
