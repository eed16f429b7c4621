/*
 * dkim_verify.c — DKIM verification (RFC 6376, ed25519-sha256 RFC 8463;
 * Maraboli DM31) at end of message, and the Authentication-Results header
 * (RFC 8601) with the SPF and DKIM results.
 *
 * libopendkim verifies every DKIM-Signature of the message.  Its key
 * lookups go through the process's resolver (shared/util/dns): the
 * library's key-lookup hook (dkim_set_key_lookup) is synchronous, so
 * verifications run on worker threads that wait for their answers
 * (dns_query_wait, SELECTOR._domainkey.DOMAIN TXT, bounded by what is
 * left of the timeout), and results come back to the event loop through
 * an eventfd (shared/util/workers, as in the spf check).  The loop never
 * waits.  Each worker
 * owns one DKIM_LIB, made once with the options below; per message only
 * the DKIM handle is made.
 *
 * Results per signature (RFC 8601 2.7.1, reasons worded as RFC 6376 6.1):
 *   pass       the signature and the body hash verified;
 *   fail       "signature did not verify", "body hash did not verify",
 *              an l= longer than the body;
 *   neutral    a syntax error in the signature (a missing or malformed
 *              tag, unknown version, i= outside d= ...), or the body hash
 *              not checked: the body is longer than max_body; a signed
 *              header libopendkim cannot read at all (one result, no
 *              properties);
 *   temperror  the key could not be fetched now (DNS error or timeout,
 *              DNSSEC bogus, the timeout spent before the lookup);
 *   permerror  no key record (NXDOMAIN or no TXT), several TXT records, a
 *              broken, revoked, unsuitable or too small key (min_key_bits),
 *              an expired or future signature, rsa-sha1 (RFC 8301: not
 *              verified at all).
 * A message without a DKIM-Signature field is none.  The message's
 * summary (ctx->auth.dkim) is pass when one signature passed, else the
 * first of temperror, fail, permerror, neutral present.
 *
 * Bounds: at most max_signatures (<= AUTH_DKIM_MAX) signatures are
 * verified, in header order; the others are ignored (logged, counted).
 * The body is hashed up to max_body bytes: libopendkim stops earlier by
 * itself when every signature has an l= (dkim_minbody); past max_body the
 * feeding stops, and a signature whose hash needed more is neutral
 * ("body over N bytes not verified") rather than fail.  The whole
 * verification, key lookups included, has the timeout.
 *
 * The header: one Authentication-Results field with this stage's
 * hostname as authserv-id, "spf=... smtp.mailfrom=..." (or smtp.helo)
 * when the spf check evaluated the sender, then one "dkim=..." per
 * signature with header.d, header.s, header.a and header.b (the first 8
 * characters of b=, RFC 6008), or "dkim=none".  Authentication-Results
 * fields that arrive carrying our authserv-id are forged or stale: they
 * are removed (RFC 8601 5) and logged (dkim.forged_authentication_results).
 *
 * Verdict: continue (the results only inform, e.g. DMARC or spam scoring
 * later), unless reject_fail: a message with no passing signature, no
 * temporary error and at least one signature that failed (summary fail)
 * is refused 550 5.7.20 (RFC 7372: no passing DKIM signature); a forger
 * cannot escape that by adding a signature without a key.
 *
 * libopendkim 2.11.0~beta2 leaks an ed25519 signature's crypto structure
 * when signing (shared/mail/dkim_sign.c makes up for it); a verifying
 * handle's dkim_free() releases everything, ed25519 included (no block is
 * left, and the unit tests run clean under LeakSanitizer), so the library
 * allocates as it likes here.
 */
#include "dkim_verify.h"
#include "../mail/header.h"
#include "../util/alloc.h"
#include "../util/dns.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/workers.h"

#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/err.h>
#include <opendkim/dkim.h>

#define MAX_THREADS     32
#define MAX_WAITING     1024            /* verifications queued for the workers */
#define CHUNK           65536           /* bytes handed to dkim_chunk() at a time */
#define TXT_TYPE        16

/* ---- parameters ---------------------------------------------------------- */

struct dkim_params {
	long long threads;
	long long timeout;
	long long max_signatures;
	long long max_body;
	long long min_key_bits;
	bool reject_fail;
	bool header;
};

static const struct param_def dkim_param_defs[] = {
	{ "timeout", PT_TIME, "20s", 100, 300000, NULL, offsetof(struct dkim_params, timeout),
	  "longest verification of one message, key lookups included; keys not fetched by then are "
	  "temperror" },
	{ "threads", PT_INT, "2", 1, MAX_THREADS, NULL, offsetof(struct dkim_params, threads),
	  "worker threads verifying signatures (they hash bodies and wait on DNS)" },
	{ "max_signatures", PT_INT, "10", 1, AUTH_DKIM_MAX, NULL, offsetof(struct dkim_params, max_signatures),
	  "signatures verified per message, in header order; the others are ignored" },
	{ "max_body", PT_SIZE, "16m", 1024, 1LL << 32, NULL, offsetof(struct dkim_params, max_body),
	  "body bytes hashed at most; a signature needing more (no l=, or a larger l=) is neutral, "
	  "not verified" },
	{ "min_key_bits", PT_INT, "1024", 512, 16384, NULL, offsetof(struct dkim_params, min_key_bits),
	  "smallest RSA key accepted (RFC 8301: 1024); smaller keys are permerror" },
	{ "reject_fail", PT_BOOL, "no", 0, 0, NULL, offsetof(struct dkim_params, reject_fail),
	  "reject (550 5.7.20) a message whose signatures all failed (no pass, no temperror, one fail "
	  "at least); by default results only inform" },
	{ "header", PT_BOOL, "yes", 0, 0, NULL, offsetof(struct dkim_params, header),
	  "add an Authentication-Results header (RFC 8601) with the SPF and DKIM results" },
	PARAM_END
};

