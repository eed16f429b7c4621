/*
 * test_dkim_sign.c — unit tests for mail/dkim_sign and the DKIM key
 * generator (tools/dkim_keygen): keys made by keygen, a key table with
 * dual signing, signatures verified independently by python3-dkim
 * (tests/unit/dkim_verify.py) and by opendkim -t, From-domain selection,
 * key table errors, and the signing cost per message.
 *
 * Environment: RAMPART_TEST_PYTHON (default /usr/bin/python3, which has
 * Debian's python3-dkim), RAMPART_TEST_DKIM_VERIFY (path of
 * dkim_verify.py; default found through $srcdir, this file's directory or
 * ./tests/unit), RAMPART_TEST_OPENDKIM (default /usr/sbin/opendkim, Debian
 * package opendkim), RAMPART_TEST_KEEP=1 keeps the temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "mail/dkim_sign.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/log.h"
#include "testutil.h"
#include <malloc.h>
#include "../../tools/dkim_keygen.h"

/*
 * libopendkim 2.11.0~beta2 (Debian 12) never releases the key of an
 * ed25519 signature: suppressed under LeakSanitizer (see testutil.h; a few
 * objects per key, not per signature: test_no_growth below).
 */
TU_LSAN_ALLOW_ED25519_KEY_LEAK()

/* Signatures per algorithm in the cost test; few under the sanitizers,
 * whose figures mean nothing anyway. */
#ifdef __SANITIZE_ADDRESS__
#define BENCH_N 20
#define BENCH_NOTE " (sanitizer build: not a measurement)"
#else
#define BENCH_N 500
#define BENCH_NOTE ""
#endif

struct fixture {
	char dir[256];
	char keys[512];         /* public keys, one "name TXT-DATA" a line */
	char table[512];        /* the key table */
	char python[512];
	char script[1024];
	char opendkim[512];
	int log_fd;
	struct dkim_signer *signer;
};

/* ---- helpers ----------------------------------------------------------- */

static bool file_exists(const char *p)
{
	return access(p, F_OK) == 0;
}

/* Run the key generator with argv (NULL-terminated), output into *out
 * and *err (caller frees); returns its exit status. */
static int keygen(char **out, char **err, ...)
{
	char *argv[16];
	int argc = 0, rc;
	va_list ap;
	char *obuf = NULL, *ebuf = NULL;
	size_t olen = 0, elen = 0;
	FILE *of = open_memstream(&obuf, &olen), *ef = open_memstream(&ebuf, &elen);

	assert_non_null(of);
	assert_non_null(ef);
	argv[argc++] = "keygen";
	va_start(ap, err);
	for (char *a; (a = va_arg(ap, char *)) && argc < 15;)
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;
	rc = dkim_keygen_run(argc, argv, of, ef);
	fclose(of);
	fclose(ef);
	if (out)
		*out = obuf;
	else
		free(obuf);
	if (err)
		*err = ebuf;
	else
		free(ebuf);
	return rc;
}

/* keygen --txt-only, the line appended to the fixture's keys file. */
static void make_key(struct fixture *f, const char *domain, const char *sel, bool ed25519)
{
	char *out, *err;
	char prefix[300];
	FILE *k;
	int rc = ed25519 ? keygen(&out, &err, domain, sel, "--ed25519", "--dir", f->dir, "--txt-only", NULL)
			 : keygen(&out, &err, domain, sel, "--dir", f->dir, "--txt-only", NULL);

	if (rc != 0)
		fail_msg("keygen %s %s: %d: %s", domain, sel, rc, err);
	snprintf(prefix, sizeof prefix, "%s._domainkey.%s v=DKIM1; k=%s; p=", sel, domain,
		 ed25519 ? "ed25519" : "rsa");
	if (strncmp(out, prefix, strlen(prefix)) != 0)
		fail_msg("keygen --txt-only printed \"%s\"", out);
	assert_true(strchr(out, '\n') == out + strlen(out) - 1);     /* one line */
	k = fopen(f->keys, "a");
	assert_non_null(k);
	fputs(out, k);
	fclose(k);
	free(out);
	free(err);
}

static void key_file(const struct fixture *f, const char *domain, const char *sel, char *out, size_t len)
{
	snprintf(out, len, "%s/%s._domainkey.%s.key", f->dir, sel, domain);
}

/* A complete CRLF message. */
static char *message(const char *from_field, const char *body)
{
	return xasprintf("%s\r\n"
			 "To: Bob <bob@example.net>\r\n"
			 "Subject: DKIM test\r\n"
			 "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
			 "Message-ID: <t1@example.org>\r\n"
			 "MIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n"
			 "X-Not-Signed: anything\r\n"
			 "\r\n"
			 "%s", from_field, body);
}

/* Sign msg; the signed message (signatures in front) written to path. */
static int sign_to_file(struct fixture *f, const char *msg, const char *path, struct buf *hdrs)
{
	char why[512] = "x";
	int n;

	buf_reset(hdrs);
	n = dkim_sign_message(f->signer, msg, strlen(msg), hdrs, why, sizeof why);
	if (n < 0)
		fail_msg("dkim_sign_message: %s", why);
	if (path) {
		struct buf all = BUF_INIT;
		buf_append(&all, hdrs->data, hdrs->len);
		buf_puts(&all, msg);
		tu_write_bytes(path, all.data, all.len);
		buf_free(&all);
	}
	return n;
}

