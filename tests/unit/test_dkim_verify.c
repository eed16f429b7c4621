/*
 * test_dkim_verify.c — unit tests of the dkim check
 * (shared/checks/dkim_verify.c) run through the chain, with keys made by
 * the key generator (tools/dkim_keygen), messages signed by our signer
 * (shared/mail/dkim_sign) or, for what it never writes (l=, x=,
 * rsa-sha1), by libopendkim directly, and the public keys in a
 * dns_local_data file (local_only): pass for rsa-sha256 and
 * ed25519-sha256, dual signatures, fail after tampering, none when
 * unsigned, permerror for a missing, broken, revoked, doubled or too small
 * key, an expired signature and rsa-sha1, neutral for a malformed
 * signature, temperror when the DNS does not answer (a forwarder that
 * never replies; the event loop keeps running meanwhile), l= bodies and
 * the max_body bound, the max_signatures bound, reject_fail, ctx->auth,
 * the metric, and the Authentication-Results header: its exact syntax,
 * and parsed by python3-authres (/usr/bin/python3, Debian's
 * python3-authres; RAMPART_TEST_PYTHON overrides).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil_checks.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <malloc.h>

#include <event2/event.h>
#include <opendkim/dkim.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "checks/dkim_verify.h"
#include "mail/dkim_sign.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/dns.h"
#include "util/log.h"
#include "util/metrics.h"
#include "../../tools/dkim_keygen.h"

/* libopendkim 2.11 keeps a reference to the key of each ed25519 signature
 * our signer makes (see testutil.h and dkim_sign.c). */
TU_LSAN_ALLOW_ED25519_KEY_LEAK()

struct fx {
	char dir[256];
	char zone[512];
	char keys[512];                 /* "NAME TXT-DATA" lines from keygen */
	char table[512];
	char logpath[512];
	char python[512];
	int logfd;
	struct tu_chain_fx c;           /* its DNS server that never answers: the slow resolver's */
	struct dkim_signer *signer;
	struct check_ctx ctx;
	struct env_client client;
	char *msg;                      /* the message of the last run */
	int ticks;
};

/* ---- helpers ------------------------------------------------------------- */

static void append(const char *path, const char *text)
{
	FILE *fp = fopen(path, "a");
	assert_non_null(fp);
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
}

static void assert_lacks(const char *hay, const char *needle)
{
	if (hay && strstr(hay, needle))
		fail_msg("'%s' has '%s'", hay, needle);
}

/* keygen --txt-only: the "NAME TXT-DATA" line it prints, in *txt (freed by caller). */
static char *make_key(struct fx *f, const char *domain, const char *sel, const char *kind)
{
	char *argv[12];
	int argc = 0;
	char *out = NULL, *err = NULL;
	size_t olen = 0, elen = 0;
	FILE *of = open_memstream(&out, &olen), *ef = open_memstream(&err, &elen);
	argv[argc++] = "keygen";
	argv[argc++] = (char *)domain;
	argv[argc++] = (char *)sel;
	if (strcmp(kind, "ed25519") == 0) {
		argv[argc++] = "--ed25519";
	} else if (strcmp(kind, "rsa1024") == 0) {
		argv[argc++] = "--bits";
		argv[argc++] = "1024";
	}
	argv[argc++] = "--dir";
	argv[argc++] = f->dir;
	argv[argc++] = "--txt-only";
	argv[argc] = NULL;
	int rc = dkim_keygen_run(argc, argv, of, ef);
	fclose(of);
	fclose(ef);
	if (rc != 0)
		fail_msg("keygen %s %s: %d: %s", domain, sel, rc, err);
	free(err);
	char *nl = strchr(out, '\n');
	if (nl)
		*nl = '\0';
	return out;
}

/* A zone line for NAME with TXT data txt, cut into strings of 200. */
static void publish(struct fx *f, const char *name, const char *txt)
{
	struct buf b = BUF_INIT;
	buf_printf(&b, "%s. 300 IN TXT", name);
	size_t n = strlen(txt);
	if (n == 0)
		buf_puts(&b, " \"\"");
	for (size_t i = 0; i < n; i += 200)
		buf_printf(&b, " \"%.*s\"", (int)(n - i < 200 ? n - i : 200), txt + i);
	buf_puts(&b, "\n");
	append(f->zone, buf_cstr(&b));
	buf_free(&b);
}

/* The TXT data of keygen's line, published under another name too. */
static const char *txt_of(const char *line)
{
	const char *sp = strchr(line, ' ');
	assert_non_null(sp);
	return sp + 1;
}

static void use_dns(struct fx *f, bool slow)
{
	tu_chain_fx_dns(&f->c, f->zone, slow, 5000);
}