static const struct param_set dkim_params_set = {
	"check.dkim", "DKIM verification (RFC 6376, RFC 8463) and the Authentication-Results header",
	dkim_param_defs, sizeof(struct dkim_params)
};

/* ---- state --------------------------------------------------------------- */

struct vjob {
	struct workers_job link;        /* first: the pool's */
	const char *msg;
	size_t len;
	long long start_ms, deadline_ms;
	dkim_done_fn done;
	void *arg;
	struct dkim_outcome out;
};

struct dkim_check {
	const struct dkim_params *p;
	struct dns *dns;
	char authserv[256];
	struct metric *m_results;
	struct workers *pool;           /* the worker threads, a DKIM_LIB each */
};

/* What the key lookup found for one signature, when it decides. */
struct key_note {
	DKIM_SIGINFO *sig;
	enum auth_dkim result;
	char reason[128];
};

/* One verification on a worker thread: the DKIM handle's user context. */
struct vrun {
	struct dkim_check *c;
	struct vjob *j;
	struct key_note notes[AUTH_DKIM_MAX];
	unsigned nnotes;
	unsigned queries;
};

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

const char *dkim_result_name(enum auth_dkim r)
{
	switch (r) {
	case AUTH_DKIM_PASS:      return "pass";
	case AUTH_DKIM_FAIL:      return "fail";
	case AUTH_DKIM_NEUTRAL:   return "neutral";
	case AUTH_DKIM_TEMPERROR: return "temperror";
	case AUTH_DKIM_PERMERROR: return "permerror";
	case AUTH_DKIM_NONE:
	case AUTH_DKIM_UNCHECKED: break;
	}
	return "none";
}

/* Third-party text kept for headers and logs: printable ASCII, bounded. */
static void clean(char *out, size_t outlen, const char *in)
{
	size_t k = 0;
	for (; in && *in && k + 1 < outlen; in++) {
		unsigned char ch = (unsigned char)*in;
		out[k++] = (ch < 0x21 || ch >= 0x7f) ? '?' : (char)ch;
	}
	if (outlen)
		out[k] = '\0';
}

/* ---- the message's header section --------------------------------------- */

/* How many fields named name msg[0..hlen) has. */
static unsigned count_fields(const char *msg, size_t hlen, const char *name)
{
	struct hdr_field f;
	unsigned n = 0;
	for (size_t pos = 0; hdr_next(msg, hlen, &pos, &f); )
		n += hdr_is(&f, name);
	return n;
}

/* ---- libopendkim's hooks (worker threads) -------------------------------- */

static void note(struct vrun *r, DKIM_SIGINFO *sig, enum auth_dkim result, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void note(struct vrun *r, DKIM_SIGINFO *sig, enum auth_dkim result, const char *fmt, ...)
{
	struct key_note *n = NULL;
	for (unsigned i = 0; i < r->nnotes; i++)
		if (r->notes[i].sig == sig)
			n = &r->notes[i];
	if (!n) {
		if (r->nnotes == AUTH_DKIM_MAX)
			return;
		n = &r->notes[r->nnotes++];
	}
	n->sig = sig;
	n->result = result;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(n->reason, sizeof(n->reason), fmt, ap);
	va_end(ap);
}

static const struct key_note *find_note(const struct vrun *r, DKIM_SIGINFO *sig)
{
	for (unsigned i = 0; i < r->nnotes; i++)
		if (r->notes[i].sig == sig)
			return &r->notes[i];
	return NULL;
}

/* A name fit for a key query: printable ASCII without spaces, labels of
 * 1..63 octets, at most 253 in all. */
static bool key_name_ok(const char *s)
{
	size_t n = strlen(s), label = 0;
	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch <= 0x20 || ch >= 0x7f || ch == '\\' || ch == '"')
			return false;
		if (ch == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (++label > 63) {
			return false;
		}
	}
	return label > 0;
}

/* a=rsa-sha1 (its tag: libopendkim leaves the algorithm of a signature
 * it refused early at 0, which is rsa-sha1). */
static bool is_rsa_sha1(DKIM_SIGINFO *sig)
{
	const char *a = (const char *)dkim_sig_gettagvalue(sig, false, (unsigned char *)(uintptr_t)"a");
	if (!a)
		return false;
	while (isspace((unsigned char)*a))
		a++;
	size_t n = strlen(a);
	while (n > 0 && isspace((unsigned char)a[n - 1]))
		n--;
	return n == 8 && strncasecmp(a, "rsa-sha1", 8) == 0;
}