/* python3-dkim's verdict on path; the whole report into *report. */
static int py_verify(struct fixture *f, const char *path, char **report)
{
	char out[600];
	char *argv[] = { f->python, f->script, f->keys, (char *)path, NULL };
	int rc;

	snprintf(out, sizeof out, "%s.py.out", path);
	rc = tu_run_prog(out, argv);
	*report = tu_read_file(out, NULL);
	assert_non_null(*report);
	if (rc != 0 && rc != 1)
		fail_msg("dkim_verify.py failed (%d): %s", rc, *report);
	return rc;
}

/* "pass", "fail" or "none" for selector sel in python's report. */
static const char *py_result(const char *report, const char *sel)
{
	char pat[128];

	snprintf(pat, sizeof pat, " s=%s pass", sel);
	if (strstr(report, pat))
		return "pass";
	snprintf(pat, sizeof pat, " s=%s fail", sel);
	return strstr(report, pat) ? "fail" : "none";
}

/* opendkim -t with TestPublicKeys: the Authentication-Results it would
 * add (-vvv prints it); it exits 0 whatever the result. */
static char *od_verify(struct fixture *f, const char *path)
{
	char conf[600], out[600];
	char *argv[] = { f->opendkim, "-x", conf, "-vvv", "-t", (char *)path, NULL };
	char *text;
	FILE *c;

	if (access(f->opendkim, X_OK) != 0)
		fail_msg("%s: %s: install the Debian package opendkim (or set RAMPART_TEST_OPENDKIM)",
			 f->opendkim, strerror(errno));
	snprintf(conf, sizeof conf, "%s/opendkim.conf", f->dir);
	c = fopen(conf, "w");
	assert_non_null(c);
	fprintf(c, "Mode v\nSyslog no\nTestPublicKeys %s\n", f->keys);
	fclose(c);
	snprintf(out, sizeof out, "%s.od.out", path);
	assert_int_equal(tu_run_prog(out, argv), 0);
	text = tu_read_file(out, NULL);
	assert_non_null(text);
	return text;
}

/* The dkim= result opendkim gave the signature with selector sel:
 * "pass", "fail", ... or "none". */
static const char *od_result(const char *text, const char *sel, char *res, size_t reslen)
{
	char want[128];
	const char *p = text;

	snprintf(want, sizeof want, "header.s=%s", sel);
	snprintf(res, reslen, "none");
	while ((p = strstr(p, "dkim="))) {
		const char *end = strpbrk(p, ";'");
		size_t n = end ? (size_t)(end - p) : strlen(p);
		const char *s = strstr(p, want);
		if (s && s < p + n) {
			size_t k = strcspn(s + strlen(want), " \t\r\n;'");
			if (k == 0) {   /* exact selector, not a prefix of another */
				size_t r = strcspn(p + 5, " \t\r\n;'");
				snprintf(res, reslen, "%.*s", (int)r, p + 5);
				return res;
			}
		}
		p += 5;
	}
	return res;
}

/* s without CR, LF, TAB and SP: header fields compared whatever the
 * folding. */
static char *squeeze(const char *s)
{
	char *o = xmalloc(strlen(s) + 1), *q = o;

	for (; *s; s++)
		if (!strchr("\r\n\t ", *s))
			*q++ = *s;
	*q = '\0';
	return o;
}

static double cpu_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- fixture ----------------------------------------------------------- */

static int group_setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	const char *py = getenv("RAMPART_TEST_PYTHON");
	const char *sc = getenv("RAMPART_TEST_DKIM_VERIFY");
	const char *od = getenv("RAMPART_TEST_OPENDKIM");
	const char *srcdir = getenv("srcdir");
	char path[600], why[512];
	FILE *t;

	if (tu_mkdtemp(f->dir, sizeof f->dir, "dkim") != 0)
		return -1;
	snprintf(path, sizeof path, "%s/test.log", f->dir);
	f->log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
	log_set_fd(f->log_fd);
	snprintf(f->python, sizeof f->python, "%s", py ? py : "/usr/bin/python3");
	snprintf(f->opendkim, sizeof f->opendkim, "%s", od ? od : "/usr/sbin/opendkim");
	if (sc)
		snprintf(f->script, sizeof f->script, "%s", sc);
	else if (srcdir)
		snprintf(f->script, sizeof f->script, "%s/tests/unit/dkim_verify.py", srcdir);
	if (!f->script[0] || !file_exists(f->script)) {
		const char *me = __FILE__;
		const char *slash = strrchr(me, '/');
		snprintf(f->script, sizeof f->script, "%.*s/dkim_verify.py",
			 slash ? (int)(slash - me) : 1, slash ? me : ".");
	}
	if (!file_exists(f->script))
		snprintf(f->script, sizeof f->script, "tests/unit/dkim_verify.py");
	snprintf(f->keys, sizeof f->keys, "%s/dkim-keys.txt", f->dir);
	snprintf(f->table, sizeof f->table, "%s/keytable", f->dir);

	/* example.org signs twice (RSA-2048 and ed25519); example.com once;
	 * rsa.example and ed.example reuse a key each, for the benchmark. */
	make_key(f, "example.org", "rsa1", false);
	make_key(f, "example.org", "ed1", true);
	make_key(f, "example.com", "solo", false);
	t = fopen(f->table, "w");
	if (!t)
		return -1;
	fprintf(t, "# DOMAIN SELECTOR ALGORITHM KEYFILE\n"
		   "example.org  rsa1  rsa-sha256      rsa1._domainkey.example.org.key\n"
		   "\n"
		   "Example.ORG  ed1   ed25519-sha256  %s/ed1._domainkey.example.org.key   # dual\n"
		   "example.com\tsolo\tRSA-SHA256\tsolo._domainkey.example.com.key\n"
		   "rsa.example  rsa1  rsa-sha256      rsa1._domainkey.example.org.key\n"
		   "ed.example   ed1   ed25519-sha256  ed1._domainkey.example.org.key\n", f->dir);
	fclose(t);
	/* the same keys published under the benchmark domains */
	t = fopen(f->keys, "a");
	{
		char *k = tu_read_file(f->keys, NULL);
		for (char *line = strtok(k, "\n"); line; line = strtok(NULL, "\n"))
			if (strstr(line, ".example.org "))
				fprintf(t, "%.*s%s%s\n", (int)(strstr(line, ".example.org ") - line),
					line, strstr(line, "rsa1") == line ? ".rsa.example" : ".ed.example",
					strstr(line, ".example.org ") + strlen(".example.org"));
		free(k);
	}
	fclose(t);
	f->signer = dkim_signer_new(f->table, why, sizeof why);
	if (!f->signer) {
		fprintf(stderr, "dkim_signer_new: %s\n", why);
		return -1;
	}
	*state = f;
	return 0;
}

