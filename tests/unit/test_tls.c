/*
 * test_tls.c — TLS contexts: real handshakes between a server and a client
 * SSL over a socketpair (one thread, non-blocking), with certificates made
 * at test time in a temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "util/log.h"
#include "util/tls.h"

struct fixture {
	char dir[64];
	char a_crt[128], a_key[128];      /* EC P-256, CN=localhost */
	char b_crt[128], b_key[128];      /* EC P-256, CN=localhost, another key */
	char r_crt[128], r_key[128];      /* RSA 2048 */
	char work_crt[128], work_key[128];/* files a test may overwrite */
};

/* ---- certificates ------------------------------------------------------ */

static EVP_PKEY *make_key(bool rsa)
{
	EVP_PKEY *k = rsa ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
			  : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	assert_non_null(k);
	return k;
}

static X509 *make_cert(EVP_PKEY *key, const char *cn)
{
	X509 *x = X509_new();
	assert_non_null(x);
	assert_int_equal(X509_set_version(x, 2), 1);
	unsigned char serial[8];
	assert_int_equal(RAND_bytes(serial, sizeof(serial)), 1);
	serial[0] &= 0x7f;
	BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
	assert_non_null(BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)));
	BN_free(bn);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 86400));
	X509_NAME *name = X509_get_subject_name(x);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
						    (const unsigned char *)cn, -1, -1, 0), 1);
	assert_int_equal(X509_set_issuer_name(x, name), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);

	X509V3_CTX v3;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	char san[128];
	snprintf(san, sizeof(san), "DNS:%s", cn);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
	assert_non_null(ext);
	assert_int_equal(X509_add_ext(x, ext, -1), 1);
	X509_EXTENSION_free(ext);

	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	return x;
}

static void write_pair(const char *crt, const char *keyfile, X509 *x, EVP_PKEY *k)
{
	FILE *f = fopen(crt, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, x), 1);
	fclose(f);
	f = fopen(keyfile, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
}

static void gen_pair(const char *crt, const char *keyfile, bool rsa)
{
	EVP_PKEY *k = make_key(rsa);
	X509 *x = make_cert(k, "localhost");
	write_pair(crt, keyfile, x, k);
	X509_free(x);
	EVP_PKEY_free(k);
}

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static void copy_file(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb");
	assert_non_null(in);
	FILE *out = fopen(to, "wb");
	assert_non_null(out);
	char buf[4096];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	fclose(in);
	fclose(out);
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int group_setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/rampart-test-tls-XXXXXX");
	if (!mkdtemp(fx->dir)) {
		free(fx);
		return -1;
	}
	snprintf(fx->a_crt, sizeof(fx->a_crt), "%s/a.crt", fx->dir);
	snprintf(fx->a_key, sizeof(fx->a_key), "%s/a.key", fx->dir);
	snprintf(fx->b_crt, sizeof(fx->b_crt), "%s/b.crt", fx->dir);
	snprintf(fx->b_key, sizeof(fx->b_key), "%s/b.key", fx->dir);
	snprintf(fx->r_crt, sizeof(fx->r_crt), "%s/r.crt", fx->dir);
	snprintf(fx->r_key, sizeof(fx->r_key), "%s/r.key", fx->dir);
	snprintf(fx->work_crt, sizeof(fx->work_crt), "%s/work.crt", fx->dir);
	snprintf(fx->work_key, sizeof(fx->work_key), "%s/work.key", fx->dir);
	gen_pair(fx->a_crt, fx->a_key, false);
	gen_pair(fx->b_crt, fx->b_key, false);
	gen_pair(fx->r_crt, fx->r_key, true);
	*state = fx;
	return 0;
}

static int group_teardown(void **state)
{
	struct fixture *fx = *state;
	const char *files[] = { fx->a_crt, fx->a_key, fx->b_crt, fx->b_key, fx->r_crt,
				fx->r_key, fx->work_crt, fx->work_key };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	rmdir(fx->dir);
	free(fx);
	return 0;
}

/* ---- handshakes -------------------------------------------------------- */

struct hs {
	SSL *srv, *cli;
	int fds[2];
	bool srv_ok, cli_ok;
	unsigned long srv_err;  /* first OpenSSL error of a failed server side */
};