/* The prescreen: signatures past max_signatures and rsa-sha1 ones are
 * not verified (the latter are reported as permerror). */
static DKIM_CBSTAT prescreen(DKIM *d, DKIM_SIGINFO **sigs, int nsigs)
{
	struct vrun *r = dkim_get_user_context(d);
	for (int i = 0; i < nsigs; i++)
		if (i >= r->c->p->max_signatures || is_rsa_sha1(sigs[i]))
			dkim_sig_ignore(sigs[i]);
	return DKIM_CBSTAT_CONTINUE;
}

/* The key lookup: SELECTOR._domainkey.DOMAIN TXT through the shared
 * resolver.  What is not a usable record is noted for the signature (the
 * library hears "not found" and goes on with the others). */
static DKIM_CBSTAT key_lookup(DKIM *d, DKIM_SIGINFO *sig, unsigned char *buf, size_t buflen)
{
	struct vrun *r = dkim_get_user_context(d);
	const char *sel = (const char *)dkim_sig_getselector(sig);
	const char *dom = (const char *)dkim_sig_getdomain(sig);
	char name[300];

	if (!sel || !dom || !*sel || !*dom) {
		note(r, sig, AUTH_DKIM_NEUTRAL, "signature syntax error: no selector or domain");
		return DKIM_CBSTAT_NOTFOUND;
	}
	if ((size_t)snprintf(name, sizeof(name), "%s._domainkey.%s", sel, dom) >= sizeof(name) ||
	    !key_name_ok(name)) {
		note(r, sig, AUTH_DKIM_PERMERROR, "key name is not a DNS name");
		return DKIM_CBSTAT_NOTFOUND;
	}
	long long left = r->j->deadline_ms - now_ms();
	if (left <= 0) {
		note(r, sig, AUTH_DKIM_TEMPERROR, "key unavailable: timed out before the lookup");
		return DKIM_CBSTAT_NOTFOUND;
	}
	struct dns_result res;
	memset(&res, 0, sizeof(res));
	r->queries++;
	bool started = dns_query_wait(r->c->dns, name, TXT_TYPE, left, &res);
	enum dns_status st = started ? res.status : DNS_TEMPFAIL;
	DKIM_CBSTAT ret = DKIM_CBSTAT_NOTFOUND;
	const struct dns_rr *txt = NULL;
	size_t ntxt = 0;
	for (size_t i = 0; started && st == DNS_OK && i < res.n; i++)
		if (res.rr[i].type == TXT_TYPE && ntxt++ == 0)
			txt = &res.rr[i];
	switch (st) {
	case DNS_OK:
		if (ntxt == 0) {
			note(r, sig, AUTH_DKIM_PERMERROR, "no key for signature");
		} else if (ntxt > 1) {
			note(r, sig, AUTH_DKIM_PERMERROR, "key syntax error: %zu key records", ntxt);
		} else if (txt->len != strlen(txt->text)) {
			note(r, sig, AUTH_DKIM_PERMERROR, "key syntax error: NUL in the key record");
		} else if (txt->len >= buflen) {
			note(r, sig, AUTH_DKIM_PERMERROR, "key syntax error: key record of %zu bytes", txt->len);
		} else if (txt->len == 0) {
			note(r, sig, AUTH_DKIM_PERMERROR, "key syntax error: empty key record");
		} else {
			memcpy(buf, txt->text, txt->len + 1);
			ret = DKIM_CBSTAT_CONTINUE;
		}
		break;
	case DNS_NXDOMAIN:
	case DNS_NODATA:
		note(r, sig, AUTH_DKIM_PERMERROR, "no key for signature");
		break;
	case DNS_BOGUS:
		note(r, sig, AUTH_DKIM_TEMPERROR, "key unavailable: DNSSEC validation failed");
		break;
	case DNS_TEMPFAIL:
	default:
		note(r, sig, AUTH_DKIM_TEMPERROR, "key unavailable: %s",
		     r->j->deadline_ms - now_ms() <= 10 ? "timed out" : "DNS error");
		break;
	}
	if (started)
		dns_result_free(&res);
	return ret;
}

/* ---- one verification (worker thread) ------------------------------------ */

static void tag_value(DKIM_SIGINFO *sig, const char *tag, char *out, size_t outlen, size_t max)
{
	const char *v = (const char *)dkim_sig_gettagvalue(sig, false, (unsigned char *)(uintptr_t)tag);
	size_t k = 0;
	for (; v && *v && k + 1 < outlen && k < max; v++)
		if (!isspace((unsigned char)*v))
			out[k++] = (unsigned char)*v < 0x21 || (unsigned char)*v >= 0x7f ? '?' : *v;
	out[k] = '\0';
}