static int group_teardown(void **state)
{
	struct fixture *f = *state;

	dkim_signer_free(f->signer);
	tu_log_close(f->log_fd);
	tu_rmtree_unless_kept(f->dir);
	free(f);
	return 0;
}

/* ---- keygen ------------------------------------------------------------ */

static void test_keygen_files(void **state)
{
	struct fixture *f = *state;
	char path[600];
	struct stat st;
	char *pem;
	EVP_PKEY *pk;
	BIO *b;
	const char *files[][3] = { { "example.org", "rsa1", "RSA" },
				   { "example.org", "ed1", "ED25519" },
				   { "example.com", "solo", "RSA" } };

	for (size_t i = 0; i < 3; i++) {
		key_file(f, files[i][0], files[i][1], path, sizeof path);
		assert_int_equal(stat(path, &st), 0);
		assert_true(S_ISREG(st.st_mode));
		assert_int_equal(st.st_mode & 07777, 0600);
		pem = tu_read_file(path, NULL);
		assert_non_null(pem);
		assert_true(strncmp(pem, "-----BEGIN PRIVATE KEY-----\n", 28) == 0);
		b = BIO_new_mem_buf(pem, -1);
		pk = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
		assert_non_null(pk);
		assert_true(EVP_PKEY_is_a(pk, files[i][2]));
		if (strcmp(files[i][2], "RSA") == 0)
			assert_int_equal(EVP_PKEY_get_bits(pk), 2048);
		EVP_PKEY_free(pk);
		BIO_free(b);
		free(pem);
	}
}

/* The zone-file output: the record's strings joined give the public half
 * of the key written, each string at most 255 octets; the key-table line
 * names the file. */
static void test_keygen_zone_output(void **state)
{
	struct fixture *f = *state;
	char *out, *err, *pem, *p;
	char path[600], line[900];
	struct buf joined = BUF_INIT;
	unsigned char *der = NULL;
	int dl, nstrings = 0;
	char *b64;
	EVP_PKEY *pk;
	BIO *b;
	mode_t old = umask(0);          /* the file is 0600 whatever the umask */

	assert_int_equal(keygen(&out, &err, "Zone.Example", "sel-2024", "--dir", f->dir, "--bits", "3072", NULL), 0);
	umask(old);
	key_file(f, "zone.example", "sel-2024", path, sizeof path);
	{
		struct stat st;
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0600);
	}
	p = strstr(out, "sel-2024._domainkey.zone.example. IN TXT \"");
	assert_non_null(p);
	p = strchr(p, '"');
	while (p && *p == '"') {
		char *q = strchr(p + 1, '"');
		assert_non_null(q);
		assert_true(q - p - 1 <= 255);
		buf_append(&joined, p + 1, (size_t)(q - p - 1));
		nstrings++;
		p = q + 1;
		if (*p == ' ')
			p++;
	}
	assert_true(nstrings >= 2);     /* 3072-bit RSA does not fit one string */
	assert_true(strncmp(buf_cstr(&joined), "v=DKIM1; k=rsa; p=", 18) == 0);

	pem = tu_read_file(path, NULL);
	b = BIO_new_mem_buf(pem, -1);
	pk = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	assert_non_null(pk);
	assert_int_equal(EVP_PKEY_get_bits(pk), 3072);
	dl = i2d_PUBKEY(pk, &der);
	assert_true(dl > 0);
	b64 = xmalloc(4 * ((size_t)dl + 2) / 3 + 4);
	EVP_EncodeBlock((unsigned char *)b64, der, dl);
	assert_string_equal(buf_cstr(&joined) + 18, b64);

	snprintf(line, sizeof line, "\nzone.example sel-2024 rsa-sha256 %s\n", path);
	assert_non_null(strstr(out, line));
	assert_non_null(strstr(out, "Key table line to add:"));

	free(b64);
	OPENSSL_free(der);
	EVP_PKEY_free(pk);
	BIO_free(b);
	free(pem);
	buf_free(&joined);
	free(out);
	free(err);
}