static int group_setup(void **state)
{
	struct fx *f = xcalloc(1, sizeof(*f));
	const char *py = getenv("RAMPART_TEST_PYTHON");
	char why[512];
	if (tu_mkdtemp(f->dir, sizeof(f->dir), "dkimv") != 0)
		return -1;
	snprintf(f->python, sizeof(f->python), "%s", py ? py : "/usr/bin/python3");
	snprintf(f->zone, sizeof(f->zone), "%s/zone", f->dir);
	snprintf(f->table, sizeof(f->table), "%s/keytable", f->dir);
	snprintf(f->logpath, sizeof(f->logpath), "%s/log", f->dir);
	f->logfd = tu_log_open(f->logpath);
	if (f->logfd < 0)
		return -1;
	tu_write_file(f->zone, "# DKIM keys of the tests\n");

	/* the keys; other domains reuse them */
	char *rsa = make_key(f, "rsa.example", "rsa1", "rsa");
	char *ed = make_key(f, "ed.example", "ed1", "ed25519");
	char *small = make_key(f, "small.example", "small", "rsa1024");
	char *nokey = make_key(f, "nokey.example", "s1", "rsa");
	publish(f, "rsa1._domainkey.rsa.example", txt_of(rsa));
	publish(f, "ed1._domainkey.ed.example", txt_of(ed));
	publish(f, "rsa1._domainkey.dual.example", txt_of(rsa));
	publish(f, "ed1._domainkey.dual.example", txt_of(ed));
	publish(f, "small._domainkey.small.example", txt_of(small));
	publish(f, "s1._domainkey.badkey.example", "v=DKIM1; k=rsa; p=AAAAB3NzaC1yc2EAAAADAQABAAABAQC");
	publish(f, "s1._domainkey.revoked.example", "v=DKIM1; k=rsa; p=");
	publish(f, "s1._domainkey.twice.example", txt_of(rsa));
	publish(f, "s1._domainkey.twice.example", "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQ");
	append(f->zone, "www._domainkey.nokey.example. 300 IN A 192.0.2.80\n");
	/* nokey.example and dead.example publish nothing: dead's lookups
	 * go to the trap when the slow resolver is in use */
	free(rsa);
	free(ed);
	free(small);
	free(nokey);
	char tab[4096];
	snprintf(tab, sizeof(tab),
		 "rsa.example     rsa1  rsa-sha256      rsa1._domainkey.rsa.example.key\n"
		 "ed.example      ed1   ed25519-sha256  ed1._domainkey.ed.example.key\n"
		 "dual.example    rsa1  rsa-sha256      rsa1._domainkey.rsa.example.key\n"
		 "dual.example    ed1   ed25519-sha256  ed1._domainkey.ed.example.key\n"
		 "small.example   small rsa-sha256      small._domainkey.small.example.key\n"
		 "nokey.example   s1    rsa-sha256      s1._domainkey.nokey.example.key\n"
		 "badkey.example  s1    rsa-sha256      rsa1._domainkey.rsa.example.key\n"
		 "revoked.example s1    rsa-sha256      rsa1._domainkey.rsa.example.key\n"
		 "twice.example   s1    rsa-sha256      rsa1._domainkey.rsa.example.key\n"
		 "dead.example    s1    rsa-sha256      rsa1._domainkey.rsa.example.key\n"
		 "mixed.example   rsa1  rsa-sha256      rsa1._domainkey.rsa.example.key\n"
		 "mixed.example   s1    rsa-sha256      rsa1._domainkey.rsa.example.key\n");
	tu_write_file(f->table, tab);
	/* mixed.example: rsa1 is published, s1 is not */
	char *line = tu_read_file(f->zone, NULL);
	char *p = strstr(line, "rsa1._domainkey.rsa.example. 300 IN TXT ");
	assert_non_null(p);
	char *e = strchr(p, '\n');
	append(f->zone, "rsa1._domainkey.mixed.example");
	*e = '\0';
	append(f->zone, p + strlen("rsa1._domainkey.rsa.example"));
	append(f->zone, "\n");
	free(line);
	f->signer = dkim_signer_new(f->table, why, sizeof(why));
	if (!f->signer) {
		fprintf(stderr, "dkim_signer_new: %s\n", why);
		return -1;
	}

	if (!tu_chain_fx_init(&f->c, true))
		return -1;
	use_dns(f, false);
	f->client.addr = "192.0.2.7";
	f->ctx.sid = "S1";
	f->ctx.qid = "Q1";
	f->ctx.client = &f->client;
	f->ctx.helo = "client.example";
	f->ctx.declared_size = -1;
	*state = f;
	return 0;
}

static int group_teardown(void **state)
{
	struct fx *f = *state;
	tu_chain_fx_free(&f->c, &f->ctx);
	free(f->msg);
	dkim_signer_free(f->signer);
	tu_log_close(f->logfd);
	tu_rmtree_unless_kept(f->dir);
	free(f);
	return 0;
}

static struct chain *build(struct fx *f, const char *conf, char *why, size_t whylen)
{
	tu_config_set(&f->c.cfg, conf);
	return tu_chain_new(f->c.cfg, "dkim", &f->c.env, why, whylen);
}

static void use_chain(struct fx *f, const char *conf)
{
	tu_chain_use(&f->c, conf, "dkim");
}

/* End of message for msg (taken): run the MESSAGE phase to its answer. */
static struct verdict run_msg(struct fx *f, char *msg)
{
	free(f->msg);
	f->msg = msg;
	f->ctx.data = msg;
	f->ctx.len = strlen(msg);
	f->ctx.header_bytes = 0;
	check_ctx_clear_headers(&f->ctx);
	return tu_chain_verdict(f->c.chain, PHASE_MESSAGE, &f->ctx, f->c.base);
}

static const char *header(struct fx *f, const char *name)
{
	return tu_added_header(&f->ctx, name);
}

/* A complete CRLF message from FROM_DOMAIN. */
static char *message(const char *from_domain, const char *subject, const char *body)
{
	return xasprintf("From: Alice <alice@%s>\r\n"
			 "To: Bob <bob@example.test>\r\n"
			 "Subject: %s\r\n"
			 "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
			 "Message-ID: <%s.%s@example.test>\r\n"
			 "MIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n"
			 "\r\n"
			 "%s", from_domain, subject, subject, from_domain, body);
}

/* msg signed by our signer (every key of its From domain), signatures
 * in front; msg is freed. */
static char *signed_msg(struct fx *f, char *msg)
{
	struct buf h = BUF_INIT;
	char why[512];
	int n = dkim_sign_message(f->signer, msg, strlen(msg), &h, why, sizeof(why));
	if (n <= 0)
		fail_msg("dkim_sign_message: %d: %s", n, why);
	buf_puts(&h, msg);
	free(msg);
	return buf_steal(&h, NULL);
}

/* msg signed by libopendkim directly with the RSA key of rsa.example as
 * DOMAIN/SELECTOR: the algorithm, l= (SIGNLEN), a signing time and an
 * expiry the signer never writes; msg is freed. */
static char *raw_signed(struct fx *f, char *msg, const char *domain, const char *sel, dkim_alg_t alg,
			bool len_tag, uint64_t when, uint64_t ttl)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/rsa1._domainkey.rsa.example.key", f->dir);
	char *pem = tu_read_file(path, NULL);
	assert_non_null(pem);
	DKIM_LIB *lib = dkim_init(NULL, NULL);
	assert_non_null(lib);
	unsigned int flags = len_tag ? DKIM_LIBFLAGS_SIGNLEN : DKIM_LIBFLAGS_NONE;
	assert_int_equal(dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags)), DKIM_STAT_OK);
	if (when)
		assert_int_equal(dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FIXEDTIME, &when, sizeof(when)),
				 DKIM_STAT_OK);
	if (ttl)
		assert_int_equal(dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNATURETTL, &ttl, sizeof(ttl)),
				 DKIM_STAT_OK);
	DKIM_STAT st;
	DKIM *d = dkim_sign(lib, (const unsigned char *)"t", NULL, (unsigned char *)pem, (const unsigned char *)sel,
			    (const unsigned char *)domain, DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, alg, -1, &st);
	if (!d)
		fail_msg("dkim_sign: %s", dkim_getresultstr(st));
	assert_int_equal(dkim_chunk(d, (unsigned char *)msg, strlen(msg)), DKIM_STAT_OK);
	assert_int_equal(dkim_chunk(d, NULL, 0), DKIM_STAT_OK);
	st = dkim_eom(d, NULL);
	if (st != DKIM_STAT_OK)
		fail_msg("dkim_eom: %s: %s", dkim_getresultstr(st), dkim_geterror(d));
	unsigned char *hdr = NULL;
	size_t hlen = 0;
	assert_int_equal(dkim_getsighdr_d(d, strlen("DKIM-Signature: "), &hdr, &hlen), DKIM_STAT_OK);
	char *out = xasprintf("DKIM-Signature: %.*s\r\n%s", (int)hlen, hdr, msg);
	dkim_free(d);
	dkim_close(lib);
	free(pem);
	free(msg);
	return out;
}