/* A signature's result from what libopendkim and the key lookup found. */
static void sig_result(struct vrun *r, DKIM *d, DKIM_SIGINFO *sig, bool truncated, size_t body_fed,
		       DKIM_STAT st, const char *problem, struct auth_dkim_sig *s, unsigned *bits)
{
	const struct key_note *kn = find_note(r, sig);
	int err = dkim_sig_geterror(sig);
	unsigned flags = dkim_sig_getflags(sig);
	int bh = dkim_sig_getbh(sig);
	const char *errstr = dkim_sig_geterrorstr(err);
	ssize_t msglen = -1, canonlen = -1, signlen = -1;
	bool short_body = false;       /* the hash needed body not fed */

	clean(s->domain, sizeof(s->domain), (const char *)dkim_sig_getdomain(sig));
	clean(s->selector, sizeof(s->selector), (const char *)dkim_sig_getselector(sig));
	tag_value(sig, "a", s->algorithm, sizeof(s->algorithm), sizeof(s->algorithm) - 1);
	for (char *p = s->algorithm; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	tag_value(sig, "b", s->b, sizeof(s->b), 8);
	s->reason[0] = '\0';
	*bits = 0;
	/* truncated: did the hash get all the (canonical) body it needed,
	 * i.e. an l= no longer than what was hashed? */
	if (truncated &&
	    (dkim_sig_getcanonlen(d, sig, &msglen, &canonlen, &signlen) != DKIM_STAT_OK || signlen < 0 ||
	     canonlen < signlen))
		short_body = true;
#define SET(res, ...) do { s->result = (res); snprintf(s->reason, sizeof(s->reason), __VA_ARGS__); } while (0)
	if (is_rsa_sha1(sig)) {
		SET(AUTH_DKIM_PERMERROR, "rsa-sha1 is not accepted (RFC 8301)");
		return;
	}
	if (kn) {
		SET(kn->result, "%s", kn->reason);
		return;
	}
	switch (err) {
	case DKIM_SIGERROR_OK:
	case DKIM_SIGERROR_BADSIG:
		/* PASSED: the header hash verified; then the body hash decides
		 * (libopendkim says BADSIG for a body hash mismatch too) */
		if (err == DKIM_SIGERROR_OK && !(flags & DKIM_SIGFLAG_PROCESSED)) {
			/* libopendkim stopped before this signature */
			if (st == DKIM_STAT_NORESOURCE || st == DKIM_STAT_INTERNAL)
				SET(AUTH_DKIM_TEMPERROR, "not verified: %s", problem);
			else
				SET(AUTH_DKIM_PERMERROR, "not verified: %s", problem);
		} else if ((flags & DKIM_SIGFLAG_PASSED) && bh == DKIM_SIGBH_MATCH) {
			s->result = AUTH_DKIM_PASS;
			if (dkim_sig_getkeysize(sig, bits) != DKIM_STAT_OK)
				*bits = 0;
		} else if ((flags & DKIM_SIGFLAG_PASSED) && short_body) {
			SET(AUTH_DKIM_NEUTRAL, "body over %zu bytes not verified", body_fed);
		} else if ((flags & DKIM_SIGFLAG_PASSED) && bh != DKIM_SIGBH_MATCH) {
			SET(AUTH_DKIM_FAIL, "body hash did not verify");
		} else {
			SET(AUTH_DKIM_FAIL, "signature did not verify");
		}
		break;
	case DKIM_SIGERROR_TOOLARGE_L:
		if (short_body)
			SET(AUTH_DKIM_NEUTRAL, "body over %zu bytes not verified", body_fed);
		else
			SET(AUTH_DKIM_FAIL, "body hash did not verify: l= exceeds the body");
		break;
	case DKIM_SIGERROR_NOKEY:
		SET(AUTH_DKIM_PERMERROR, "no key for signature");
		break;
	case DKIM_SIGERROR_KEYFAIL:
		SET(AUTH_DKIM_TEMPERROR, "key unavailable");
		break;
	case DKIM_SIGERROR_KEYREVOKED:
		SET(AUTH_DKIM_PERMERROR, "key revoked");
		break;
	case DKIM_SIGERROR_KEYTOOSMALL:
		SET(AUTH_DKIM_PERMERROR, "inappropriate key: fewer than %lld bits", r->c->p->min_key_bits);
		break;
	case DKIM_SIGERROR_NOTEMAILKEY:
	case DKIM_SIGERROR_KEYHASHMISMATCH:
		SET(AUTH_DKIM_PERMERROR, "inappropriate key: %s", errstr ? errstr : "");
		break;
	case DKIM_SIGERROR_MULTIREPLY:
	case DKIM_SIGERROR_DNSSYNTAX:
	case DKIM_SIGERROR_KEYVERSION:
	case DKIM_SIGERROR_KEYUNKNOWNHASH:
	case DKIM_SIGERROR_KEYTYPEMISSING:
	case DKIM_SIGERROR_KEYTYPEUNKNOWN:
	case DKIM_SIGERROR_KEYDECODE:
		SET(AUTH_DKIM_PERMERROR, "key syntax error: %s", errstr ? errstr : "");
		break;
	case DKIM_SIGERROR_EXPIRED:
		SET(AUTH_DKIM_PERMERROR, "signature expired");
		break;
	case DKIM_SIGERROR_FUTURE:
		SET(AUTH_DKIM_PERMERROR, "signature in the future");
		break;
	default:
		SET(AUTH_DKIM_NEUTRAL, "signature syntax error: %s", errstr ? errstr : "unknown error");
		break;
	}
#undef SET
}

static enum auth_dkim summary_of(const struct dkim_outcome *o)
{
	static const enum auth_dkim order[] = {
		AUTH_DKIM_PASS, AUTH_DKIM_TEMPERROR, AUTH_DKIM_FAIL, AUTH_DKIM_PERMERROR, AUTH_DKIM_NEUTRAL,
	};
	for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++)
		for (unsigned i = 0; i < o->nsigs; i++)
			if (o->sigs[i].result == order[k])
				return order[k];
	return AUTH_DKIM_NONE;
}