/* ed25519: p= is the raw 32-byte public key (RFC 8463), not an SPKI. */
static void test_keygen_ed25519_record(void **state)
{
	struct fixture *f = *state;
	char path[600];
	char *keys = tu_read_file(f->keys, NULL), *p, *pem;
	unsigned char raw[32], dec[64];
	size_t rl = sizeof raw;
	char b64[64];
	EVP_PKEY *pk;
	BIO *b;

	p = strstr(keys, "ed1._domainkey.example.org v=DKIM1; k=ed25519; p=");
	assert_non_null(p);
	p = strstr(p, "p=") + 2;
	assert_int_equal(strcspn(p, "\n"), 44);
	assert_int_equal(EVP_DecodeBlock(dec, (unsigned char *)p, 44), 33);  /* 32 + padding */
	key_file(f, "example.org", "ed1", path, sizeof path);
	pem = tu_read_file(path, NULL);
	b = BIO_new_mem_buf(pem, -1);
	pk = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	assert_non_null(pk);
	assert_int_equal(EVP_PKEY_get_raw_public_key(pk, raw, &rl), 1);
	assert_int_equal(rl, 32);
	EVP_EncodeBlock((unsigned char *)b64, raw, 32);
	assert_memory_equal(p, b64, 44);
	EVP_PKEY_free(pk);
	BIO_free(b);
	free(pem);
	free(keys);
}

static void test_keygen_refuses_overwrite(void **state)
{
	struct fixture *f = *state;
	char path[600];
	char *before, *after, *out, *err;
	size_t lb, la;

	key_file(f, "example.org", "rsa1", path, sizeof path);
	before = tu_read_file(path, &lb);
	assert_int_equal(keygen(&out, &err, "example.org", "rsa1", "--dir", f->dir, NULL), 1);
	assert_non_null(strstr(err, "refusing to overwrite"));
	assert_string_equal(out, "");
	free(out);
	free(err);
	/* also for the other algorithm under the same name */
	assert_int_equal(keygen(NULL, &err, "example.org", "rsa1", "--ed25519", "--dir", f->dir, NULL), 1);
	assert_non_null(strstr(err, "exists"));
	free(err);
	after = tu_read_file(path, &la);
	assert_int_equal(la, lb);
	assert_memory_equal(before, after, la);
	free(before);
	free(after);
}

static void test_keygen_usage(void **state)
{
	struct fixture *f = *state;
	char *err;
	char nodir[600];

	assert_int_equal(keygen(NULL, NULL, "example.org", NULL), 2);
	assert_int_equal(keygen(NULL, NULL, "example.org", "a", "b", NULL), 2);
	assert_int_equal(keygen(NULL, &err, "exa_mple.org", "s", "--dir", f->dir, NULL), 2);
	assert_non_null(strstr(err, "not a domain"));
	free(err);
	assert_int_equal(keygen(NULL, &err, "example.org", "../x", "--dir", f->dir, NULL), 2);
	assert_non_null(strstr(err, "not a selector"));
	free(err);
	assert_int_equal(keygen(NULL, NULL, "example.org", "s", "--bits", "512", NULL), 2);
	assert_int_equal(keygen(NULL, NULL, "example.org", "s", "--bits", "2048x", NULL), 2);
	assert_int_equal(keygen(NULL, &err, "example.org", "s", "--ed25519", "--bits", "2048", NULL), 2);
	assert_non_null(strstr(err, "--bits is for RSA"));
	free(err);
	assert_int_equal(keygen(NULL, NULL, "example.org", "s", "--frobnicate", NULL), 2);
	assert_int_equal(keygen(NULL, NULL, "example.org", "s", "--dir", NULL), 2);
	snprintf(nodir, sizeof nodir, "%s/no/such/dir", f->dir);
	assert_int_equal(keygen(NULL, &err, "example.org", "s", "--ed25519", "--dir", nodir, NULL), 1);
	assert_non_null(strstr(err, "No such file"));
	free(err);
	assert_int_equal(keygen(NULL, NULL, "--help", NULL), 0);
}

/* ---- signing and independent verification ------------------------------ */

static void test_dual_sign_verifies(void **state)
{
	struct fixture *f = *state;
	char path[600], res[64];
	char *msg = message("From: Alice <alice@example.org>",
			    "Hello,\r\n\r\nthis is  a test   with  spaces.  \r\n\r\n\r\n");
	struct buf h = BUF_INIT;
	char *report, *od;
	char *sq;
	int n;

	unsigned long reused = dkim_signer_key_reuses(f->signer);

	snprintf(path, sizeof path, "%s/dual.eml", f->dir);
	n = sign_to_file(f, msg, path, &h);
	assert_int_equal(n, 2);
	/* both signatures made with the keys parsed at start-up */
	assert_int_equal(dkim_signer_key_reuses(f->signer) - reused, 2);
	/* two complete CRLF header fields, folded, and nothing else */
	sq = squeeze(h.data);
	assert_true(strncmp(h.data, "DKIM-Signature: v=1; ", 21) == 0);
	assert_true(strncmp(sq, "DKIM-Signature:v=1;a=rsa-sha256;c=relaxed/relaxed;d=example.org;s=rsa1;", 71) == 0);
	assert_non_null(strstr(h.data, "\r\nDKIM-Signature: v=1; "));
	assert_non_null(strstr(sq, "DKIM-Signature:v=1;a=ed25519-sha256;c=relaxed/relaxed;d=example.org;s=ed1;"));
	assert_true(h.len > 2 && h.data[h.len - 2] == '\r' && h.data[h.len - 1] == '\n');
	for (size_t i = 0; i < h.len; i++) {
		if (h.data[i] == '\n')
			assert_true(i > 0 && h.data[i - 1] == '\r');
		if (h.data[i] == '\r')
			assert_true(i + 1 < h.len && h.data[i + 1] == '\n');
		if (h.data[i] == '\n' && i + 1 < h.len)      /* folded or a new field */
			assert_true(h.data[i + 1] == '\t' || h.data[i + 1] == ' ' ||
				    strncmp(h.data + i + 1, "DKIM-Signature: ", 16) == 0);
	}
	/* the header list: present fields of the list, From oversigned */
	assert_non_null(strstr(sq, ";h=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type:from;"));
	assert_null(strstr(sq, "X-Not-Signed"));
	free(sq);

	assert_int_equal(py_verify(f, path, &report), 0);
	assert_string_equal(py_result(report, "rsa1"), "pass");
	assert_string_equal(py_result(report, "ed1"), "pass");
	assert_non_null(strstr(report, "signatures 2"));
	free(report);

	od = od_verify(f, path);
	assert_string_equal(od_result(od, "rsa1", res, sizeof res), "pass");
	/* This opendkim (2.11.0) verifies ed25519-sha256 too. */
	assert_string_equal(od_result(od, "ed1", res, sizeof res), "pass");
	print_message("opendkim -t: rsa-sha256 pass, ed25519-sha256 pass\n");
	free(od);
	buf_free(&h);
	free(msg);
}