/* In s (which is freed), the first occurrence of from replaced by to. */
static char *replace(char *s, const char *from, const char *to)
{
	char *p = strstr(s, from);
	if (!p)
		fail_msg("'%s' not in the message", from);
	char *o = xasprintf("%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
	free(s);
	return o;
}

/* The value of the first signature's b= tag. */
static char *b_value(char *m)
{
	for (char *p = strstr(m, "b="); p; p = strstr(p + 1, "b="))
		if (p > m && strchr(" \t;", p[-1]))
			return p + 2;
	fail_msg("no b= in %s", m);
	return NULL;
}

static void assert_sig(struct fx *f, unsigned i, enum auth_dkim r, const char *domain, const char *sel,
		       const char *reason_part)
{
	if (i >= f->ctx.auth.ndkim)
		fail_msg("signature %u of %u", i, f->ctx.auth.ndkim);
	const struct auth_dkim_sig *s = &f->ctx.auth.dkim_sigs[i];
	if (s->result != r)
		fail_msg("signature %u (d=%s s=%s): %s (%s), expected %s", i, s->domain, s->selector,
			 dkim_result_name(s->result), s->reason, dkim_result_name(r));
	assert_string_equal(s->domain, domain);
	assert_string_equal(s->selector, sel);
	if (reason_part)
		tu_assert_contains(s->reason, reason_part);
	else
		assert_string_equal(s->reason, "");
}

static char *metrics_text(struct fx *f)
{
	struct buf b = BUF_INIT;
	metrics_render(f->c.metrics, &b);
	return buf_steal(&b, NULL);
}

/* Run argv with stdout and stderr into *out; its exit status. */
static int run_prog(struct fx *f, char *const argv[], char **out)
{
	char outpath[600];
	snprintf(outpath, sizeof(outpath), "%s/prog.out", f->dir);
	int rc = tu_run_prog(outpath, argv);
	*out = tu_read_file(outpath, NULL);
	unlink(outpath);
	assert_non_null(*out);
	return rc;
}

/* python3-authres's reading of "Authentication-Results: value": one line
 * "id AUTHSERV-ID", then "METHOD=RESULT reason=REASON TYPE.NAME=VALUE ..."
 * per result. */
static char *authres_parse(struct fx *f, const char *value)
{
	static const char script[] =
		"import sys\n"
		"import authres\n"
		"h = authres.AuthenticationResultsHeader.parse(open(sys.argv[1]).read())\n"
		"print('id %s' % h.authserv_id)\n"
		"for r in h.results:\n"
		"    props = ' '.join('%s.%s=%s' % (p.type, p.name, p.value) for p in r.properties)\n"
		"    print('%s=%s reason=%s %s' % (r.method, r.result, r.reason or '', props))\n";
	char path[600], spath[600];
	snprintf(path, sizeof(path), "%s/ar.txt", f->dir);
	snprintf(spath, sizeof(spath), "%s/ar.py", f->dir);
	char *text = xasprintf("Authentication-Results: %s\r\n", value);
	tu_write_file(path, text);
	tu_write_file(spath, script);
	free(text);
	char *argv[] = { f->python, spath, path, NULL };
	char *out = NULL;
	int rc = run_prog(f, argv, &out);
	if (rc != 0)
		fail_msg("python3-authres could not parse \"%s\" (%d): %s (install python3-authres)", value, rc, out);
	return out;
}

/* ---- results ------------------------------------------------------------- */

static void test_pass_rsa_and_ed25519(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	struct verdict v = run_msg(f, signed_msg(f, message("rsa.example", "rsa", "Hello.\r\n")));
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	assert_int_equal(f->ctx.auth.ndkim, 1);
	assert_sig(f, 0, AUTH_DKIM_PASS, "rsa.example", "rsa1", NULL);
	assert_string_equal(f->ctx.auth.dkim_sigs[0].algorithm, "rsa-sha256");
	/* header.b: the first 8 characters of b= */
	const char *b = b_value(f->msg);
	char first8[9];
	size_t k = 0;
	for (; *b && k < 8; b++)
		if (!strchr(" \t\r\n", *b))
			first8[k++] = *b;
	first8[k] = '\0';
	assert_string_equal(f->ctx.auth.dkim_sigs[0].b, first8);
	tu_assert_contains(header(f, "Authentication-Results"), "dkim=pass (2048-bit key) header.d=rsa.example header.s=rsa1 "
			"header.a=rsa-sha256 header.b=");

	v = run_msg(f, signed_msg(f, message("ed.example", "ed", "Hello.\r\n")));
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	assert_int_equal(f->ctx.auth.ndkim, 1);
	assert_sig(f, 0, AUTH_DKIM_PASS, "ed.example", "ed1", NULL);
	assert_string_equal(f->ctx.auth.dkim_sigs[0].algorithm, "ed25519-sha256");
	tu_assert_contains(header(f, "Authentication-Results"), "header.d=ed.example header.s=ed1 header.a=ed25519-sha256");

	/* an empty body */
	run_msg(f, signed_msg(f, message("ed.example", "empty", "")));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
}

static void test_dual_signed(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	run_msg(f, signed_msg(f, message("dual.example", "dual", "Two signatures.\r\n")));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	assert_int_equal(f->ctx.auth.ndkim, 2);
	/* in header order: the signer puts the key table's order first */
	for (unsigned i = 0; i < 2; i++)
		assert_int_equal(f->ctx.auth.dkim_sigs[i].result, AUTH_DKIM_PASS);
	assert_true((strcmp(f->ctx.auth.dkim_sigs[0].selector, "rsa1") == 0 &&
		     strcmp(f->ctx.auth.dkim_sigs[1].selector, "ed1") == 0) ||
		    (strcmp(f->ctx.auth.dkim_sigs[0].selector, "ed1") == 0 &&
		     strcmp(f->ctx.auth.dkim_sigs[1].selector, "rsa1") == 0));
	const char *ar = header(f, "Authentication-Results");
	tu_assert_contains(ar, "header.d=dual.example header.s=rsa1 header.a=rsa-sha256");
	tu_assert_contains(ar, "header.d=dual.example header.s=ed1 header.a=ed25519-sha256");
	/* the body changed: both fail */
	run_msg(f, replace(signed_msg(f, message("dual.example", "dual2", "Two signatures.\r\n")), "Two signatures.", "Ten signatures."));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_FAIL);
	assert_sig(f, 0, AUTH_DKIM_FAIL, "dual.example", f->ctx.auth.dkim_sigs[0].selector, "body hash did not verify");
	assert_sig(f, 1, AUTH_DKIM_FAIL, "dual.example", f->ctx.auth.dkim_sigs[1].selector, "body hash did not verify");
	/* one good, one without a key: two results, pass overall */
	run_msg(f, signed_msg(f, message("mixed.example", "mixed", "Hello.\r\n")));
	assert_int_equal(f->ctx.auth.ndkim, 2);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	ar = header(f, "Authentication-Results");
	tu_assert_contains(ar, "dkim=pass (2048-bit key) header.d=mixed.example header.s=rsa1");
	tu_assert_contains(ar, "dkim=permerror reason=\"no key for signature\" header.d=mixed.example header.s=s1");
	/* signatures of two domains on one message: each its own result */
	char *m = signed_msg(f, message("rsa.example", "two-domains", "Hello.\r\n"));
	m = replace(m, "From: Alice <alice@rsa.example>", "From: Alice <alice@ed.example>");
	m = signed_msg(f, m);           /* ed.example signs the new From, rsa.example's From is gone */
	run_msg(f, m);
	assert_int_equal(f->ctx.auth.ndkim, 2);
	assert_sig(f, 0, AUTH_DKIM_PASS, "ed.example", "ed1", NULL);
	assert_sig(f, 1, AUTH_DKIM_FAIL, "rsa.example", "rsa1", "signature did not verify");
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
}