static void run_job(void *owner, void *state, struct workers_job *job)
{
	struct dkim_check *c = owner;
	DKIM_LIB *lib = state;
	struct vjob *j = (struct vjob *)job;
	struct dkim_outcome *o = &j->out;
	struct vrun r = { .c = c, .j = j };
	size_t hlen = hdr_body_start(j->msg, j->len);
	DKIM_STAT st = DKIM_STAT_OK;
	DKIM *d = NULL;

	memset(o, 0, sizeof(*o));
	o->summary = AUTH_DKIM_NONE;
	if (count_fields(j->msg, hlen, "DKIM-Signature") == 0)
		goto out;               /* unsigned: nothing for libopendkim to do */
	if (now_ms() >= j->deadline_ms) {
		o->summary = AUTH_DKIM_TEMPERROR;
		snprintf(o->problem, sizeof(o->problem), "waited past the timeout for a worker");
		goto out;
	}
	d = dkim_verify(lib, (const unsigned char *)"rampart", NULL, &st);
	if (!d) {
		o->summary = AUTH_DKIM_TEMPERROR;
		snprintf(o->problem, sizeof(o->problem), "dkim_verify: %s", dkim_getresultstr(st));
		goto out;
	}
	dkim_set_user_context(d, &r);

	/* The header section and the body, the body bounded; dkim_chunk()
	 * copies what it keeps and does not write to the data. */
	size_t off = 0, body_fed = 0;
	bool truncated = false;
	while (off < j->len && st == DKIM_STAT_OK) {
		size_t n = j->len - off < CHUNK ? j->len - off : CHUNK;
		if (off >= hlen) {
			body_fed = off - hlen;
			/* no more needed: every signature has its l= bytes */
			if (body_fed > 0 && dkim_minbody(d) == 0)
				break;
			if (body_fed >= (size_t)c->p->max_body) {
				truncated = true;
				break;
			}
			if (n > (size_t)c->p->max_body - body_fed)
				n = (size_t)c->p->max_body - body_fed;
		} else if (n > hlen - off + (size_t)c->p->max_body) {
			n = hlen - off + (size_t)c->p->max_body;
		}
		st = dkim_chunk(d, (unsigned char *)(uintptr_t)(j->msg + off), n);
		off += n;
	}
	if (off >= hlen)
		body_fed = off - hlen;
	if (st == DKIM_STAT_OK)
		st = dkim_chunk(d, NULL, 0);
	if (st == DKIM_STAT_OK)
		st = dkim_eom(d, NULL);
	if (st != DKIM_STAT_OK && st != DKIM_STAT_NOSIG) {
		const char *e = dkim_geterror(d);
		snprintf(o->problem, sizeof(o->problem), "%s%s%s", dkim_getresultstr(st), e && *e ? ": " : "",
			 e ? e : "");
	}
	o->truncated = truncated;

	DKIM_SIGINFO **sigs = NULL;
	int nsigs = 0;
	if (dkim_getsiglist(d, &sigs, &nsigs) != DKIM_STAT_OK)
		nsigs = 0;
	for (int i = 0; i < nsigs; i++) {
		if (i >= c->p->max_signatures) {
			o->skipped++;
			continue;
		}
		sig_result(&r, d, sigs[i], truncated, body_fed, st, o->problem, &o->sigs[o->nsigs],
			   &o->bits[o->nsigs]);
		o->nsigs++;
	}
	if (o->nsigs == 0) {
		/* Signed, yet no signature to report: libopendkim could not
		 * read the header (RFC 8601: not able to be processed). */
		o->summary = st == DKIM_STAT_NORESOURCE || st == DKIM_STAT_INTERNAL ? AUTH_DKIM_TEMPERROR
										     : AUTH_DKIM_NEUTRAL;
		if (!o->problem[0])
			snprintf(o->problem, sizeof(o->problem), "no DKIM-Signature libopendkim could read");
	} else {
		o->summary = summary_of(o);
	}
out:
	if (d)
		dkim_free(d);
	ERR_clear_error();
	o->queries = r.queries;
	o->ms = now_ms() - j->start_ms;
}

static void count_result(struct dkim_check *c, enum auth_dkim r)
{
	if (!c->m_results)
		return;
	char l[64];
	snprintf(l, sizeof(l), "result=\"%s\"", dkim_result_name(r));
	metric_inc(c->m_results, l);
}

/* From the loop, each finished verification before any is handed back:
 * one count per signature; an unsigned message (or one no signature of
 * which could be read) counts its summary. */
static void count_job(void *owner, struct workers_job *job)
{
	struct dkim_check *c = owner;
	struct vjob *j = (struct vjob *)job;
	for (unsigned i = 0; i < j->out.nsigs; i++)
		count_result(c, j->out.sigs[i].result);
	if (j->out.nsigs == 0)
		count_result(c, j->out.summary);
}