/* A verifier that accepts everything proves nothing: change the body,
 * add a From (oversigned) or change the Subject after signing. */
static void test_modified_after_signing_fails(void **state)
{
	struct fixture *f = *state;
	char path[600], res[64];
	char *msg = message("From: alice@example.org", "Pay 100 EUR to account 1.\r\n");
	struct buf h = BUF_INIT, all = BUF_INIT;
	char *report, *od, *p;
	struct {
		const char *what, *from, *to;
	} edits[] = {
		{ "body", "Pay 100 EUR", "Pay 900 EUR" },
		{ "subject", "Subject: DKIM test", "Subject: DKIM tesT" },
		{ "added From", "To: Bob", "From: mallory@example.org\r\nTo: Bob" },
	};

	assert_int_equal(sign_to_file(f, msg, NULL, &h), 2);
	for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
		buf_reset(&all);
		buf_append(&all, h.data, h.len);
		p = strstr(msg, edits[i].from);
		assert_non_null(p);
		buf_append(&all, msg, (size_t)(p - msg));
		buf_puts(&all, edits[i].to);
		buf_puts(&all, p + strlen(edits[i].from));
		snprintf(path, sizeof path, "%s/modified-%zu.eml", f->dir, i);
		tu_write_bytes(path, all.data, all.len);

		if (py_verify(f, path, &report) != 1)
			fail_msg("%s changed, python3-dkim still passes: %s", edits[i].what, report);
		assert_string_equal(py_result(report, "rsa1"), "fail");
		assert_string_equal(py_result(report, "ed1"), "fail");
		free(report);
		od = od_verify(f, path);
		if (strcmp(od_result(od, "rsa1", res, sizeof res), "fail") != 0 ||
		    strcmp(od_result(od, "ed1", res, sizeof res), "fail") != 0)
			fail_msg("%s changed, opendkim says: %s", edits[i].what, od);
		free(od);
	}
	buf_free(&all);
	buf_free(&h);
	free(msg);
}

static void test_not_our_domain(void **state)
{
	struct fixture *f = *state;
	struct buf h = BUF_INIT;
	char why[256];
	const char *froms[] = {
		"From: bob@example.net",
		"From: alice@sub.example.org",          /* a subdomain needs its own key */
		"From: alice@example.org.evil.test",
		"From: \"alice@example.org\" <mallory@evil.test>",
		"From: mallory@evil.test, alice@example.org",  /* first address decides */
		"Sender: alice@example.org",            /* no From at all */
		"From: undisclosed-senders:;",
		"From: <>",
	};

	buf_puts(&h, "kept");
	for (size_t i = 0; i < sizeof froms / sizeof froms[0]; i++) {
		char *msg = message(froms[i], "body\r\n");
		why[0] = '\0';
		if (dkim_sign_message(f->signer, msg, strlen(msg), &h, why, sizeof why) != 0)
			fail_msg("\"%s\" was signed", froms[i]);
		assert_string_equal(buf_cstr(&h), "kept");
		assert_true(why[0] != '\0');
		free(msg);
	}
	/* the reason names the domain */
	{
		char *msg = message("From: bob@Example.NET", "body\r\n");
		assert_int_equal(dkim_sign_message(f->signer, msg, strlen(msg), &h, why, sizeof why), 0);
		assert_non_null(strstr(why, "example.net"));
		free(msg);
	}
	/* a message of only a header, and an empty one */
	assert_int_equal(dkim_sign_message(f->signer, "", 0, &h, why, sizeof why), 0);
	assert_int_equal(dkim_sign_message(f->signer, "To: x@y\r\n", 9, &h, why, sizeof why), 0);
	assert_string_equal(why, "no From field");
	buf_free(&h);
}

static void expect_from(const char *field, const char *domain)
{
	char *msg = message(field, "b\r\n");
	char out[300], why[256] = "";

	if (!dkim_from_domain(msg, strlen(msg), out, sizeof out, why, sizeof why))
		fail_msg("%s: no domain: %s", field, why);
	if (strcmp(out, domain) != 0)
		fail_msg("%s: got \"%s\", want \"%s\"", field, out, domain);
	free(msg);
}