static void test_fail_after_tampering(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	/* the body */
	run_msg(f, replace(signed_msg(f, message("rsa.example", "t1", "Pay 10 EUR.\r\n")), "10 EUR", "99 EUR"));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_FAIL);
	assert_sig(f, 0, AUTH_DKIM_FAIL, "rsa.example", "rsa1", "body hash did not verify");
	tu_assert_contains(header(f, "Authentication-Results"),
			"dkim=fail reason=\"body hash did not verify\" header.d=rsa.example header.s=rsa1 "
			"header.a=rsa-sha256 header.b=");
	/* a signed header field */
	run_msg(f, replace(signed_msg(f, message("ed.example", "t2", "Hi.\r\n")), "Subject: t2", "Subject: t3"));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_FAIL);
	assert_sig(f, 0, AUTH_DKIM_FAIL, "ed.example", "ed1", "signature did not verify");
	/* the signature itself */
	char *m = signed_msg(f, message("rsa.example", "t4", "Hi.\r\n"));
	char *b = b_value(m);
	b[1] = b[1] == 'A' ? 'B' : 'A';
	run_msg(f, m);
	assert_sig(f, 0, AUTH_DKIM_FAIL, "rsa.example", "rsa1", "signature did not verify");
	/* relaxed canonicalization: whitespace changes are no tampering */
	m = signed_msg(f, message("rsa.example", "t5", "Some   text.\r\n\r\n\r\n"));
	m = replace(m, "Some   text.", "Some text.  ");
	m = replace(m, "Subject: t5", "Subject:    t5");
	run_msg(f, m);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
}

static void test_unsigned_is_none(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	char *before = metrics_text(f);
	struct verdict v = run_msg(f, message("rsa.example", "plain", "Not signed.\r\n"));
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_NONE);
	assert_int_equal(f->ctx.auth.ndkim, 0);
	assert_string_equal(header(f, "Authentication-Results"), "mx.example.test;\r\n\tdkim=none");
	/* no From, no body: still none */
	run_msg(f, xstrdup("Subject: x\r\n\r\n"));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_NONE);
	run_msg(f, xstrdup("Subject: only a header\r\n"));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_NONE);
	/* a "DKIM-Signature" in the body is not a signature */
	run_msg(f, message("rsa.example", "body", "DKIM-Signature: v=1; d=x\r\n"));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_NONE);
	char *after = metrics_text(f);
	tu_assert_contains(after, "rampart_dkim_verify_total{stage=\"mx\",instance=\"mx\",result=\"none\"}");
	free(before);
	free(after);
}

static void test_key_errors(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	struct { const char *domain, *sel, *reason; } cases[] = {
		{ "nokey.example", "s1", "no key for signature" },          /* NXDOMAIN */
		{ "badkey.example", "s1", "key syntax error" },             /* p= not a key */
		{ "revoked.example", "s1", "key revoked" },                 /* p= empty */
		{ "twice.example", "s1", "key syntax error: 2 key records" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct verdict v = run_msg(f, signed_msg(f, message(cases[i].domain, "keys", "Hi.\r\n")));
		assert_int_equal(v.kind, V_CONTINUE);
		assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PERMERROR);
		assert_sig(f, 0, AUTH_DKIM_PERMERROR, cases[i].domain, cases[i].sel, cases[i].reason);
	}
	/* NODATA: the name exists without a TXT record */
	run_msg(f, raw_signed(f, message("rsa.example", "nodata", "Hi.\r\n"), "nokey.example", "www",
			      DKIM_SIGN_RSASHA256, false, 0, 0));
	assert_sig(f, 0, AUTH_DKIM_PERMERROR, "nokey.example", "www", "no key for signature");
	/* a 1024-bit key: fine by default (RFC 8301), refused by min_key_bits */
	run_msg(f, signed_msg(f, message("small.example", "small", "Hi.\r\n")));
	assert_sig(f, 0, AUTH_DKIM_PASS, "small.example", "small", NULL);
	tu_assert_contains(header(f, "Authentication-Results"), "dkim=pass (1024-bit key)");
	use_chain(f, "[check.dkim]\nmin_key_bits = 2048\n");
	run_msg(f, signed_msg(f, message("small.example", "small2", "Hi.\r\n")));
	assert_sig(f, 0, AUTH_DKIM_PERMERROR, "small.example", "small", "inappropriate key: fewer than 2048 bits");
}