/* From the loop: a finished verification to its caller.  The check is
 * not touched: the last callback may free it (its session was the last
 * user of the chain). */
static void job_done(struct workers_job *job)
{
	struct vjob *j = (struct vjob *)job;
	j->done(j->arg, &j->out);
	free(j);
}

static void free_job(struct workers_job *job)
{
	free(job);
}

void dkim_verify_message(struct dkim_check *c, const char *msg, size_t len, dkim_done_fn done, void *arg)
{
	struct vjob *j = xcalloc(1, sizeof(*j));
	j->msg = msg ? msg : "";
	j->len = msg ? len : 0;
	j->start_ms = now_ms();
	j->deadline_ms = j->start_ms + c->p->timeout;
	j->done = done;
	j->arg = arg;
	if (!workers_submit(c->pool, &j->link)) {
		/* Overloaded: answered at once, through the loop all the same. */
		j->out.summary = AUTH_DKIM_TEMPERROR;
		snprintf(j->out.problem, sizeof(j->out.problem), "too many verifications waiting");
		workers_return(c->pool, &j->link);
	}
}

/* ---- the header ---------------------------------------------------------- */

/* An RFC 8601 value: a token (RFC 2045) as it is, else a quoted-string. */
static void ar_value(char *out, size_t outlen, const char *v, bool force_quotes)
{
	bool token = !force_quotes && *v;
	for (const char *p = v; *p && token; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || strchr("()<>@,;:\\\"/[]?=", *p))
			token = false;
	if (token) {
		snprintf(out, outlen, "%s", v);
		return;
	}
	size_t k = 0;
	if (outlen < 3) {
		if (outlen)
			out[0] = '\0';
		return;
	}
	out[k++] = '"';
	for (; *v && k + 3 < outlen; v++) {
		unsigned char ch = (unsigned char)*v;
		if (ch < 0x20 || ch >= 0x7f)
			ch = '?';
		if (ch == '"' || ch == '\\')
			out[k++] = '\\';
		out[k++] = (char)ch;
	}
	out[k++] = '"';
	out[k] = '\0';
}

/* Append "; " + resinfo (folded) to out[*k..) when it fits whole. */
static void ar_add(char *out, size_t outlen, size_t *k, const char *resinfo)
{
	size_t n = strlen(resinfo);
	if (*k + 4 + n >= outlen)
		return;
	memcpy(out + *k, ";\r\n\t", 4);
	memcpy(out + *k + 4, resinfo, n + 1);
	*k += 4 + n;
}

void dkim_auth_results(const struct check_auth *auth, const unsigned *bits, const char *authserv_id,
		       char *out, size_t outlen)
{
	char id[300], v1[300], v2[300], v3[300], v4[40], reason[300], res[1400];
	size_t k;
	bool any = false;

	if (outlen == 0)
		return;
	ar_value(id, sizeof(id), authserv_id && *authserv_id ? authserv_id : "localhost", false);
	k = (size_t)snprintf(out, outlen, "%s", id);
	if (k >= outlen) {
		out[0] = '\0';
		return;
	}
	if (auth->spf != AUTH_SPF_UNCHECKED) {
		static const char *const spf_names[] = {
			[AUTH_SPF_NONE] = "none", [AUTH_SPF_NEUTRAL] = "neutral", [AUTH_SPF_PASS] = "pass",
			[AUTH_SPF_FAIL] = "fail", [AUTH_SPF_SOFTFAIL] = "softfail",
			[AUTH_SPF_TEMPERROR] = "temperror", [AUTH_SPF_PERMERROR] = "permerror",
		};
		const char *name = auth->spf <= AUTH_SPF_PERMERROR && spf_names[auth->spf] ? spf_names[auth->spf]
											  : "none";
		bool helo = strcmp(auth->spf_identity, "helo") == 0;
		if (auth->spf_domain[0]) {
			ar_value(v1, sizeof(v1), auth->spf_domain, false);
			snprintf(res, sizeof(res), "spf=%s smtp.%s=%s", name, helo ? "helo" : "mailfrom", v1);
		} else {
			snprintf(res, sizeof(res), "spf=%s", name);
		}
		ar_add(out, outlen, &k, res);
		any = true;
	}
	if (auth->dkim != AUTH_DKIM_UNCHECKED) {
		if (auth->ndkim == 0) {
			snprintf(res, sizeof(res), "dkim=%s", dkim_result_name(auth->dkim));
			ar_add(out, outlen, &k, res);
		}
		for (unsigned i = 0; i < auth->ndkim && i < AUTH_DKIM_MAX; i++) {
			const struct auth_dkim_sig *s = &auth->dkim_sigs[i];
			size_t n = (size_t)snprintf(res, sizeof(res), "dkim=%s", dkim_result_name(s->result));
			if (s->result == AUTH_DKIM_PASS && bits && bits[i])
				n += (size_t)snprintf(res + n, sizeof(res) - n, " (%u-bit key)", bits[i]);
			if (s->reason[0]) {
				ar_value(reason, sizeof(reason), s->reason, true);
				n += (size_t)snprintf(res + n, sizeof(res) - n, " reason=%s", reason);
			}
			if (s->domain[0]) {
				ar_value(v1, sizeof(v1), s->domain, false);
				n += (size_t)snprintf(res + n, sizeof(res) - n, " header.d=%s", v1);
			}
			if (s->selector[0]) {
				ar_value(v2, sizeof(v2), s->selector, false);
				n += (size_t)snprintf(res + n, sizeof(res) - n, " header.s=%s", v2);
			}
			if (s->algorithm[0]) {
				ar_value(v3, sizeof(v3), s->algorithm, false);
				n += (size_t)snprintf(res + n, sizeof(res) - n, " header.a=%s", v3);
			}
			if (s->b[0]) {
				ar_value(v4, sizeof(v4), s->b, false);
				snprintf(res + n, sizeof(res) - n, " header.b=%s", v4);
			}
			ar_add(out, outlen, &k, res);
		}
		any = true;
	}
	if (!any && k + 6 < outlen)
		memcpy(out + k, "; none", 7);       /* RFC 8601 2.2: no-result */
}