static void expect_no_from(const char *field)
{
	char *msg = message(field, "b\r\n");
	char out[300] = "x", why[256] = "";

	if (dkim_from_domain(msg, strlen(msg), out, sizeof out, why, sizeof why))
		fail_msg("%s: got domain \"%s\"", field, out);
	assert_true(why[0] != '\0');
	free(msg);
}

static void test_from_parsing(void **state)
{
	(void)state;
	expect_from("From: alice@example.org", "example.org");
	expect_from("From: Alice Example <alice@Example.ORG>", "example.org");
	expect_from("From: \"Example, Alice\" <alice@example.org>", "example.org");
	expect_from("From: \"alice@evil.test\" <alice@example.org>", "example.org");
	expect_from("From: \"john doe\"@example.org", "example.org");
	expect_from("From: \"john \\\"q\\\" doe\"@example.org (John)", "example.org");
	expect_from("From: <\"odd@local\"@example.org>", "example.org");
	expect_from("From: alice@example.org (Alice (the (first)) one)", "example.org");
	expect_from("From: (comment <x@evil.test>) alice@example.org", "example.org");
	expect_from("From: =?utf-8?q?Al=C3=AFce?= <alice@example.org>", "example.org");
	expect_from("From:\r\n\tAlice\r\n <alice@\r\n example.org>", "example.org");
	expect_from("FROM :alice@EXAMPLE.org.", "example.org");
	expect_from("from: alice@example.org, bob@example.com", "example.org");
	expect_from("From: Team: alice@example.org, bob@example.com;", "example.org");
	expect_from("From: <@relay.test,@r2.test:alice@example.org>", "example.org");
	expect_from("From: alice@evil.test <alice@example.org>", "example.org");
	expect_from("From: alice@[192.0.2.1]", "[192.0.2.1]");
	expect_no_from("From: alice");
	expect_no_from("From: <alice@");
	expect_no_from("From: \"unterminated <alice@example.org>");
	expect_no_from("From: (unterminated alice@example.org");
	expect_no_from("X-From: alice@example.org");

	/* only the header counts, and the first From field */
	{
		const char *m = "Subject: x\r\nFrom: a@one.test\r\nFrom: b@two.test\r\n\r\nFrom: c@body.test\r\n";
		char out[64], why[64];
		assert_true(dkim_from_domain(m, strlen(m), out, sizeof out, why, sizeof why));
		assert_string_equal(out, "one.test");
		m = "Subject: x\r\n\r\nFrom: c@body.test\r\n";
		assert_false(dkim_from_domain(m, strlen(m), out, sizeof out, why, sizeof why));
	}
	/* bounded: a huge From is refused, not overrun */
	{
		struct buf b = BUF_INIT;
		char out[64], why[128];
		buf_puts(&b, "From: ");
		for (int i = 0; i < 3000; i++)
			buf_puts(&b, "(c) ");
		buf_puts(&b, "a@example.org\r\n\r\nx\r\n");
		assert_false(dkim_from_domain(b.data, b.len, out, sizeof out, why, sizeof why));
		assert_non_null(strstr(why, "longer than"));
		buf_free(&b);
	}
	/* not NUL-terminated input is read within len only */
	{
		char m[] = "From: a@example.orgXXXX";
		char out[64], why[64];
		assert_true(dkim_from_domain(m, 19, out, sizeof out, why, sizeof why));
		assert_string_equal(out, "example.org");
	}
}

/* Display name, quoted local part, folded From, mixed-case domain: signed
 * for the right domain and still verifiable. */
static void test_sign_unusual_from(void **state)
{
	struct fixture *f = *state;
	char path[600], res[64];
	const char *froms[] = {
		"From: \"Smith, John\" <\"john smith\"@EXAMPLE.com>",
		"From: John Smith\r\n <john@Example.Com>\r\n\t(work)",
	};

	for (size_t i = 0; i < 2; i++) {
		char *msg = message(froms[i], "x\r\n");
		struct buf h = BUF_INIT;
		char *report, *od;
		snprintf(path, sizeof path, "%s/unusual-%zu.eml", f->dir, i);
		char *sq;
		assert_int_equal(sign_to_file(f, msg, path, &h), 1);
		sq = squeeze(h.data);
		assert_non_null(strstr(sq, ";d=example.com;s=solo;"));
		free(sq);
		assert_int_equal(py_verify(f, path, &report), 0);
		assert_string_equal(py_result(report, "solo"), "pass");
		free(report);
		od = od_verify(f, path);
		assert_string_equal(od_result(od, "solo", res, sizeof res), "pass");
		free(od);
		buf_free(&h);
		free(msg);
	}
}

static void test_has_domain(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(dkim_signer_key_count(f->signer), 5);
	assert_true(dkim_signer_has_domain(f->signer, "example.org"));
	assert_true(dkim_signer_has_domain(f->signer, "EXAMPLE.Org"));
	assert_true(dkim_signer_has_domain(f->signer, "example.org."));
	assert_true(dkim_signer_has_domain(f->signer, "example.com"));
	assert_false(dkim_signer_has_domain(f->signer, "sub.example.org"));
	assert_false(dkim_signer_has_domain(f->signer, "example"));
	assert_false(dkim_signer_has_domain(f->signer, ""));
	assert_false(dkim_signer_has_domain(f->signer, NULL));
	assert_false(dkim_signer_has_domain(NULL, "example.org"));
}