static void test_signature_errors(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	time_t now = time(NULL);
	/* x= in the past */
	run_msg(f, raw_signed(f, message("rsa.example", "old", "Hi.\r\n"), "rsa.example", "rsa1", DKIM_SIGN_RSASHA256,
			      false, (uint64_t)now - 7200, 3600));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PERMERROR);
	assert_sig(f, 0, AUTH_DKIM_PERMERROR, "rsa.example", "rsa1", "signature expired");
	tu_assert_contains(f->msg, " x=");
	/* x= in the future: fine */
	run_msg(f, raw_signed(f, message("rsa.example", "fresh", "Hi.\r\n"), "rsa.example", "rsa1",
			      DKIM_SIGN_RSASHA256, false, 0, 3600));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	/* rsa-sha1: not accepted (RFC 8301), whatever the signature says */
	run_msg(f, raw_signed(f, message("rsa.example", "sha1", "Hi.\r\n"), "rsa.example", "rsa1", DKIM_SIGN_RSASHA1,
			      false, 0, 0));
	assert_sig(f, 0, AUTH_DKIM_PERMERROR, "rsa.example", "rsa1", "rsa-sha1 is not accepted (RFC 8301)");
	assert_string_equal(f->ctx.auth.dkim_sigs[0].algorithm, "rsa-sha1");
	/* a malformed signature: no d= */
	char *m = signed_msg(f, message("rsa.example", "nod", "Hi.\r\n"));
	m = replace(m, "d=rsa.example;", "x=0;");
	run_msg(f, m);
	assert_int_equal(f->ctx.auth.ndkim, 1);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_NEUTRAL);
	assert_int_equal(f->ctx.auth.dkim_sigs[0].result, AUTH_DKIM_NEUTRAL);
	tu_assert_contains(f->ctx.auth.dkim_sigs[0].reason, "signature syntax error");
	/* a good signature beside a malformed one */
	char *inner = signed_msg(f, message("rsa.example", "twosigs", "Hi.\r\n"));
	m = xasprintf("DKIM-Signature: v=1; a=rsa-sha256; s=x; b=AAAA\r\n%s", inner);
	free(inner);
	run_msg(f, m);
	assert_int_equal(f->ctx.auth.ndkim, 2);
	assert_int_equal(f->ctx.auth.dkim_sigs[0].result, AUTH_DKIM_NEUTRAL);
	assert_sig(f, 1, AUTH_DKIM_PASS, "rsa.example", "rsa1", NULL);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	/* signed, then the From field taken away */
	m = signed_msg(f, message("rsa.example", "nofrom", "Hi.\r\n"));
	m = replace(m, "\r\nFrom: Alice <alice@rsa.example>\r\n", "\r\nX-From: Alice <alice@rsa.example>\r\n");
	run_msg(f, m);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_FAIL);
	assert_sig(f, 0, AUTH_DKIM_FAIL, "rsa.example", "rsa1", "signature did not verify");
}

static void test_body_length_and_bound(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	/* l=: text added after the signed length still passes */
	char *m = raw_signed(f, message("rsa.example", "len", "Signed part.\r\n"), "rsa.example", "rsa1",
			     DKIM_SIGN_RSASHA256, true, 0, 0);
	tu_assert_contains(m, " l=");
	char *m2 = xasprintf("%sAppended by a list.\r\n", m);
	free(m);
	run_msg(f, m2);
	assert_sig(f, 0, AUTH_DKIM_PASS, "rsa.example", "rsa1", NULL);
	/* ... but a changed signed part fails */
	m = raw_signed(f, message("rsa.example", "len2", "Signed part.\r\n"), "rsa.example", "rsa1",
		       DKIM_SIGN_RSASHA256, true, 0, 0);
	run_msg(f, replace(m, "Signed part.", "Signed PART."));
	assert_sig(f, 0, AUTH_DKIM_FAIL, "rsa.example", "rsa1", "body hash did not verify");
	/* an l= longer than the body */
	m = raw_signed(f, message("rsa.example", "len3", "Signed part.\r\nmore\r\n"), "rsa.example", "rsa1",
		       DKIM_SIGN_RSASHA256, true, 0, 0);
	run_msg(f, replace(m, "Signed part.\r\nmore\r\n", "Signed part.\r\n"));
	assert_int_equal(f->ctx.auth.dkim_sigs[0].result, AUTH_DKIM_FAIL);

	/* a large body over max_body: the signatures without l= are not
	 * verified (neutral), the one whose l= fits is.  The l= signature is
	 * made on the first line only, then the rest is appended. */
	struct buf body = BUF_INIT;
	for (int i = 1; i < 3000; i++)
		buf_printf(&body, "line %04d of a long message, padded to a realistic length.....\r\n", i);
	static const char first[] = "line 0000 of a long message\r\n";
	char *lsig = raw_signed(f, message("dual.example", "big", first), "rsa.example", "rsa1",
				DKIM_SIGN_RSASHA256, true, 0, 0);
	char *sigline = xstrndup(lsig, (size_t)(strstr(lsig, "\r\nFrom: ") - lsig) + 2);
	free(lsig);
	char *bodytext = xasprintf("%s%s", first, buf_cstr(&body));
	buf_free(&body);
	char *plain = message("dual.example", "big", bodytext);
	char *only = xasprintf("%s%s", sigline, plain);                         /* l= only */
	char *full = signed_msg(f, plain);                                      /* rsa1 and ed1 */
	free(bodytext);
	char *both = xasprintf("%s%s", sigline, full);
	free(full);
	free(sigline);
	use_chain(f, "[check.dkim]\nmax_body = 64k\n");
	run_msg(f, both);
	assert_int_equal(f->ctx.auth.ndkim, 3);
	assert_sig(f, 0, AUTH_DKIM_PASS, "rsa.example", "rsa1", NULL);
	assert_int_equal(f->ctx.auth.dkim_sigs[1].result, AUTH_DKIM_NEUTRAL);
	tu_assert_contains(f->ctx.auth.dkim_sigs[1].reason, "body over 65536 bytes not verified");
	assert_int_equal(f->ctx.auth.dkim_sigs[2].result, AUTH_DKIM_NEUTRAL);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	/* the default bound takes it whole */
	use_chain(f, "");
	run_msg(f, xstrdup(f->msg));
	assert_int_equal(f->ctx.auth.dkim_sigs[1].result, AUTH_DKIM_PASS);
	assert_int_equal(f->ctx.auth.dkim_sigs[2].result, AUTH_DKIM_PASS);
	char *log = tu_read_file(f->logpath, NULL);
	tu_assert_contains(log, "\"truncated\":\"yes\"");
	free(log);
	/* every signature has an l= that fits: libopendkim needs no more body,
	 * the bound is not reached */
	use_chain(f, "[check.dkim]\nmax_body = 1k\n");
	run_msg(f, only);
	assert_int_equal(f->ctx.auth.ndkim, 1);
	assert_sig(f, 0, AUTH_DKIM_PASS, "rsa.example", "rsa1", NULL);
	log = tu_read_file(f->logpath, NULL);
	const char *last = NULL;
	for (const char *p = log; (p = strstr(p, "\"event\":\"dkim.result\"")); p++)
		last = p;
	assert_non_null(last);
	tu_assert_contains(last, "\"truncated\":\"no\"");
	free(log);
}

static void test_too_many_signatures(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	char *plain = message("rsa.example", "many", "Hi.\r\n");
	struct buf all = BUF_INIT;
	for (int i = 0; i < 12; i++) {
		char why[256];
		assert_int_equal(dkim_sign_message(f->signer, plain, strlen(plain), &all, why, sizeof(why)), 1);
	}
	buf_puts(&all, plain);
	free(plain);
	char *m = buf_steal(&all, NULL);
	run_msg(f, xstrdup(m));
	assert_int_equal(f->ctx.auth.ndkim, AUTH_DKIM_MAX);
	for (unsigned i = 0; i < AUTH_DKIM_MAX; i++)
		assert_int_equal(f->ctx.auth.dkim_sigs[i].result, AUTH_DKIM_PASS);
	char *log = tu_read_file(f->logpath, NULL);
	tu_assert_contains(log, "\"signatures\":10,\"skipped\":2");
	free(log);
	use_chain(f, "[check.dkim]\nmax_signatures = 3\n");
	run_msg(f, m);
	assert_int_equal(f->ctx.auth.ndkim, 3);
	const char *ar = header(f, "Authentication-Results");
	size_t n = 0;
	for (const char *p = ar; (p = strstr(p, "dkim=")); p++)
		n++;
	assert_int_equal(n, 3);
}