/* ---- the check ----------------------------------------------------------- */

struct dkim_hook {
	struct dkim_check *c;
	struct check_ctx *ctx;
	struct check_call *call;
};

/* Past CFWS (RFC 5322 3.2.2) from v[i]: white space, line ends and
 * comments, nested, with quoted-pairs; an unterminated comment runs to
 * the end. */
static size_t skip_cfws(const char *v, size_t n, size_t i)
{
	unsigned depth = 0;
	for (; i < n; i++) {
		char ch = v[i];
		if (depth && ch == '\\')
			i++;
		else if (ch == '(')
			depth++;
		else if (depth && ch == ')')
			depth--;
		else if (!depth && ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n')
			break;
	}
	return i;
}

/* The field's value starts with authserv-id id (RFC 8601 2.2), after
 * CFWS: a token, ended by ';', white space or '(', or a quoted-string
 * whose content (unfolded, quoted-pairs undone, blanks at its ends
 * passed over) is id; case-insensitive.  Whatever follows (a comment
 * before the ';') does not matter. */
static bool claims_id(const struct hdr_field *f, const char *id)
{
	const char *v = f->value;
	size_t n = f->value_len, i = skip_cfws(v, n, 0), k = 0;
	char got[300];
	bool quoted = i < n && v[i] == '"';
	for (i += quoted; i < n; i++) {
		char ch = v[i];
		if (quoted ? ch == '"' : (ch == ';' || ch == '(' || strchr(" \t\r\n", ch)))
			break;
		if (quoted && (ch == '\r' || ch == '\n' || ((ch == ' ' || ch == '\t') && k == 0)))
			continue;
		if (quoted && ch == '\\' && i + 1 < n)
			ch = v[++i];
		if (k + 1 >= sizeof(got))
			return false;
		got[k++] = ch;
	}
	while (quoted && k && (got[k - 1] == ' ' || got[k - 1] == '\t'))
		k--;
	return k == strlen(id) && strncasecmp(got, id, k) == 0;
}

static void dkim_answered(void *arg, const struct dkim_outcome *o)
{
	struct dkim_hook *h = arg;
	struct dkim_check *c = h->c;
	struct check_ctx *ctx = h->ctx;
	struct check_call *call = h->call;
	free(h);

	ctx->auth.dkim = o->summary;
	ctx->auth.ndkim = o->nsigs;
	memcpy(ctx->auth.dkim_sigs, o->sigs, sizeof(o->sigs));
	for (unsigned i = 0; i < o->nsigs; i++) {
		const struct auth_dkim_sig *s = &o->sigs[i];
		log_info(ctx->sid, ctx->qid, "dkim.signature", "result=%s domain=%s selector=%s alg=%s b=%s bits=%u "
			 "reason=%s", dkim_result_name(s->result), s->domain, s->selector, s->algorithm, s->b,
			 o->bits[i], s->reason);
	}
	log_info(ctx->sid, ctx->qid, "dkim.result", "result=%s signatures=%u skipped=%u truncated=%s problem=%s "
		 "queries=%u ms=%lld", dkim_result_name(o->summary), o->nsigs, o->skipped,
		 o->truncated ? "yes" : "no", o->problem, o->queries, o->ms);
	if (c->p->header) {
		char value[8192];
		dkim_auth_results(&ctx->auth, o->bits, c->authserv, value, sizeof(value));
		check_ctx_add_header(ctx, "Authentication-Results", value);
	}
	struct verdict v = { .kind = V_CONTINUE };
	if (c->p->reject_fail && o->summary == AUTH_DKIM_FAIL) {
		const struct auth_dkim_sig *s = &o->sigs[0];
		for (unsigned i = 0; i < o->nsigs; i++)
			if (o->sigs[i].result == AUTH_DKIM_FAIL) {
				s = &o->sigs[i];
				break;
			}
		v.kind = V_REJECT;
		v.code = 550;
		snprintf(v.enh, sizeof(v.enh), "5.7.20");
		snprintf(v.reason, sizeof(v.reason), "No passing DKIM signature found (d=%s s=%s: %s)", s->domain,
			 s->selector, s->reason);
	}
	check_done(call, &v);
}

static void dkim_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct dkim_check *c = inst;
	ctx->auth.dkim = AUTH_DKIM_UNCHECKED;
	ctx->auth.ndkim = 0;
	if (!ctx->data) {
		check_continue(call);
		return;
	}
	size_t hlen = ctx->header_bytes && ctx->header_bytes <= ctx->len ? ctx->header_bytes
									   : hdr_body_start(ctx->data, ctx->len);
	/* Authentication-Results fields that claim to be ours did not come
	 * from us: removed (RFC 8601 5) when we add our own, else logged. */
	struct hdr_field f;
	unsigned nar = 0, nforged = 0;
	for (size_t pos = 0; hdr_next(ctx->data, hlen, &pos, &f); )
		if (hdr_is(&f, "Authentication-Results")) {
			nar++;
			if (claims_id(&f, c->authserv)) {
				nforged++;
				if (c->p->header)
					check_ctx_remove_header(ctx, "Authentication-Results", nar);
			}
		}
	if (nforged)
		log_warn(ctx->sid, ctx->qid, "dkim.forged_authentication_results", "count=%u authserv_id=%s removed=%s "
			 "client=%s", nforged, c->authserv, c->p->header ? "yes" : "no",
			 ctx->client ? ctx->client->addr : "");
	struct dkim_hook *h = xcalloc(1, sizeof(*h));
	h->c = c;
	h->ctx = ctx;
	h->call = call;
	/* Unsigned (most mail): the answer is known here, without the trip
	 * through a worker thread. */
	if (count_fields(ctx->data, hlen, "DKIM-Signature") == 0) {
		struct dkim_outcome o;
		memset(&o, 0, sizeof(o));
		o.summary = AUTH_DKIM_NONE;
		count_result(c, o.summary);
		dkim_answered(h, &o);
		return;
	}
	dkim_verify_message(c, ctx->data, ctx->len, dkim_answered, h);
}