/* An error leaves the caller's buffer as it was. */
static void test_error_leaves_output(void **state)
{
	struct fixture *f = *state;
	char *msg = message("From: alice@example.org", "x\r\n");
	struct buf h = BUF_INIT;
	char why[256] = "";

	buf_set_limit(&h, 800);         /* room for one signature, not two */
	buf_puts(&h, "Received: before\r\n");
	assert_int_equal(dkim_sign_message(f->signer, msg, strlen(msg), &h, why, sizeof why), -1);
	assert_non_null(strstr(why, "does not fit"));
	assert_string_equal(buf_cstr(&h), "Received: before\r\n");
	assert_false(h.overflow);
	buf_free(&h);
	free(msg);
}

/* ---- key table errors -------------------------------------------------- */

static void expect_table_error(struct fixture *f, const char *content, const char *where,
			       const char *what)
{
	char path[600], why[1024] = "";
	struct dkim_signer *s;

	snprintf(path, sizeof path, "%s/bad-table", f->dir);
	tu_write_bytes(path, content, strlen(content));
	s = dkim_signer_new(path, why, sizeof why);
	if (s) {
		dkim_signer_free(s);
		fail_msg("accepted: %s", content);
	}
	if (!strstr(why, where) || !strstr(why, what))
		fail_msg("table \"%s\": why \"%s\" lacks \"%s\" or \"%s\"", content, why, where, what);
}

static void test_keytable_errors(void **state)
{
	struct fixture *f = *state;
	char rsa[600], ed[600], t[2048], garbage[600], dir[600], why[256];

	key_file(f, "example.org", "rsa1", rsa, sizeof rsa);
	key_file(f, "example.org", "ed1", ed, sizeof ed);
	snprintf(garbage, sizeof garbage, "%s/garbage.key", f->dir);
	{
		const char *g = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";
		tu_write_bytes(garbage, g, strlen(g));
	}
	snprintf(dir, sizeof dir, "%s/a-directory.key", f->dir);
	mkdir(dir, 0700);

	snprintf(t, sizeof t, "# ok\nexample.org s1 rsa-sha256 %s\nexample.org s2 rsa-sha1 %s\n", rsa, rsa);
	expect_table_error(f, t, "bad-table:3:", "unknown algorithm \"rsa-sha1\": expected rsa-sha256 or ed25519-sha256");
	snprintf(t, sizeof t, "example.org s1 rsa-sha256 %s/missing.key\n", f->dir);
	expect_table_error(f, t, "bad-table:1:", "missing.key: cannot open: No such file or directory");
	snprintf(t, sizeof t, "\n\nexample.org s1 ed25519-sha256 %s\n", garbage);
	expect_table_error(f, t, "bad-table:3:", "not an unencrypted private key");
	snprintf(t, sizeof t, "example.org s1 rsa-sha256 %s\n", dir);
	expect_table_error(f, t, "bad-table:1:", "not a regular file");
	snprintf(t, sizeof t, "example.org s1 rsa-sha256 %s\n", ed);
	expect_table_error(f, t, "bad-table:1:", "rsa-sha256 needs an RSA key");
	snprintf(t, sizeof t, "example.org s1 ed25519-sha256 %s\n", rsa);
	expect_table_error(f, t, "bad-table:1:", "ed25519-sha256 needs an ED25519 key");
	if (geteuid() != 0) {   /* root reads mode 000 files anyway */
		char locked[600];
		snprintf(locked, sizeof locked, "%s/locked.key", f->dir);
		tu_write_bytes(locked, "x", 1);
		chmod(locked, 0);
		snprintf(t, sizeof t, "example.org s1 rsa-sha256 %s\n", locked);
		expect_table_error(f, t, "bad-table:1:", "Permission denied");
	}
	snprintf(t, sizeof t, "example.org s1 rsa-sha256\n");
	expect_table_error(f, t, "bad-table:1:", "expected DOMAIN SELECTOR ALGORITHM KEYFILE");
	snprintf(t, sizeof t, "example.org s1 rsa-sha256 %s extra\n", rsa);
	expect_table_error(f, t, "bad-table:1:", "expected DOMAIN SELECTOR ALGORITHM KEYFILE");
	snprintf(t, sizeof t, "exa_mple.org s1 rsa-sha256 %s\n", rsa);
	expect_table_error(f, t, "bad-table:1:", "not a domain name");
	snprintf(t, sizeof t, "example.org s/1 rsa-sha256 %s\n", rsa);
	expect_table_error(f, t, "bad-table:1:", "not a selector");
	snprintf(t, sizeof t, "example.org s1 rsa-sha256 %s\nEXAMPLE.org S1 ed25519-sha256 %s\n", rsa, ed);
	expect_table_error(f, t, "bad-table:2:", "already at line 1");
	expect_table_error(f, "# nothing\n\n", "bad-table", "no keys");
	{
		char *longline = xmalloc(5000);
		memset(longline, 'a', 4999);
		longline[4999] = '\0';
		expect_table_error(f, longline, "bad-table:1:", "longer than");
		free(longline);
	}
	/* a missing table */
	snprintf(t, sizeof t, "%s/no-such-table", f->dir);
	assert_null(dkim_signer_new(t, why, sizeof why));
	assert_non_null(strstr(why, "no-such-table: cannot read"));
}

/* A PKCS#1 ("RSA PRIVATE KEY", what opendkim-genkey writes) or DER key
 * file is accepted as well as keygen's PKCS#8. */