static void hs_open(struct hs *h, SSL_CTX *sctx, SSL_CTX *cctx)
{
	memset(h, 0, sizeof(*h));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, h->fds), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(fcntl(h->fds[i], F_SETFL, O_NONBLOCK), 0);
	h->srv = SSL_new(sctx);
	h->cli = SSL_new(cctx);
	assert_non_null(h->srv);
	assert_non_null(h->cli);
	SSL_set_fd(h->srv, h->fds[0]);
	SSL_set_fd(h->cli, h->fds[1]);
	SSL_set_accept_state(h->srv);
	SSL_set_connect_state(h->cli);
}

/* One step of one side: 1 done, 0 wants more, -1 failed. */
static int hs_step(SSL *s, unsigned long *err)
{
	ERR_clear_error();
	int r = SSL_do_handshake(s);
	if (r == 1)
		return 1;
	int e = SSL_get_error(s, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	if (err)
		*err = ERR_peek_error();
	ERR_clear_error();
	return -1;
}

/* Drive both sides until both are done, or one failed (and the other has
 * had the chance to read the alert).  True if both completed. */
static bool hs_run(struct hs *h)
{
	int s = 0, c = 0, after_fail = 0;
	for (int i = 0; i < 2000; i++) {
		if (c == 0)
			c = hs_step(h->cli, NULL);
		if (s == 0)
			s = hs_step(h->srv, &h->srv_err);
		if (s == 1 && c == 1)
			break;
		if ((s < 0 || c < 0) && ++after_fail > 20)
			break;
	}
	h->srv_ok = s == 1;
	h->cli_ok = c == 1;
	return h->srv_ok && h->cli_ok;
}

static void hs_close(struct hs *h)
{
	SSL_free(h->srv);
	SSL_free(h->cli);
	close(h->fds[0]);
	close(h->fds[1]);
}

/* Exchange a line both ways over an established pair. */
static void hs_echo(struct hs *h)
{
	assert_int_equal(SSL_write(h->cli, "ping", 4), 4);
	char buf[16];
	int n = -1;
	for (int i = 0; i < 100 && n <= 0; i++)
		n = SSL_read(h->srv, buf, sizeof(buf));
	assert_int_equal(n, 4);
	assert_memory_equal(buf, "ping", 4);
}

/* A client context that OpenSSL's defaults would not allow: used to show
 * that it is our server that refuses, not the client that cannot offer. */
static SSL_CTX *lax_client(int max_version, const char *ciphers)
{
	SSL_CTX *c = SSL_CTX_new(TLS_client_method());
	assert_non_null(c);
	SSL_CTX_set_security_level(c, 0);
	assert_int_equal(SSL_CTX_set_min_proto_version(c, 0), 1);
	assert_int_equal(SSL_CTX_set_max_proto_version(c, max_version), 1);
	assert_int_equal(SSL_CTX_set_cipher_list(c, ciphers), 1);
	SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
	return c;
}

/* ---- tests ------------------------------------------------------------- */

static void test_handshake(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	struct tls_ctx *srv = tls_server_new(fx->a_crt, fx->a_key, why, sizeof(why));
	assert_non_null(srv);
	struct tls_ctx *cli = tls_client_new(NULL, false, why, sizeof(why));
	assert_non_null(cli);

	struct hs h;
	hs_open(&h, tls_ctx_ssl(srv), tls_ctx_ssl(cli));
	assert_true(hs_run(&h));
	assert_true(SSL_version(h.srv) >= TLS1_2_VERSION);
	assert_true(SSL_version(h.cli) >= TLS1_2_VERSION);
	hs_echo(&h);

	char desc[128];
	tls_describe(h.srv, desc, sizeof(desc));
	char want[128];
	snprintf(want, sizeof(want), "%s %s", SSL_get_version(h.srv), SSL_get_cipher_name(h.srv));
	assert_string_equal(desc, want);
	assert_true(strncmp(desc, "TLSv1.3 TLS_", 12) == 0);
	hs_close(&h);

	tls_ctx_free(cli);
	tls_ctx_free(srv);
}

static void test_tls12_ecdhe_aead(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	const char *pairs[][2] = { { fx->a_crt, fx->a_key }, { fx->r_crt, fx->r_key } };
	for (size_t i = 0; i < 2; i++) {
		struct tls_ctx *srv = tls_server_new(pairs[i][0], pairs[i][1], why, sizeof(why));
		assert_non_null(srv);
		struct tls_ctx *cli = tls_client_new(NULL, false, why, sizeof(why));
		assert_non_null(cli);
		struct hs h;
		hs_open(&h, tls_ctx_ssl(srv), tls_ctx_ssl(cli));
		assert_int_equal(SSL_set_max_proto_version(h.cli, TLS1_2_VERSION), 1);
		assert_true(hs_run(&h));
		assert_int_equal(SSL_version(h.srv), TLS1_2_VERSION);
		char desc[128];
		tls_describe(h.cli, desc, sizeof(desc));
		assert_true(strncmp(desc, "TLSv1.2 ECDHE-", 14) == 0);
		assert_true(strstr(desc, "GCM") || strstr(desc, "CHACHA20"));
		hs_echo(&h);
		hs_close(&h);
		tls_ctx_free(cli);
		tls_ctx_free(srv);
	}
}

static void test_tls11_refused(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	struct tls_ctx *srv = tls_server_new(fx->a_crt, fx->a_key, why, sizeof(why));
	assert_non_null(srv);

	/* Control: the lax client does connect when it may use TLS 1.2. */
	SSL_CTX *ok = lax_client(TLS1_2_VERSION, "DEFAULT:@SECLEVEL=0");
	struct hs h;
	hs_open(&h, tls_ctx_ssl(srv), ok);
	assert_true(hs_run(&h));
	hs_close(&h);
	SSL_CTX_free(ok);

	SSL_CTX *old = lax_client(TLS1_1_VERSION, "DEFAULT:@SECLEVEL=0");
	hs_open(&h, tls_ctx_ssl(srv), old);
	assert_false(hs_run(&h));
	assert_false(h.srv_ok);
	assert_false(h.cli_ok);
	assert_int_equal(ERR_GET_REASON(h.srv_err), SSL_R_UNSUPPORTED_PROTOCOL);
	hs_close(&h);
	SSL_CTX_free(old);
	tls_ctx_free(srv);
}

static void test_tls12_weak_ciphers_refused(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	struct tls_ctx *srv = tls_server_new(fx->r_crt, fx->r_key, why, sizeof(why));
	assert_non_null(srv);
	struct {
		const char *cipher;
		bool ok;
	} cases[] = {
		{ "ECDHE-RSA-AES128-GCM-SHA256", true },
		{ "ECDHE-RSA-CHACHA20-POLY1305", true },
		{ "ECDHE-RSA-AES128-SHA256", false },   /* CBC */
		{ "ECDHE-RSA-AES256-SHA", false },
		{ "AES128-GCM-SHA256", false },         /* RSA key exchange */
		{ "DHE-RSA-AES128-GCM-SHA256", false }, /* finite-field DH */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		SSL_CTX *c = lax_client(TLS1_2_VERSION, cases[i].cipher);
		struct hs h;
		hs_open(&h, tls_ctx_ssl(srv), c);
		bool ok = hs_run(&h);
		if (ok != cases[i].ok)
			fail_msg("cipher %s: handshake %s", cases[i].cipher, ok ? "succeeded" : "failed");
		if (!ok)
			assert_int_equal(ERR_GET_REASON(h.srv_err), SSL_R_NO_SHARED_CIPHER);
		hs_close(&h);
		SSL_CTX_free(c);
	}
	tls_ctx_free(srv);
}

static void test_ctx_settings(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	struct tls_ctx *srv = tls_server_new(fx->a_crt, fx->a_key, why, sizeof(why));
	assert_non_null(srv);
	SSL_CTX *s = tls_ctx_ssl(srv);
	assert_int_equal(SSL_CTX_get_min_proto_version(s), TLS1_2_VERSION);
	uint64_t want = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE;
	assert_true((SSL_CTX_get_options(s) & want) == want);
	assert_int_equal(SSL_CTX_get_verify_mode(s), SSL_VERIFY_NONE);
	tls_ctx_free(srv);

	struct tls_ctx *cli = tls_client_new(NULL, true, why, sizeof(why));
	assert_non_null(cli);
	SSL_CTX *c = tls_ctx_ssl(cli);
	assert_int_equal(SSL_CTX_get_min_proto_version(c), TLS1_2_VERSION);
	assert_true(SSL_CTX_get_options(c) & SSL_OP_NO_RENEGOTIATION);
	assert_int_equal(SSL_CTX_get_verify_mode(c), SSL_VERIFY_PEER);
	tls_ctx_free(cli);

	cli = tls_client_new(NULL, false, why, sizeof(why));
	assert_non_null(cli);
	assert_int_equal(SSL_CTX_get_verify_mode(tls_ctx_ssl(cli)), SSL_VERIFY_NONE);
	tls_ctx_free(cli);
}

static X509 *peer_of_handshake(SSL_CTX *sctx)
{
	struct tls_ctx *cli = tls_client_new(NULL, false, NULL, 0);
	assert_non_null(cli);
	struct hs h;
	hs_open(&h, sctx, tls_ctx_ssl(cli));
	assert_true(hs_run(&h));
	X509 *peer = SSL_get1_peer_certificate(h.cli);
	assert_non_null(peer);
	hs_close(&h);
	tls_ctx_free(cli);
	return peer;
}

static void test_reload(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	X509 *a = read_cert(fx->a_crt), *b = read_cert(fx->b_crt);
	copy_file(fx->a_crt, fx->work_crt);
	copy_file(fx->a_key, fx->work_key);

	struct tls_ctx *srv = tls_server_new(fx->work_crt, fx->work_key, why, sizeof(why));
	assert_non_null(srv);
	SSL_CTX *first = tls_ctx_ssl(srv);
	X509 *peer = peer_of_handshake(first);
	assert_int_equal(X509_cmp(peer, a), 0);
	X509_free(peer);

	/* A connection accepted before the reload, handshake not yet done. */
	struct tls_ctx *cli = tls_client_new(NULL, false, why, sizeof(why));
	assert_non_null(cli);
	struct hs early;
	hs_open(&early, first, tls_ctx_ssl(cli));

	/* New certificate and key on disk, then reload. */
	copy_file(fx->b_crt, fx->work_crt);
	copy_file(fx->b_key, fx->work_key);
	assert_true(tls_ctx_reload(srv, why, sizeof(why)));
	SSL_CTX *second = tls_ctx_ssl(srv);
	assert_ptr_not_equal(first, second);
	peer = peer_of_handshake(second);
	assert_int_equal(X509_cmp(peer, b), 0);
	X509_free(peer);

	/* The early connection still runs on the old context and certificate. */
	assert_true(hs_run(&early));
	peer = SSL_get1_peer_certificate(early.cli);
	assert_int_equal(X509_cmp(peer, a), 0);
	X509_free(peer);
	hs_echo(&early);
	hs_close(&early);

	/* A missing certificate: the reload fails, the current one stays. */
	unlink(fx->work_crt);
	why[0] = '\0';
	assert_false(tls_ctx_reload(srv, why, sizeof(why)));
	assert_non_null(strstr(why, fx->work_crt));
	assert_ptr_equal(tls_ctx_ssl(srv), second);
	peer = peer_of_handshake(tls_ctx_ssl(srv));
	assert_int_equal(X509_cmp(peer, b), 0);
	X509_free(peer);

	/* A corrupt key: same. */
	copy_file(fx->b_crt, fx->work_crt);
	write_text(fx->work_key, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
	why[0] = '\0';
	assert_false(tls_ctx_reload(srv, why, sizeof(why)));
	assert_non_null(strstr(why, fx->work_key));
	assert_ptr_equal(tls_ctx_ssl(srv), second);

	/* A key of another certificate: same. */
	copy_file(fx->a_key, fx->work_key);
	why[0] = '\0';
	assert_false(tls_ctx_reload(srv, why, sizeof(why)));
	assert_non_null(strstr(why, "does not match"));
	assert_ptr_equal(tls_ctx_ssl(srv), second);
	peer = peer_of_handshake(tls_ctx_ssl(srv));
	assert_int_equal(X509_cmp(peer, b), 0);
	X509_free(peer);

	tls_ctx_free(cli);
	tls_ctx_free(srv);
	X509_free(a);
	X509_free(b);
}

static void test_key_mismatch(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	assert_null(tls_server_new(fx->a_crt, fx->b_key, why, sizeof(why)));
	assert_non_null(strstr(why, "does not match"));
	assert_non_null(strstr(why, fx->a_crt));
	assert_non_null(strstr(why, fx->b_key));
	assert_non_null(strstr(why, "key values mismatch"));   /* OpenSSL's reason */

	/* A key of another type. */
	why[0] = '\0';
	assert_null(tls_server_new(fx->a_crt, fx->r_key, why, sizeof(why)));
	assert_non_null(strstr(why, "does not match"));
	assert_non_null(strstr(why, fx->r_key));
}

static void test_bad_files(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	char missing[160];
	snprintf(missing, sizeof(missing), "%s/missing.pem", fx->dir);

	assert_null(tls_server_new(missing, fx->a_key, why, sizeof(why)));
	assert_non_null(strstr(why, "certificate"));
	assert_non_null(strstr(why, missing));
	assert_non_null(strstr(why, "No such file"));

	why[0] = '\0';
	assert_null(tls_server_new(fx->a_crt, missing, why, sizeof(why)));
	assert_non_null(strstr(why, "private key"));
	assert_non_null(strstr(why, missing));

	/* A key file given as the certificate. */
	why[0] = '\0';
	assert_null(tls_server_new(fx->a_key, fx->a_key, why, sizeof(why)));
	assert_non_null(strstr(why, fx->a_key));

	why[0] = '\0';
	assert_null(tls_client_new(missing, true, why, sizeof(why)));
	assert_non_null(strstr(why, "CA file"));
	assert_non_null(strstr(why, missing));

	why[0] = '\0';
	assert_null(tls_server_new(NULL, fx->a_key, why, sizeof(why)));
	assert_true(why[0] != '\0');

	/* why may be omitted. */
	assert_null(tls_server_new(missing, missing, NULL, 0));
}

static void test_client_verify(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	struct tls_ctx *srv = tls_server_new(fx->a_crt, fx->a_key, why, sizeof(why));
	assert_non_null(srv);

	/* Trusting the server's own certificate: verified. */
	struct tls_ctx *cli = tls_client_new(fx->a_crt, true, why, sizeof(why));
	assert_non_null(cli);
	struct hs h;
	hs_open(&h, tls_ctx_ssl(srv), tls_ctx_ssl(cli));
	assert_int_equal(SSL_set1_host(h.cli, "localhost"), 1);
	assert_true(hs_run(&h));
	assert_int_equal(SSL_get_verify_result(h.cli), X509_V_OK);
	hs_close(&h);

	/* Right CA, wrong name: refused. */
	hs_open(&h, tls_ctx_ssl(srv), tls_ctx_ssl(cli));
	assert_int_equal(SSL_set1_host(h.cli, "mx.example.org"), 1);
	assert_false(hs_run(&h));
	assert_false(h.cli_ok);
	assert_int_equal(SSL_get_verify_result(h.cli), X509_V_ERR_HOSTNAME_MISMATCH);
	hs_close(&h);
	tls_ctx_free(cli);

	/* Trusting another certificate: refused. */
	cli = tls_client_new(fx->b_crt, true, why, sizeof(why));
	assert_non_null(cli);
	hs_open(&h, tls_ctx_ssl(srv), tls_ctx_ssl(cli));
	assert_false(hs_run(&h));
	assert_false(h.cli_ok);
	assert_int_not_equal(SSL_get_verify_result(h.cli), X509_V_OK);
	hs_close(&h);
	tls_ctx_free(cli);

	/* Opportunistic: connects anyway, and can tell it did not verify. */
	cli = tls_client_new(fx->b_crt, false, why, sizeof(why));
	assert_non_null(cli);
	hs_open(&h, tls_ctx_ssl(srv), tls_ctx_ssl(cli));
	assert_true(hs_run(&h));
	assert_int_not_equal(SSL_get_verify_result(h.cli), X509_V_OK);
	hs_close(&h);

	/* A client context reloads too (CA file re-read). */
	assert_true(tls_ctx_reload(cli, why, sizeof(why)));
	tls_ctx_free(cli);
	tls_ctx_free(srv);
}

static void test_describe_none(void **state)
{
	(void)state;
	char desc[64] = "x";
	tls_describe(NULL, desc, sizeof(desc));
	assert_string_equal(desc, "none");

	struct tls_ctx *cli = tls_client_new(NULL, false, NULL, 0);
	assert_non_null(cli);
	SSL *s = SSL_new(tls_ctx_ssl(cli));
	tls_describe(s, desc, sizeof(desc));
	assert_string_equal(desc, "none");
	SSL_free(s);
	tls_ctx_free(cli);
	tls_ctx_free(NULL);
}

int main(void)
{
	log_init("test", "test_tls");
	log_set_level(LL_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handshake),
		cmocka_unit_test(test_tls12_ecdhe_aead),
		cmocka_unit_test(test_tls11_refused),
		cmocka_unit_test(test_tls12_weak_ciphers_refused),
		cmocka_unit_test(test_ctx_settings),
		cmocka_unit_test(test_reload),
		cmocka_unit_test(test_key_mismatch),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_client_verify),
		cmocka_unit_test(test_describe_none),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