static void test_reject_fail(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.dkim]\nreject_fail = yes\n");
	struct verdict v = run_msg(f, replace(signed_msg(f, message("rsa.example", "r1", "A.\r\n")), "A.", "B."));
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.7.20");
	assert_string_equal(v.check, "dkim");
	tu_assert_contains(v.reason, "No passing DKIM signature found (d=rsa.example s=rsa1: body hash did not verify)");
	/* pass, none, permerror: not refused */
	v = run_msg(f, signed_msg(f, message("rsa.example", "r2", "A.\r\n")));
	assert_int_equal(v.kind, V_CONTINUE);
	v = run_msg(f, message("rsa.example", "r3", "A.\r\n"));
	assert_int_equal(v.kind, V_CONTINUE);
	v = run_msg(f, signed_msg(f, message("nokey.example", "r4", "A.\r\n")));
	assert_int_equal(v.kind, V_CONTINUE);
	/* one signature good, one tampered: pass */
	char *m = signed_msg(f, message("rsa.example", "r5", "A.\r\n"));
	char *b = b_value(m);
	b[1] = b[1] == 'A' ? 'B' : 'A';
	m = signed_msg(f, m);
	v = run_msg(f, m);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	/* off by default */
	use_chain(f, "");
	v = run_msg(f, replace(signed_msg(f, message("rsa.example", "r6", "A.\r\n")), "A.", "B."));
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_FAIL);
}

/* ---- DNS that does not answer -------------------------------------------- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct fx *f = arg;
	f->ticks++;
}

static void test_dns_does_not_answer(void **state)
{
	struct fx *f = *state;
	use_dns(f, true);
	use_chain(f, "[check.dkim]\ntimeout = 700ms\n");
	struct event *tick = event_new(f->c.base, -1, EV_PERSIST, on_tick, f);
	struct timeval tv = { 0, 20000 };
	event_add(tick, &tv);
	f->ticks = 0;
	long long t0 = tu_mono_ms();
	struct verdict v = run_msg(f, signed_msg(f, message("dead.example", "dead", "Hi.\r\n")));
	long long took = tu_mono_ms() - t0;
	event_free(tick);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_TEMPERROR);
	assert_sig(f, 0, AUTH_DKIM_TEMPERROR, "dead.example", "s1", "key unavailable");
	tu_assert_contains(header(f, "Authentication-Results"), "dkim=temperror reason=\"key unavailable: timed out\"");
	assert_true(took >= 600);
	assert_true(took < 3000);
	if (f->ticks < 10)
		fail_msg("the loop ticked %d times in %lld ms", f->ticks, took);
	/* temperror outranks fail; pass outranks temperror */
	char *m = signed_msg(f, message("dead.example", "dead2", "Hi.\r\n"));
	m = replace(m, "Hi.", "Ho.");
	v = run_msg(f, m);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_TEMPERROR);
	/* local data still answers at once */
	t0 = tu_mono_ms();
	run_msg(f, signed_msg(f, message("rsa.example", "alive", "Hi.\r\n")));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	assert_true(tu_mono_ms() - t0 < 500);
	/* reject_fail does not refuse on a temporary error */
	use_chain(f, "[check.dkim]\ntimeout = 300ms\nreject_fail = yes\n");
	m = signed_msg(f, message("dead.example", "dead3", "Hi.\r\n"));
	v = run_msg(f, replace(m, "Hi.", "Ho."));
	assert_int_equal(v.kind, V_CONTINUE);
	use_dns(f, false);
	use_chain(f, "");
}

/* ---- the header ---------------------------------------------------------- */

static void test_header_with_spf(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	/* what the spf check left at MAIL */
	f->ctx.auth.spf = AUTH_SPF_PASS;
	snprintf(f->ctx.auth.spf_domain, sizeof(f->ctx.auth.spf_domain), "dual.example");
	snprintf(f->ctx.auth.spf_identity, sizeof(f->ctx.auth.spf_identity), "mailfrom");
	run_msg(f, signed_msg(f, message("dual.example", "ar", "Hi.\r\n")));
	const char *ar = header(f, "Authentication-Results");
	assert_non_null(ar);
	static const char start[] = "mx.example.test;\r\n\tspf=pass smtp.mailfrom=dual.example;\r\n\tdkim=pass (";
	if (strncmp(ar, start, strlen(start)) != 0)
		fail_msg("Authentication-Results: %s", ar);
	assert_null(strstr(ar, "\r\n\r\n"));
	assert_true(ar[strlen(ar) - 1] != '\n');
	for (const char *line = ar; line; ) {         /* folded: no line over 998 */
		const char *nl = strstr(line, "\r\n");
		assert_true((size_t)(nl ? nl - line : (ptrdiff_t)strlen(line)) <= 998);
		line = nl ? nl + 2 : NULL;
	}
	/* python3-authres reads it as we meant it */
	char *out = authres_parse(f, ar);
	tu_assert_contains(out, "id mx.example.test\n");
	tu_assert_contains(out, "spf=pass reason= smtp.mailfrom=dual.example\n");
	char want[300];
	for (unsigned i = 0; i < 2; i++) {
		const struct auth_dkim_sig *s = &f->ctx.auth.dkim_sigs[i];
		snprintf(want, sizeof(want), "dkim=pass reason= header.d=dual.example header.s=%s header.a=%s header.b=%s\n",
			 s->selector, s->algorithm, s->b);
		tu_assert_contains(out, want);
	}
	free(out);
	/* the HELO identity */
	snprintf(f->ctx.auth.spf_identity, sizeof(f->ctx.auth.spf_identity), "helo");
	f->ctx.auth.spf = AUTH_SPF_SOFTFAIL;
	run_msg(f, message("rsa.example", "ar2", "Hi.\r\n"));
	assert_string_equal(header(f, "Authentication-Results"),
			    "mx.example.test;\r\n\tspf=softfail smtp.helo=dual.example;\r\n\tdkim=none");
	out = authres_parse(f, header(f, "Authentication-Results"));
	tu_assert_contains(out, "spf=softfail reason= smtp.helo=dual.example\n");
	tu_assert_contains(out, "dkim=none reason= \n");
	free(out);
	/* errors with their reasons */
	f->ctx.auth.spf = AUTH_SPF_TEMPERROR;
	snprintf(f->ctx.auth.spf_identity, sizeof(f->ctx.auth.spf_identity), "mailfrom");
	run_msg(f, replace(signed_msg(f, message("mixed.example", "ar3", "Hi.\r\n")), "Hi.", "Ho."));
	out = authres_parse(f, header(f, "Authentication-Results"));
	tu_assert_contains(out, "spf=temperror reason= smtp.mailfrom=dual.example\n");
	tu_assert_contains(out, "dkim=fail reason=body hash did not verify header.d=mixed.example header.s=rsa1 "
			"header.a=rsa-sha256 header.b=");
	tu_assert_contains(out, "dkim=permerror reason=no key for signature header.d=mixed.example header.s=s1 ");
	free(out);
	memset(&f->ctx.auth, 0, sizeof(f->ctx.auth));
	/* no header when asked */
	use_chain(f, "[check.dkim]\nheader = no\n");
	run_msg(f, signed_msg(f, message("rsa.example", "nohdr", "Hi.\r\n")));
	assert_null(header(f, "Authentication-Results"));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
}