static void test_keytable_key_formats(void **state)
{
	struct fixture *f = *state;
	char rsa[600], p1[600], der[600], t[2048], why[512];
	char *pem = NULL;
	EVP_PKEY *pk;
	BIO *b;
	FILE *o;
	struct dkim_signer *s;
	struct buf h = BUF_INIT;
	char *msg = message("From: a@example.org", "x\r\n");
	char path[600], *report;

	key_file(f, "example.org", "rsa1", rsa, sizeof rsa);
	pem = tu_read_file(rsa, NULL);
	b = BIO_new_mem_buf(pem, -1);
	pk = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	assert_non_null(pk);
	snprintf(p1, sizeof p1, "%s/pkcs1.key", f->dir);
	{
		BIO *ob = BIO_new_file(p1, "w");
		assert_non_null(ob);
		assert_int_equal(PEM_write_bio_PrivateKey_traditional(ob, pk, NULL, NULL, 0, NULL, NULL), 1);
		BIO_free(ob);
	}
	snprintf(der, sizeof der, "%s/key.der", f->dir);
	o = fopen(der, "w");
	assert_int_equal(i2d_PrivateKey_fp(o, pk), 1);
	fclose(o);
	snprintf(t, sizeof t, "%s/formats-table", f->dir);
	o = fopen(t, "w");
	fprintf(o, "example.org rsa1 rsa-sha256 %s\nexample.org rsa1b rsa-sha256 %s\n", p1, der);
	fclose(o);
	s = dkim_signer_new(t, why, sizeof why);
	if (!s)
		fail_msg("%s", why);
	assert_int_equal(dkim_sign_message(s, msg, strlen(msg), &h, why, sizeof why), 2);
	snprintf(path, sizeof path, "%s/formats.eml", f->dir);
	buf_puts(&h, msg);
	tu_write_bytes(path, h.data, h.len);
	/* rsa1b has no DNS record; rsa1 is the same key as published */
	py_verify(f, path, &report);
	assert_string_equal(py_result(report, "rsa1"), "pass");
	free(report);
	dkim_signer_free(s);
	buf_free(&h);
	free(msg);
	EVP_PKEY_free(pk);
	BIO_free(b);
	free(pem);
}

/* ---- cost -------------------------------------------------------------- */

static void bench(struct fixture *f, const char *domain, const char *label)
{
	char *from = xasprintf("From: Alice <alice@%s>", domain);
	struct buf body = BUF_INIT, h = BUF_INIT;
	char *msg, why[256];
	double t0, us;

	while (body.len < 4096 - 300)
		buf_puts(&body, "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n");
	msg = message(from, buf_cstr(&body));
	assert_true(strlen(msg) >= 4000 && strlen(msg) <= 4200);
	unsigned long reused = dkim_signer_key_reuses(f->signer);

	t0 = cpu_now();
	for (int i = 0; i < BENCH_N; i++) {
		buf_reset(&h);
		if (dkim_sign_message(f->signer, msg, strlen(msg), &h, why, sizeof why) != 1)
			fail_msg("%s: %s", label, why);
	}
	us = (cpu_now() - t0) / BENCH_N * 1e6;
	assert_int_equal(dkim_signer_key_reuses(f->signer) - reused, BENCH_N);
	print_message("DKIM signing cost, %s, %zu-byte message: %.0f us CPU per signature (%d signatures)%s\n",
		      label, strlen(msg), us, BENCH_N, BENCH_NOTE);
	buf_free(&h);
	buf_free(&body);
	free(msg);
	free(from);
}

static void test_signing_cost(void **state)
{
	struct fixture *f = *state;

	bench(f, "rsa.example", "rsa-sha256 2048-bit");
	bench(f, "ed.example", "ed25519-sha256");
}

/* libopendkim 2.11 leaks part of every ed25519 signature; dkim_sign.c
 * makes up for it.  The heap in use must not grow with the number of
 * signatures (LeakSanitizer checks the same under the sanitizers). */
static void test_no_growth(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
	(void)state;
	skip();
#else
	struct fixture *f = *state;
	char *msg = message("From: <alice@ed.example>", "Hello.\r\n");
	struct buf h = BUF_INIT;
	char why[256];
	size_t before = 0;

	for (int i = 0; i < 3000; i++) {
		if (i == 1000)
			before = mallinfo2().uordblks;
		buf_reset(&h);
		if (dkim_sign_message(f->signer, msg, strlen(msg), &h, why, sizeof why) != 1)
			fail_msg("%s", why);
	}
	print_message("heap after 2000 more ed25519 signatures: %+ld bytes\n",
		      (long)mallinfo2().uordblks - (long)before);
	assert_true(mallinfo2().uordblks < before + 4096);
	buf_free(&h);
	free(msg);
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keygen_files),
		cmocka_unit_test(test_keygen_zone_output),
		cmocka_unit_test(test_keygen_ed25519_record),
		cmocka_unit_test(test_keygen_refuses_overwrite),
		cmocka_unit_test(test_keygen_usage),
		cmocka_unit_test(test_dual_sign_verifies),
		cmocka_unit_test(test_modified_after_signing_fails),
		cmocka_unit_test(test_not_our_domain),
		cmocka_unit_test(test_from_parsing),
		cmocka_unit_test(test_sign_unusual_from),
		cmocka_unit_test(test_has_domain),
		cmocka_unit_test(test_error_leaves_output),
		cmocka_unit_test(test_keytable_errors),
		cmocka_unit_test(test_keytable_key_formats),
		cmocka_unit_test(test_signing_cost),
		cmocka_unit_test(test_no_growth),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