/* One worker's library instance, with its options and hooks. */
static DKIM_LIB *make_lib(const struct dkim_params *p, char *why, size_t whylen)
{
	DKIM_LIB *lib = dkim_init(NULL, NULL);
	unsigned int flags = DKIM_LIBFLAGS_FIXCRLF | DKIM_LIBFLAGS_BADSIGHANDLES;
	unsigned int bits = (unsigned)p->min_key_bits;
	if (!lib) {
		snprintf(why, whylen, "dkim_init failed");
		return NULL;
	}
	if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags)) != DKIM_STAT_OK ||
	    dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_MINKEYBITS, &bits, sizeof(bits)) != DKIM_STAT_OK ||
	    dkim_set_key_lookup(lib, key_lookup) != DKIM_STAT_OK ||
	    dkim_set_prescreen(lib, prescreen) != DKIM_STAT_OK) {
		snprintf(why, whylen, "cannot set libopendkim options");
		dkim_close(lib);
		return NULL;
	}
	return lib;
}

static void *worker_init(void *owner, size_t i, char *why, size_t whylen)
{
	(void)i;
	struct dkim_check *c = owner;
	return make_lib(c->p, why, whylen);
}

static void worker_fini(void *owner, void *state)
{
	(void)owner;
	dkim_close(state);
}

/* Verifications not handed back at the end belong to sessions that are
 * gone (a check is freed only when no session uses it). */
static const struct workers_def dkim_workers = {
	.max_waiting = MAX_WAITING,
	.init = worker_init,
	.fini = worker_fini,
	.run = run_job,
	.collect = count_job,
	.done = job_done,
	.discard = free_job,
};

static void dkim_free_check(void *inst)
{
	struct dkim_check *c = inst;
	if (!c)
		return;
	workers_free(c->pool);
	free(c);
}

static void dkim_stop_check(void *inst)
{
	struct dkim_check *c = inst;
	workers_free(c->pool);  /* a verification in progress reads the session's message */
	c->pool = NULL;
}

static void *dkim_init_check(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct dkim_params *p = params;
	if (!env->dns || !env->base) {
		snprintf(why, whylen, "needs the process's resolver and event loop");
		return NULL;
	}
	struct dkim_check *c = xcalloc(1, sizeof(*c));
	c->p = p;
	c->dns = env->dns;
	snprintf(c->authserv, sizeof(c->authserv), "%s", env->hostname && *env->hostname ? env->hostname : "localhost");
	if (env->metrics)
		c->m_results = metrics_counter(env->metrics, "rampart_dkim_verify_total",
					       "DKIM signatures verified, by result (none: an unsigned message).");
	c->pool = workers_new(env->base, (size_t)p->threads, &dkim_workers, c, why, whylen);
	if (!c->pool) {
		dkim_free_check(c);
		return NULL;
	}
	return c;
}

const struct check_def check_dkim = {
	.name = "dkim",
	.doc = "DKIM verification (RFC 6376, ed25519 RFC 8463) of every signature; an "
	       "Authentication-Results header (RFC 8601) with the SPF and DKIM results",
	.params = &dkim_params_set,
	.init = dkim_init_check,
	.free = dkim_free_check,
	.stop = dkim_stop_check,
	.hooks = { [PHASE_MESSAGE] = dkim_message },
};