/* The header function other front-ends use: quoting, bounds, odd input. */
static void test_header_function(void **state)
{
	struct fx *f = *state;
	struct check_auth a;
	char out[4096];
	memset(&a, 0, sizeof(a));
	dkim_auth_results(&a, NULL, "mx.example.test", out, sizeof(out));
	assert_string_equal(out, "mx.example.test; none");
	char *p = authres_parse(f, out);
	tu_assert_contains(p, "id mx.example.test\n");
	free(p);
	a.dkim = AUTH_DKIM_TEMPERROR;           /* no signature could be read */
	dkim_auth_results(&a, NULL, "mx.example.test", out, sizeof(out));
	assert_string_equal(out, "mx.example.test;\r\n\tdkim=temperror");
	a.dkim = AUTH_DKIM_FAIL;
	a.ndkim = 1;
	struct auth_dkim_sig *s = &a.dkim_sigs[0];
	s->result = AUTH_DKIM_FAIL;
	snprintf(s->domain, sizeof(s->domain), "weird.example");
	snprintf(s->selector, sizeof(s->selector), "sel-1");
	snprintf(s->algorithm, sizeof(s->algorithm), "rsa-sha256");
	snprintf(s->b, sizeof(s->b), "ab/+CD12");
	snprintf(s->reason, sizeof(s->reason), "a \"quoted\" \\ reason");
	a.spf = AUTH_SPF_FAIL;
	snprintf(a.spf_domain, sizeof(a.spf_domain), "x y.example");
	snprintf(a.spf_identity, sizeof(a.spf_identity), "mailfrom");
	dkim_auth_results(&a, NULL, "mx.example.test", out, sizeof(out));
	assert_string_equal(out, "mx.example.test;\r\n\tspf=fail smtp.mailfrom=\"x y.example\";\r\n\t"
			    "dkim=fail reason=\"a \\\"quoted\\\" \\\\ reason\" header.d=weird.example "
			    "header.s=sel-1 header.a=rsa-sha256 header.b=\"ab/+CD12\"");
	p = authres_parse(f, out);
	tu_assert_contains(p, "spf=fail reason= smtp.mailfrom=x y.example\n");
	/* (python3-authres keeps the quoted-pairs of a reason as they are) */
	tu_assert_contains(p, "dkim=fail reason=a \\\"quoted\\\" \\\\ reason header.d=weird.example header.s=sel-1 "
			"header.a=rsa-sha256 header.b=ab/+CD12\n");
	free(p);
	/* bounded: results that do not fit are left out whole */
	a.ndkim = AUTH_DKIM_MAX;
	for (unsigned i = 0; i < AUTH_DKIM_MAX; i++)
		a.dkim_sigs[i] = *s;
	char small[300];
	dkim_auth_results(&a, NULL, "mx.example.test", small, sizeof(small));
	assert_true(strlen(small) < sizeof(small));
	tu_assert_contains(small, "spf=fail");
	assert_true(small[strlen(small) - 1] == '"');
	p = authres_parse(f, small);
	free(p);
	dkim_auth_results(&a, NULL, "mx.example.test", small, 10);
	assert_string_equal(small, "");
	/* names */
	assert_string_equal(dkim_result_name(AUTH_DKIM_UNCHECKED), "none");
	assert_string_equal(dkim_result_name(AUTH_DKIM_PERMERROR), "permerror");
}

static void test_foreign_authentication_results(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	char *m = signed_msg(f, message("rsa.example", "forged", "Hi.\r\n"));
	m = replace(m, "From: Alice", "Authentication-Results: mx.example.test; dkim=pass header.d=bank.example\r\n"
		    "Authentication-Results: other.example; dkim=pass\r\nFrom: Alice");
	run_msg(f, m);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	assert_lacks(header(f, "Authentication-Results"), "bank.example");
	char *log = tu_read_file(f->logpath, NULL);
	tu_assert_contains(log, "\"event\":\"dkim.forged_authentication_results\",\"count\":1");
	free(log);
}

/* Our authserv-id after a comment, as a quoted-string or followed by a
 * comment is ours all the same (RFC 8601 2.2: CFWS is allowed around
 * it); another id stays, also in those forms. */
static void test_forged_authentication_results_forms(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	char *m = message("rsa.example", "forms", "Hi.\r\n");
	m = replace(m, "From: Alice",
		    "Authentication-Results: (x) mx.example.test; dkim=pass header.d=bank.example\r\n"
		    "Authentication-Results: \"mx.example.test\"; dkim=pass header.d=bank.example\r\n"
		    "Authentication-Results: (a (nested \\) one)\r\n\t) \" MX.Example.\\test\";\r\n\tdkim=pass\r\n"
		    "Authentication-Results: mx.example.test (x); dkim=pass header.d=bank.example\r\n"
		    "Authentication-Results: (mx.example.test) other.example; dkim=pass\r\n"
		    "Authentication-Results: \"other.example\" (mx.example.test); dkim=pass\r\n"
		    "Authentication-Results: \"mx.example.test.other\"; dkim=pass\r\n"
		    "Authentication-Results: mx.example.testing; dkim=pass\r\n"
		    "From: Alice");
	run_msg(f, m);
	assert_int_equal(f->ctx.ndel, 4);
	for (unsigned i = 0; i < 4; i++) {
		assert_string_equal(f->ctx.del[i].name, "Authentication-Results");
		assert_int_equal(f->ctx.del[i].index, i + 1);
	}
	char *log = tu_read_file(f->logpath, NULL);
	tu_assert_contains(log, "\"event\":\"dkim.forged_authentication_results\",\"count\":4");
	free(log);
}

/* ---- the rest ------------------------------------------------------------ */

static void test_metrics_and_logs(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	run_msg(f, signed_msg(f, message("dual.example", "met", "Hi.\r\n")));
	run_msg(f, signed_msg(f, message("nokey.example", "met2", "Hi.\r\n")));
	char *m = metrics_text(f);
	tu_assert_contains(m, "rampart_dkim_verify_total{stage=\"mx\",instance=\"mx\",result=\"pass\"}");
	tu_assert_contains(m, "rampart_dkim_verify_total{stage=\"mx\",instance=\"mx\",result=\"permerror\"}");
	free(m);
	char *log = tu_read_file(f->logpath, NULL);
	tu_assert_contains(log, "\"event\":\"dkim.signature\",\"result\":\"pass\",\"domain\":\"dual.example\"");
	tu_assert_contains(log, "\"event\":\"dkim.result\",\"result\":\"permerror\",\"signatures\":1");
	free(log);
}

static void test_config_errors(void **state)
{
	struct fx *f = *state;
	char why[512];
	assert_null(build(f, "[check.dkim]\nmax_signatures = 11\n", why, sizeof(why)));
	tu_assert_contains(why, "max_signatures");
	assert_null(build(f, "[check.dkim]\nthreads = 0\n", why, sizeof(why)));
	assert_null(build(f, "[check.dkim]\nmax_body = 10\n", why, sizeof(why)));
	assert_null(build(f, "[check.dkim]\nreject_fail = maybe\n", why, sizeof(why)));
	f->c.env.base = NULL;
	assert_null(build(f, "", why, sizeof(why)));
	tu_assert_contains(why, "event loop");
	f->c.env.base = f->c.base;
	/* the stale results of a transaction do not survive the next MAIL */
	use_chain(f, "");
	run_msg(f, signed_msg(f, message("rsa.example", "stale", "Hi.\r\n")));
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_PASS);
	tu_chain_verdict(f->c.chain, PHASE_MAIL, &f->ctx, f->c.base);
	assert_int_equal(f->ctx.auth.dkim, AUTH_DKIM_UNCHECKED);
	assert_int_equal(f->ctx.auth.ndkim, 0);
}

static void on_outcome(void *arg, const struct dkim_outcome *o)
{
	int *n = arg;
	(*n)++;
	assert_int_equal(o->summary, AUTH_DKIM_PASS);
}

/* Many at once on several threads; then a check freed with
 * verifications still waiting on DNS: no callback, nothing leaked, no hang. */
static void test_many_and_free_while_running(void **state)
{
	struct fx *f = *state;
	char why[256];
	struct config_error err;
	struct config *cfg = config_parse_string("x", "[check.dkim]\nthreads = 3\ntimeout = 600ms\n", &err);
	void *params = xcalloc(1, check_dkim.params->size);
	assert_true(config_bind(cfg, "check.dkim", check_dkim.params, params, &err));
	struct dkim_check *c = check_dkim.init(params, &f->c.env, why, sizeof(why));
	assert_non_null(c);
	char *msgs[2] = { signed_msg(f, message("dual.example", "m1", "Hi.\r\n")),
			  signed_msg(f, message("ed.example", "m2", "Hi.\r\n")) };
	int n = 0;
	for (int i = 0; i < 40; i++)
		dkim_verify_message(c, msgs[i % 2], strlen(msgs[i % 2]), on_outcome, &n);
	assert_int_equal(n, 0);                         /* never inside dkim_verify_message */
	while (n < 40)
		event_base_loop(f->c.base, EVLOOP_ONCE);
	check_dkim.free(c);

	use_dns(f, true);
	c = check_dkim.init(params, &f->c.env, why, sizeof(why));
	assert_non_null(c);
	char *dead = signed_msg(f, message("dead.example", "m3", "Hi.\r\n"));
	n = 0;
	for (int i = 0; i < 5; i++)
		dkim_verify_message(c, dead, strlen(dead), on_outcome, &n);
	long long t0 = tu_mono_ms();
	check_dkim.free(c);
	assert_true(tu_mono_ms() - t0 < 2500);
	event_base_loop(f->c.base, EVLOOP_NONBLOCK);
	assert_int_equal(n, 0);
	use_dns(f, false);
	free(dead);
	free(msgs[0]);
	free(msgs[1]);
	config_release(check_dkim.params, params);
	free(params);
	config_free(cfg);
}

#if !defined(__SANITIZE_ADDRESS__)
static void count_outcome(void *arg, const struct dkim_outcome *o)
{
	int *n = arg;
	(*n)++;
	if (o->summary != AUTH_DKIM_PASS)
		fail_msg("%s: %s", dkim_result_name(o->summary), o->nsigs ? o->sigs[0].reason : o->problem);
}
#endif

/* libopendkim 2.11 leaks when it signs with ed25519; verifying, the heap
 * must not grow with the messages (one worker, its DKIM_LIB warm).
 * OpenSSL's caches move the figure by some 30 KiB either way; a leak of
 * 16 bytes a message would be 64 KiB. */
static void test_no_growth(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
	(void)state;
	skip();
#else
	struct fx *f = *state;
	use_chain(f, "");
	char why[256];
	struct config_error err;
	struct config *cfg = config_parse_string("x", "[check.dkim]\nthreads = 1\n", &err);
	void *params = xcalloc(1, check_dkim.params->size);
	assert_true(config_bind(cfg, "check.dkim", check_dkim.params, params, &err));
	struct dkim_check *c = check_dkim.init(params, &f->c.env, why, sizeof(why));
	assert_non_null(c);
	char *m = signed_msg(f, message("dual.example", "growth", "Hi.\r\n"));
	size_t before = 0;
	int n = 0;
	for (int i = 0; i < 5000; i++) {
		if (i == 1000)
			before = mallinfo2().uordblks;
		dkim_verify_message(c, m, strlen(m), count_outcome, &n);
		while (n <= i)
			event_base_loop(f->c.base, EVLOOP_ONCE);
	}
	long grown = (long)mallinfo2().uordblks - (long)before;
	print_message("heap after 4000 more dual (rsa + ed25519) verifications: %+ld bytes\n", grown);
	assert_true(grown < 65536);
	check_dkim.free(c);
	free(m);
	config_release(check_dkim.params, params);
	free(params);
	config_free(cfg);
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pass_rsa_and_ed25519),
		cmocka_unit_test(test_dual_signed),
		cmocka_unit_test(test_fail_after_tampering),
		cmocka_unit_test(test_unsigned_is_none),
		cmocka_unit_test(test_key_errors),
		cmocka_unit_test(test_signature_errors),
		cmocka_unit_test(test_body_length_and_bound),
		cmocka_unit_test(test_too_many_signatures),
		cmocka_unit_test(test_reject_fail),
		cmocka_unit_test(test_dns_does_not_answer),
		cmocka_unit_test(test_header_with_spf),
		cmocka_unit_test(test_header_function),
		cmocka_unit_test(test_foreign_authentication_results),
		cmocka_unit_test(test_forged_authentication_results_forms),
		cmocka_unit_test(test_metrics_and_logs),
		cmocka_unit_test(test_config_errors),
		cmocka_unit_test(test_many_and_free_while_running),
		cmocka_unit_test(test_no_growth),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
