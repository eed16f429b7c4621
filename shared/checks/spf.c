/*
 * spf.c — SPF (RFC 7208, Maraboli DM30): may the client send mail for the
 * sender's domain?
 *
 * At MAIL the identity is the MAIL FROM domain, or the HELO name for the
 * null sender (RFC 7208 2.4, 2.3).  With check_helo on, the HELO name is
 * evaluated first and a HELO fail decides (RFC 7208 2.3 recommends it);
 * otherwise the MAIL FROM result does.  libspf2 evaluates the records, and
 * its DNS goes through the process's resolver (shared/util/dns): libspf2's
 * resolver hook is synchronous, so evaluations run on worker threads
 * (shared/util/workers) that wait for their answers (dns_query_wait), and
 * the results come back to the event loop through an eventfd.  The loop
 * never waits.
 *
 * Around libspf2, this file closes what it misses of RFC 7208:
 *   - records (libspf2's get_spf hook): TXT only; "v=spf1" then a space or
 *     the end; two records, bytes outside printable ASCII, or syntax
 *     libspf2 lets through (record_prepare: unknown mechanisms, malformed
 *     domain-specs and CIDRs, modifiers twice, bad macros) are permerror;
 *     include or redirect of a domain without a record is permerror;
 *     redirect= applies after the mechanisms wherever it is written, and
 *     /0 CIDRs work (libspf2 refuses them);
 *   - limits (4.6.4), counted over the whole evaluation: 10 DNS-querying
 *     terms (libspf2 restarts its count in each include), void lookups
 *     (max_void_lookups, default 2; libspf2 has none), more than 10 MX
 *     names permerror, PTR names past 10 ignored (5.5), and a cap on DNS
 *     queries; a limit hit stops the evaluation with permerror;
 *   - names: a malformed domain (4.3) is none without a lookup; an expanded
 *     name over 253 octets loses labels on the left (7.3); CNAMEs are
 *     followed even where unbound's local data does not;
 *   - clients on 127/8 and ::1 are evaluated like any other (libspf2 passes
 *     them whatever the record says);
 *   - the explanation (get_exp hook, 6.2): the exp= TXT record is fetched
 *     and expanded (spaces and upper-case macros done here: libspf2
 *     garbles them); a DNS error, no or several records, bytes outside
 *     printable ASCII or a syntax error give the default explanation (the
 *     "explanation" parameter).
 * The address lookups of an mx or ptr term are told from new terms by
 * their names (those of the MX or PTR answer just before); the PTR lookup
 * of the %{p} macro counts as a term (libspf2 does it once per
 * evaluation; at most one too many).  Left as libspf2 does it: %{i} of an
 * IPv6 client in lower-case nibbles (as RFC 7208 7.4's example).
 *
 * Each result maps to an action (continue, tag, reject, tempfail).  The
 * message gets a Received-SPF header (RFC 7208 9.1); tag adds X-Rampart-SPF.
 * The result, domain and identity stay in ctx->auth for the checks that
 * follow.  Authenticated clients and skip_networks (our own relays and
 * users) are not checked.
 */
#include "spf.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/dns.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/net.h"
#include "../util/workers.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <spf2/spf.h>
#include <spf2/spf_dns.h>

#define MAX_TERMS       10      /* RFC 7208 4.6.4 */
#define MAX_PTR_NAMES   10      /* RFC 7208 4.6.4 / 5.5: the rest ignored */
#define MAX_PENDING     16      /* names of an MX or PTR answer awaiting their address lookups */
#define MAX_QUERIES     150     /* every DNS query of one evaluation (10 terms x 10 addresses + ...) */
#define MAX_WAITING     1024    /* evaluations queued for the workers */
#define MAX_CNAMES      8       /* CNAMEs followed in a row */
#define MAX_THREADS     32

enum spf_action { ACT_CONTINUE, ACT_TAG, ACT_REJECT, ACT_TEMPFAIL };
static const char *const action_names[] = { "continue", "tag", "reject", "tempfail" };

/* ---- parameters ---------------------------------------------------------- */

struct spf_params {
	int act[AUTH_SPF_PERMERROR + 1];    /* per result; [AUTH_SPF_UNCHECKED] unused */
	long long timeout;
	long long threads;
	long long max_void_lookups;
	struct strlist skip_networks;
	bool skip_authenticated;
	bool check_helo;
	bool header;
	char *explanation;
};

#define ACTIONS "continue|tag|reject|tempfail"

static const struct param_def spf_param_defs[] = {
	{ "pass", PT_ENUM, "continue", 0, 0, ACTIONS, offsetof(struct spf_params, act[AUTH_SPF_PASS]),
	  "action for an SPF pass (continue, tag: X-Rampart-SPF header, reject: 550, tempfail: 451)" },
	{ "fail", PT_ENUM, "reject", 0, 0, ACTIONS, offsetof(struct spf_params, act[AUTH_SPF_FAIL]),
	  "action for fail: the domain says the client may not send for it (reject: 550 5.7.23)" },
	{ "softfail", PT_ENUM, "tag", 0, 0, ACTIONS, offsetof(struct spf_params, act[AUTH_SPF_SOFTFAIL]),
	  "action for softfail: probably not allowed (RFC 7208 8.5: accept, mark)" },
	{ "neutral", PT_ENUM, "continue", 0, 0, ACTIONS, offsetof(struct spf_params, act[AUTH_SPF_NEUTRAL]),
	  "action for neutral: the domain makes no assertion" },
	{ "none", PT_ENUM, "continue", 0, 0, ACTIONS, offsetof(struct spf_params, act[AUTH_SPF_NONE]),
	  "action for none: no SPF record, or no usable domain" },
	{ "temperror", PT_ENUM, "tempfail", 0, 0, ACTIONS, offsetof(struct spf_params, act[AUTH_SPF_TEMPERROR]),
	  "action for temperror: a DNS error or the timeout (tempfail: 451 4.7.24, the client retries)" },
	{ "permerror", PT_ENUM, "tag", 0, 0, ACTIONS, offsetof(struct spf_params, act[AUTH_SPF_PERMERROR]),
	  "action for permerror: the domain's records are broken (a publisher's mistake, not forgery: "
	  "rejecting would lose legitimate mail, so the default only marks it)" },
	{ "timeout", PT_TIME, "20s", 100, 300000, NULL, offsetof(struct spf_params, timeout),
	  "longest evaluation, DNS included (RFC 7208 4.6.4: at least 20 s); then temperror" },
	{ "threads", PT_INT, "2", 1, MAX_THREADS, NULL, offsetof(struct spf_params, threads),
	  "worker threads evaluating SPF (each waits on DNS, not on CPU)" },
	{ "max_void_lookups", PT_INT, "2", 0, 100, NULL, offsetof(struct spf_params, max_void_lookups),
	  "DNS lookups answering NXDOMAIN or no data allowed per evaluation; one more is permerror "
	  "(RFC 7208 4.6.4)" },
	{ "skip_networks", PT_LIST, "", 0, 0, NULL, offsetof(struct spf_params, skip_networks),
	  "client networks (CIDR) not checked: our own relays, backup MX, forwarders" },
	{ "skip_authenticated", PT_BOOL, "yes", 0, 0, NULL, offsetof(struct spf_params, skip_authenticated),
	  "authenticated clients are not checked" },
	{ "check_helo", PT_BOOL, "no", 0, 0, NULL, offsetof(struct spf_params, check_helo),
	  "evaluate the HELO name first; a HELO fail decides (RFC 7208 2.3)" },
	{ "header", PT_BOOL, "yes", 0, 0, NULL, offsetof(struct spf_params, header),
	  "add a Received-SPF header (RFC 7208 9.1)" },
	{ "explanation", PT_STR, "%{c} is not allowed to send mail for %{o}", 1, 0, NULL,
	  offsetof(struct spf_params, explanation),
	  "explanation of a fail when the domain gives none (SPF macros, RFC 7208 7)" },
	PARAM_END
};

static const struct param_set spf_params_set = {
	"check.spf", "SPF (RFC 7208): is the client allowed to send for the sender's domain", spf_param_defs,
	sizeof(struct spf_params)
};

/* ---- state --------------------------------------------------------------- */

struct spf_job {
	struct workers_job link;        /* first: the pool's */
	char ip[INET6_ADDRSTRLEN];
	char *mailfrom;
	char *helo;
	long long start_ms, deadline_ms;
	spf_done_fn done;
	void *arg;
	struct spf_outcome out;
};

struct spf_worker {
	struct spf_check *c;
	SPF_server_t *server;
	SPF_dns_server_t layer;         /* libspf2's resolver: hook is this worker */
	struct spf_eval *ev;            /* the evaluation running on this thread */
};

struct spf_check {
	const struct spf_params *p;
	struct dns *dns;
	char receiver[256];
	struct metric *m_results;
	struct workers *pool;           /* the worker threads */
};

/* One evaluation of one identity, on a worker thread. */
struct spf_eval {
	struct spf_check *c;
	SPF_request_t *req;
	SPF_response_t *resp;
	long long deadline_ms;
	unsigned terms, voids, queries, records;
	enum { STOP_NO, STOP_LIMIT, STOP_TIME } stop;
	char problem[200];
	char pending[MAX_PENDING][256];
	size_t npending;
	bool any_address;               /* this term matches any address (a/0, mx/0) */
	bool explaining;                /* lookups for an explanation: not counted */
	char exp_text[512];             /* the last exp= explanation get_exp made */
	char record_problem[200];       /* why a record was refused */
};

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

const char *spf_result_name(enum auth_spf r)
{
	switch (r) {
	case AUTH_SPF_PASS:      return "pass";
	case AUTH_SPF_FAIL:      return "fail";
	case AUTH_SPF_SOFTFAIL:  return "softfail";
	case AUTH_SPF_NEUTRAL:   return "neutral";
	case AUTH_SPF_TEMPERROR: return "temperror";
	case AUTH_SPF_PERMERROR: return "permerror";
	case AUTH_SPF_NONE:
	case AUTH_SPF_UNCHECKED: break;
	}
	return "none";
}

/* ---- names --------------------------------------------------------------- */

/* A name fit for a query: labels of 1..63 octets, one final dot dropped,
 * and over 253 octets its leftmost labels dropped until it fits (RFC 7208
 * 7.3); out gets it lower-cased.  (No other rule: macros make names of any
 * octets.) */
static bool query_name(const char *in, char *out, size_t outlen)
{
	size_t n = in ? strlen(in) : 0;
	if (n && in[n - 1] == '.')
		n--;
	while (n > 253) {
		const char *dot = memchr(in, '.', n);
		if (!dot)
			return false;
		n -= (size_t)(dot + 1 - in);
		in = dot + 1;
	}
	if (n == 0 || n >= outlen)
		return false;
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (++label > 63) {
			return false;
		}
		out[i] = (char)tolower((unsigned char)in[i]);
	}
	if (label == 0)
		return false;
	out[n] = '\0';
	return true;
}

/* RFC 7208 4.3: a domain check_host() can start from: a query name of at
 * least two labels, printable ASCII, not an address literal. */
static bool domain_usable(const char *d)
{
	char tmp[256];
	size_t n = strlen(d);
	if (n > 254 || (n == 254 && d[253] != '.'))
		return false;           /* not shortened: that would be another domain */
	if (!query_name(d, tmp, sizeof(tmp)) || !strchr(tmp, '.') || tmp[0] == '[')
		return false;
	for (const char *p = tmp; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return false;
	return true;
}

static bool printable_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

/* Third-party text for a reply or a header: printable ASCII, bounded;
 * in a comment, parentheses and backslashes are replaced too. */
static void clean_text(char *out, size_t outlen, const char *in, bool comment)
{
	size_t k = 0;
	for (; in && *in && k + 1 < outlen; in++) {
		unsigned char ch = (unsigned char)*in;
		if (ch < 0x20 || ch >= 0x7f)
			ch = '?';
		else if (comment && ch == '(')
			ch = '[';
		else if (comment && ch == ')')
			ch = ']';
		else if (comment && ch == '\\')
			ch = '/';
		out[k++] = (char)ch;
	}
	out[k] = '\0';
}

/* ---- record syntax (RFC 7208 4.6, 5, 6, 7.1) ------------------------------
 *
 * libspf2 accepts records RFC 7208 calls permerror (unknown mechanisms,
 * redirect: as a mechanism, empty or malformed domain-specs, an exists with
 * a CIDR, leading zeros in CIDRs, modifiers twice, bad macros in unknown
 * modifiers) and refuses some it allows (modifier names with "-", "_" or
 * ".", /0 CIDRs).  So the text is checked here first, and libspf2 gets it
 * rewritten: unknown modifiers (ignored by RFC 7208 6) dropped, redirect=
 * moved after the mechanisms (it applies only if none matched, 6.1), and
 * /0 for the client's address family rewritten (libspf2 reads 0 as "no
 * CIDR"): ip4:x/0 as its two halves (the other family's /0 dropped: it
 * cannot match), a/0 and mx/0 as the same term on "<domain>.ANY_LABEL",
 * whose addresses the resolver below answers as the client's own.  (A
 * record that writes ANY_LABEL itself gets no more than a /0 on its own
 * terms: it could write +all.) */

#define ANY_LABEL "_rampart-any-address"

/* A macro-string (explain: an explain-string, spaces and c/r/t allowed).
 * *ends_expand: the last token is a macro-expand. */
static bool macro_ok(const char *s, size_t n, bool explain, bool *ends_expand)
{
	bool last = false;
	for (size_t i = 0; i < n; ) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '%') {
			if (i + 1 >= n)
				return false;
			char d = s[i + 1];
			if (d == '%' || d == '_' || d == '-') {
				i += 2;
				last = true;
				continue;
			}
			if (d != '{' || i + 2 >= n)
				return false;
			size_t j = i + 2;
			char letter = (char)tolower((unsigned char)s[j]);
			if (!strchr("slodipvhcrt", letter) || (!explain && strchr("crt", letter)))
				return false;
			j++;
			while (j < n && isdigit((unsigned char)s[j]))
				j++;
			if (j < n && tolower((unsigned char)s[j]) == 'r')
				j++;
			while (j < n && strchr(".-+,/_=", s[j]))
				j++;
			if (j >= n || s[j] != '}')
				return false;
			i = j + 1;
			last = true;
		} else if ((ch >= 0x21 && ch <= 0x7e) || (explain && ch == ' ')) {
			i++;
			last = false;
		} else {
			return false;
		}
	}
	if (ends_expand)
		*ends_expand = last;
	return true;
}

/* toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum ) */
static bool toplabel_ok(const char *s, size_t n)
{
	if (n == 0 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
		return false;
	bool alpha = false, dash = false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '-')
			dash = true;
		else if (isalpha((unsigned char)s[i]))
			alpha = true;
		else if (!isdigit((unsigned char)s[i]))
			return false;
	}
	return alpha || dash;
}

/* domain-spec = macro-string domain-end;
 * domain-end = ( "." toplabel [ "." ] ) / macro-expand */
static bool domain_spec_ok(const char *s, size_t n)
{
	bool expand = false;
	if (n == 0 || !macro_ok(s, n, false, &expand))
		return false;
	if (expand)
		return true;
	if (s[n - 1] == '.')
		n--;
	size_t dot = n;
	while (dot > 0 && s[dot - 1] != '.')
		dot--;
	return dot > 0 && toplabel_ok(s + dot, n - dot);
}

/* A CIDR length: 0 or no leading zero, at most max; -1 if not one. */
static int cidr_len(const char *s, size_t n, int max)
{
	if (n == 0 || n > 3 || (n > 1 && s[0] == '0'))
		return -1;
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= max ? v : -1;
}

/* Strip a trailing "/N" (after a character other than '/'); -2 if none,
 * -1 if malformed. */
static int take_cidr(const char *s, size_t *n, bool dual, int max)
{
	size_t e = *n, d = e;
	while (d > 0 && isdigit((unsigned char)s[d - 1]))
		d--;
	if (d == e || d == 0 || s[d - 1] != '/')
		return -2;
	if (dual ? (d < 2 || s[d - 2] != '/') : (d >= 2 && s[d - 2] == '/'))
		return -2;
	int v = cidr_len(s + d, e - d, max);
	if (v < 0)
		return -1;
	*n = d - (dual ? 2 : 1);
	return v;
}

static bool lint_fail(char *problem, size_t plen, const char *what, const char *term, size_t tl)
{
	snprintf(problem, plen, "%s: \"%.*s\"", what, (int)(tl > 80 ? 80 : tl), term);
	return false;
}

/* Check record (printable ASCII, starting "v=spf1") and write the text
 * libspf2 gets into out; false and problem if RFC 7208 makes it a
 * permerror.  family: the client's, AF_INET or AF_INET6. */
static bool record_prepare(const char *record, int family, struct buf *out, char *problem, size_t plen)
{
	const char *p = record + 6;
	const char *redirect = NULL;
	size_t redirect_len = 0;
	bool exp_seen = false;
	buf_puts(out, "v=spf1");
	for (;;) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *t = p;
		while (*p && *p != ' ')
			p++;
		size_t tl = (size_t)(p - t);
		const char *b = t;
		char q = 0;
		if (strchr("+-?~", *b)) {
			q = *b;
			b++;
		}
		size_t bl = (size_t)(p - b);
		/* a modifier: name "=" */
		size_t nl = 0;
		if (isalpha((unsigned char)b[0]))
			while (nl < bl && (isalnum((unsigned char)b[nl]) || strchr("-_.", b[nl])))
				nl++;
		if (nl > 0 && nl < bl && b[nl] == '=') {
			const char *v = b + nl + 1;
			size_t vl = bl - nl - 1;
			if (q)
				return lint_fail(problem, plen, "a modifier with a qualifier", t, tl);
			if (nl == 8 && strncasecmp(b, "redirect", 8) == 0) {
				if (redirect)
					return lint_fail(problem, plen, "redirect= twice", t, tl);
				if (!domain_spec_ok(v, vl))
					return lint_fail(problem, plen, "bad domain-spec", t, tl);
				redirect = t;
				redirect_len = tl;
			} else if (nl == 3 && strncasecmp(b, "exp", 3) == 0) {
				if (exp_seen)
					return lint_fail(problem, plen, "exp= twice", t, tl);
				if (!domain_spec_ok(v, vl))
					return lint_fail(problem, plen, "bad domain-spec", t, tl);
				exp_seen = true;
				buf_printf(out, " %.*s", (int)tl, t);
			} else if (!macro_ok(v, vl, false, NULL)) {
				return lint_fail(problem, plen, "bad macro in a modifier", t, tl);
			}
			continue;       /* unknown modifiers are ignored (RFC 7208 6) */
		}
		/* a mechanism */
		size_t ml = 0;
		while (ml < bl && isalnum((unsigned char)b[ml]))
			ml++;
		const char *r = b + ml;
		size_t rl = bl - ml;
		char name[8];
		if (ml == 0 || ml >= sizeof(name))
			return lint_fail(problem, plen, "unknown mechanism", t, tl);
		for (size_t i = 0; i < ml; i++)
			name[i] = (char)tolower((unsigned char)b[i]);
		name[ml] = '\0';
		const char *qs = q ? (const char[]){ q, '\0' } : "";
		if (strcmp(name, "all") == 0) {
			if (rl)
				return lint_fail(problem, plen, "bad all", t, tl);
		} else if (strcmp(name, "include") == 0 || strcmp(name, "exists") == 0) {
			if (rl < 1 || r[0] != ':' || !domain_spec_ok(r + 1, rl - 1))
				return lint_fail(problem, plen, "bad domain-spec", t, tl);
		} else if (strcmp(name, "ptr") == 0) {
			if (rl && (r[0] != ':' || !domain_spec_ok(r + 1, rl - 1)))
				return lint_fail(problem, plen, "bad domain-spec", t, tl);
		} else if (strcmp(name, "a") == 0 || strcmp(name, "mx") == 0) {
			size_t n = rl;
			int c6 = take_cidr(r, &n, true, 128);
			int c4 = c6 == -1 ? -1 : take_cidr(r, &n, false, 32);
			if (c6 == -1 || c4 == -1)
				return lint_fail(problem, plen, "bad CIDR length", t, tl);
			if (n && (r[0] != ':' || !domain_spec_ok(r + 1, n - 1)))
				return lint_fail(problem, plen, "bad domain-spec", t, tl);
			int c = family == AF_INET ? c4 : c6;
			if (c == 0) {
				/* any address of the client's family matches */
				size_t dl = n ? n - 1 : 0;
				if (dl && r[n - 1] == '.')
					dl--;
				buf_printf(out, " %s%s:%.*s." ANY_LABEL, qs, name, (int)(n ? dl : 4),
					   n ? r + 1 : "%{d}");
				continue;
			}
			buf_printf(out, " %s%s%.*s", qs, name, (int)n, r);
			if (c > 0)
				buf_printf(out, family == AF_INET ? "/%d" : "//%d", c);
			continue;
		} else if (strcmp(name, "ip4") == 0 || strcmp(name, "ip6") == 0) {
			bool v4 = name[2] == '4';
			size_t n = rl;
			int c = take_cidr(r, &n, false, v4 ? 32 : 128);
			char addr[64];
			unsigned char bin[16];
			if (c == -1 || n < 2 || r[0] != ':' || n - 1 >= sizeof(addr))
				return lint_fail(problem, plen, v4 ? "bad ip4" : "bad ip6", t, tl);
			memcpy(addr, r + 1, n - 1);
			addr[n - 1] = '\0';
			if (inet_pton(v4 ? AF_INET : AF_INET6, addr, bin) != 1)
				return lint_fail(problem, plen, v4 ? "bad ip4" : "bad ip6", t, tl);
			if (c == 0) {
				if ((family == AF_INET) == v4)      /* the two halves: everything */
					buf_printf(out, v4 ? " %sip4:0.0.0.0/1 %sip4:128.0.0.0/1"
							   : " %sip6:::/1 %sip6:8000::/1", qs, qs);
				continue;                           /* else it cannot match */
			}
		} else {
			return lint_fail(problem, plen, "unknown mechanism", t, tl);
		}
		buf_printf(out, " %.*s", (int)tl, t);
	}
	if (redirect)
		buf_printf(out, " %.*s", (int)redirect_len, redirect);
	return true;
}

/* ---- libspf2's resolver: the process's DNS, with RFC 7208's limits ------- */

static void stop_eval(struct spf_eval *e, int why, const char *fmt, unsigned n)
{
	if (e->stop)
		return;
	e->stop = why;
	snprintf(e->problem, sizeof(e->problem), fmt, n);
}

/* One more DNS-querying term; false (and the evaluation stops) past 10. */
static bool count_term(struct spf_eval *e)
{
	if (e->stop)
		return false;
	if (++e->terms > MAX_TERMS) {
		stop_eval(e, STOP_LIMIT, "more than %u DNS-querying mechanisms (RFC 7208 4.6.4)", MAX_TERMS);
		return false;
	}
	return true;
}

/* One query, within the evaluation's deadline and query cap.  False: the
 * evaluation is stopped (res is then DNS_TEMPFAIL, nothing to free). */
static bool raw_query(struct spf_eval *e, const char *name, int type, struct dns_result *res)
{
	memset(res, 0, sizeof(*res));
	res->status = DNS_TEMPFAIL;
	if (e->stop)
		return false;
	if (workers_stopping(e->c->pool)) {
		stop_eval(e, STOP_TIME, "the check is stopping (%u DNS queries)", e->queries);
		return false;
	}
	if (e->queries >= MAX_QUERIES) {
		stop_eval(e, STOP_LIMIT, "more than %u DNS queries", MAX_QUERIES);
		return false;
	}
	long long left = e->deadline_ms - now_ms();
	if (left <= 0) {
		stop_eval(e, STOP_TIME, "no answer within the timeout (%u DNS queries)", e->queries);
		return false;
	}
	e->queries++;
	dns_query_wait(e->c->dns, name, type, left, res);
	if (res->status == DNS_TEMPFAIL && now_ms() >= e->deadline_ms) {
		dns_result_free(res);
		stop_eval(e, STOP_TIME, "no answer within the timeout (%u DNS queries)", e->queries);
		return false;
	}
	return true;
}

/* A query of the evaluation: CNAMEs followed, void lookups counted. */
static bool eval_query(struct spf_eval *e, const char *name, int type, bool count_void, struct dns_result *res)
{
	if (!raw_query(e, name, type, res))
		return false;
	/* unbound answers CNAMEs of its local data (labs, tests) without
	 * following them, as a resolver on the network would: follow them here
	 * (on the network this finds nothing: there, no data means no CNAME). */
	char seen[MAX_CNAMES + 1][256];
	size_t nseen = 0;
	snprintf(seen[nseen++], sizeof(seen[0]), "%s", name);
	while (res->status == DNS_NODATA && type != ns_t_cname && nseen <= MAX_CNAMES) {
		struct dns_result cn;
		if (!raw_query(e, seen[nseen - 1], ns_t_cname, &cn)) {
			dns_result_free(res);
			return false;
		}
		char target[256];
		bool follow = cn.status == DNS_OK && cn.n > 0 && query_name(cn.rr[0].text, target, sizeof(target));
		dns_result_free(&cn);
		for (size_t i = 0; follow && i < nseen; i++)
			if (strcmp(seen[i], target) == 0)
				follow = false;         /* a loop: no data */
		if (!follow)
			break;
		dns_result_free(res);
		if (!raw_query(e, target, type, res))
			return false;
		snprintf(seen[nseen++], sizeof(seen[0]), "%s", target);
	}
	if (count_void && (res->status == DNS_NXDOMAIN || res->status == DNS_NODATA) &&
	    ++e->voids > (unsigned)e->c->p->max_void_lookups) {
		dns_result_free(res);
		stop_eval(e, STOP_LIMIT, "more than %u void DNS lookups (RFC 7208 4.6.4)",
			  (unsigned)e->c->p->max_void_lookups);
		return false;
	}
	return true;
}

static SPF_dns_rr_t *rr_new(SPF_dns_server_t *s, const char *domain, ns_type type, int herrno)
{
	SPF_dns_rr_t *rr = SPF_dns_rr_new_init(s, domain, type, 0, herrno);
	if (!rr)
		log_fatal(NULL, NULL, "out_of_memory", "what=%s", "libspf2 DNS answer");
	return rr;
}

static void rr_put(SPF_dns_rr_t *rr, int idx, const void *p, size_t n)
{
	if (SPF_dns_rr_buf_realloc(rr, idx, n) != SPF_E_SUCCESS)
		log_fatal(NULL, NULL, "out_of_memory", "what=%s", "libspf2 DNS answer");
	memcpy(rr->rr[idx], p, n);
}

/* An address lookup for a name of the MX or PTR answer just before? */
static bool take_pending(struct spf_eval *e, const char *name)
{
	for (size_t i = 0; i < e->npending; i++) {
		if (strcmp(e->pending[i], name) == 0) {
			e->npending--;
			if (i != e->npending)
				memcpy(e->pending[i], e->pending[e->npending], sizeof(e->pending[i]));
			return true;
		}
	}
	return false;
}

static SPF_dns_rr_t *spf_lookup(SPF_dns_server_t *s, const char *domain, ns_type type, int should_cache)
{
	(void)should_cache;
	struct spf_worker *w = s->hook;
	struct spf_eval *e = w->ev;
	char name[256];
	if (!e)
		return rr_new(s, domain, type, TRY_AGAIN);
	/* an a/0 or mx/0 term (record_prepare): drop the mark, remember */
	bool any = false;
	size_t dl = strlen(domain), ml = sizeof(ANY_LABEL) - 1;
	if (dl > ml + 1 && strcasecmp(domain + dl - ml, ANY_LABEL) == 0 && domain[dl - ml - 1] == '.') {
		char *d = xstrndup(domain, dl - ml - 1);
		bool ok = query_name(d, name, sizeof(name));
		free(d);
		if (!ok)
			return rr_new(s, domain, type, HOST_NOT_FOUND);
		any = true;
	} else if (!query_name(domain, name, sizeof(name))) {
		return rr_new(s, domain, type, HOST_NOT_FOUND);
	}
	bool secondary = !any && (type == ns_t_a || type == ns_t_aaaa) && take_pending(e, name);
	if (!secondary) {
		e->npending = 0;
		e->any_address = any;
		if (!e->explaining && !count_term(e))
			return rr_new(s, domain, type, TRY_AGAIN);
	}
	struct dns_result res;
	if (!eval_query(e, name, (int)type, !e->explaining, &res))
		return rr_new(s, domain, type, TRY_AGAIN);
	int herrno = res.status == DNS_OK ? NETDB_SUCCESS : res.status == DNS_NXDOMAIN ? HOST_NOT_FOUND
		: res.status == DNS_NODATA ? NO_DATA : TRY_AGAIN;
	SPF_dns_rr_t *rr = rr_new(s, domain, type, herrno);
	int n = 0;
	for (size_t i = 0; res.status == DNS_OK && i < res.n; i++) {
		const struct dns_rr *a = &res.rr[i];
		if (a->type != (int)type)
			continue;
		if (type == ns_t_a) {
			struct in_addr v4;
			if (inet_pton(AF_INET, a->text, &v4) == 1)
				rr_put(rr, n++, e->any_address ? &e->req->ipv4 : &v4, sizeof(v4));
		} else if (type == ns_t_aaaa) {
			struct in6_addr v6;
			if (inet_pton(AF_INET6, a->text, &v6) == 1)
				rr_put(rr, n++, e->any_address ? &e->req->ipv6 : &v6, sizeof(v6));
		} else {
			if (type == ns_t_ptr && n >= MAX_PTR_NAMES)
				break;
			char pn[256];
			bool host = type == ns_t_mx || type == ns_t_ptr;
			if (host && !query_name(a->text, pn, sizeof(pn)))
				continue;       /* no host to look up (a null MX, RFC 7505) */
			rr_put(rr, n++, a->text, strlen(a->text) + 1);
			if (host && e->npending < MAX_PENDING)
				memcpy(e->pending[e->npending++], pn, sizeof(pn));
		}
	}
	if (type == ns_t_mx && n > MAX_TERMS) {
		/* RFC 7208 4.6.4: an mx term may look up 10 names, no more */
		SPF_dns_rr_free(rr);
		dns_result_free(&res);
		stop_eval(e, STOP_LIMIT, "more than %u MX names (RFC 7208 4.6.4)", MAX_TERMS);
		return rr_new(s, domain, type, TRY_AGAIN);
	}
	rr->num_rr = n;
	if (n == 0 && herrno == NETDB_SUCCESS)
		rr->herrno = NO_DATA;
	dns_result_free(&res);
	return rr;
}

/* "v=spf1" then a space or the end (RFC 7208 4.5). */
static bool is_spf1(const char *t)
{
	return strncasecmp(t, "v=spf1", 6) == 0 && (t[6] == '\0' || t[6] == ' ');
}

/* The record of request->cur_dom, compiled (libspf2's get_spf hook; the
 * top level calls it first, then libspf2 for each include and redirect).
 * SPF_E_DNS_ERROR: temporary (or the evaluation stopped); SPF_E_NOT_SPF:
 * no record; anything else: a broken record (permerror). */
static SPF_errcode_t spf_get_spf(SPF_server_t *server, SPF_request_t *req, SPF_response_t *resp,
				 SPF_record_t **recp)
{
	struct spf_worker *w = server->resolver->hook;
	struct spf_eval *e = w->ev;
	*recp = NULL;
	if (!e)
		return SPF_E_DNS_ERROR;
	bool top = e->records++ == 0;
	e->npending = 0;
	e->any_address = false;
	if (!top && !count_term(e))
		return SPF_E_DNS_ERROR;
	char name[256];
	if (!query_name(req->cur_dom, name, sizeof(name)))
		return SPF_E_NOT_SPF;
	struct dns_result res;
	if (!eval_query(e, name, ns_t_txt, true, &res))
		return SPF_E_DNS_ERROR;
	if (res.status == DNS_TEMPFAIL || res.status == DNS_BOGUS) {
		dns_result_free(&res);
		return SPF_E_DNS_ERROR;
	}
	const char *text = NULL;
	size_t found = 0, len = 0;
	for (size_t i = 0; res.status == DNS_OK && i < res.n; i++) {
		if (is_spf1(res.rr[i].text)) {
			text = res.rr[i].text;
			len = res.rr[i].len;
			found++;
		}
	}
	struct buf prepared = BUF_INIT;
	SPF_errcode_t err = SPF_E_SUCCESS;
	if (found == 0) {
		err = SPF_E_NOT_SPF;
	} else if (found > 1) {
		err = SPF_E_MULTIPLE_RECORDS;
		snprintf(e->record_problem, sizeof(e->record_problem), "%s has more than one SPF record", name);
	} else if (!printable_ascii(text) || len != strlen(text)) {
		err = SPF_E_INVALID_CHAR;
		snprintf(e->record_problem, sizeof(e->record_problem),
			 "the SPF record of %s has bytes other than printable ASCII", name);
	} else if (!record_prepare(text, req->client_ver, &prepared, e->record_problem,
				   sizeof(e->record_problem))) {
		err = SPF_E_SYNTAX;
	} else {
		err = SPF_record_compile(server, resp, recp, buf_cstr(&prepared));
		if (err != SPF_E_SUCCESS) {
			if (*recp)
				SPF_record_free(*recp);
			*recp = NULL;
			snprintf(e->record_problem, sizeof(e->record_problem), "the SPF record of %s: %s", name,
				 SPF_strerror(err));
			if (err == SPF_E_NOT_SPF || err == SPF_E_DNS_ERROR)
				err = SPF_E_SYNTAX;     /* broken, whatever libspf2 calls it */
		}
	}
	buf_free(&prepared);
	dns_result_free(&res);
	return err;
}

/* The macro string that follows an SPF_macro_t (spf_record.h). */
static SPF_data_t *macro_data(SPF_macro_t *m)
{
	return (SPF_data_t *)(void *)((char *)m + sizeof(*m));
}

/* One macro ("%{...}", lower-case letter) expanded by libspf2 into out. */
static bool expand_macro(SPF_server_t *server, struct spf_eval *e, const char *macro, struct buf *out)
{
	SPF_macro_t *m = NULL;
	SPF_errcode_t err = SPF_record_compile_macro(server, e->resp, &m, macro);
	char *buf = NULL;
	size_t buflen = 0;
	if (err == SPF_E_SUCCESS && m)
		err = SPF_record_expand_data(server, e->req, e->resp, macro_data(m), m->macro_len, &buf, &buflen);
	if (m)
		SPF_macro_free(m);
	if (err == SPF_E_SUCCESS && buf)
		buf_puts(out, buf);
	free(buf);
	return err == SPF_E_SUCCESS;
}

/* An explain-string (checked by macro_ok) expanded: libspf2 expands each
 * macro; spaces, literals and the URL escaping of upper-case macros
 * (RFC 7208 7.3, upper-case hex as RFC 3986 2.1 asks) are done here, as
 * libspf2 garbles spaces and escapes in lower case. */
static bool expand_explain(SPF_server_t *server, struct spf_eval *e, const char *text, struct buf *out)
{
	for (const char *p = text; *p; ) {
		if (*p != '%') {
			buf_putc(out, *p++);
			continue;
		}
		if (p[1] != '{') {
			buf_puts(out, p[1] == '%' ? "%" : p[1] == '_' ? " " : "%20");
			p += 2;
			continue;
		}
		const char *end = strchr(p, '}');
		char macro[64];
		if (!end || (size_t)(end - p) + 2 > sizeof(macro))
			return false;
		memcpy(macro, p, (size_t)(end - p) + 1);
		macro[end - p + 1] = '\0';
		bool upper = isupper((unsigned char)macro[2]);
		macro[2] = (char)tolower((unsigned char)macro[2]);
		struct buf v = BUF_INIT;
		bool ok = expand_macro(server, e, macro, &v);
		for (const char *c = buf_cstr(&v); ok && *c; c++) {
			if (!upper || isalnum((unsigned char)*c) || strchr("-._~", *c))
				buf_putc(out, *c);
			else
				buf_printf(out, "%%%02X", (unsigned char)*c);
		}
		buf_free(&v);
		if (!ok)
			return false;
		p = end + 1;
	}
	return true;
}

/* The explanation of a fail (libspf2's get_exp hook, RFC 7208 6.2):
 * domain is the expanded exp= target. */
static SPF_errcode_t spf_get_exp(SPF_server_t *server, const char *domain, char **bufp, size_t *buflenp)
{
	struct spf_worker *w = server->resolver->hook;
	struct spf_eval *e = w->ev;
	char name[256];
	struct dns_result res = { .status = DNS_TEMPFAIL };
	if (e && query_name(domain, name, sizeof(name)) && eval_query(e, name, ns_t_txt, false, &res) &&
	    res.status == DNS_OK && res.n == 1 && printable_ascii(res.rr[0].text) &&
	    res.rr[0].len == strlen(res.rr[0].text) &&
	    macro_ok(res.rr[0].text, res.rr[0].len, true, NULL)) {
		struct buf text = BUF_INIT;
		e->explaining = true;
		bool ok = expand_explain(server, e, res.rr[0].text, &text);
		e->explaining = false;
		dns_result_free(&res);
		if (ok)
			snprintf(e->exp_text, sizeof(e->exp_text), "%s", buf_cstr(&text));
		if (ok) {
			size_t n = text.len + 1;
			if (*buflenp < n) {
				char *nb = realloc(*bufp, n);
				if (!nb)
					log_fatal(NULL, NULL, "out_of_memory", "what=%s", "explanation");
				*bufp = nb;
				*buflenp = n;
			}
			memcpy(*bufp, buf_cstr(&text), n);
			buf_free(&text);
			return SPF_E_SUCCESS;
		}
		buf_free(&text);
	}
	dns_result_free(&res);
	if (!e || !server->explanation)
		return SPF_E_NOT_CONFIG;
	return SPF_record_expand_data(server, e->req, e->resp, macro_data(server->explanation),
				      server->explanation->macro_len, bufp, buflenp);
}

/* ---- one evaluation (worker thread) -------------------------------------- */

static enum auth_spf from_libspf2(SPF_result_t r)
{
	switch (r) {
	case SPF_RESULT_PASS:      return AUTH_SPF_PASS;
	case SPF_RESULT_FAIL:      return AUTH_SPF_FAIL;
	case SPF_RESULT_SOFTFAIL:  return AUTH_SPF_SOFTFAIL;
	case SPF_RESULT_NEUTRAL:   return AUTH_SPF_NEUTRAL;
	case SPF_RESULT_NONE:      return AUTH_SPF_NONE;
	case SPF_RESULT_TEMPERROR: return AUTH_SPF_TEMPERROR;
	case SPF_RESULT_PERMERROR:
	case SPF_RESULT_INVALID:   break;
	}
	return AUTH_SPF_PERMERROR;
}

static bool set_client(SPF_request_t *req, const char *ip)
{
	struct in6_addr v6;
	struct in_addr v4;
	if (inet_pton(AF_INET, ip, &v4) == 1)
		return SPF_request_set_ipv4(req, v4) == SPF_E_SUCCESS;
	if (inet_pton(AF_INET6, ip, &v6) != 1)
		return false;
	if (IN6_IS_ADDR_V4MAPPED(&v6)) {           /* an IPv4 client on an IPv6 socket */
		memcpy(&v4, &v6.s6_addr[12], 4);
		return SPF_request_set_ipv4(req, v4) == SPF_E_SUCCESS;
	}
	return SPF_request_set_ipv6(req, v6) == SPF_E_SUCCESS;
}

/* check_host() for one identity: the HELO name, or the MAIL FROM address. */
static void eval_identity(struct spf_worker *w, const struct spf_job *j, bool helo, struct spf_outcome *o)
{
	struct spf_check *c = w->c;
	memset(o, 0, sizeof(*o));
	o->result = AUTH_SPF_NONE;
	snprintf(o->identity, sizeof(o->identity), "%s", helo ? "helo" : "mailfrom");
	const char *dom;
	if (helo) {
		dom = j->helo;
		snprintf(o->sender, sizeof(o->sender), "postmaster@%s", j->helo);
	} else {
		const char *at = strrchr(j->mailfrom, '@');
		dom = at ? at + 1 : j->mailfrom;
		if (at && at != j->mailfrom)
			snprintf(o->sender, sizeof(o->sender), "%s", j->mailfrom);
		else
			snprintf(o->sender, sizeof(o->sender), "postmaster@%s", dom);
	}
	snprintf(o->domain, sizeof(o->domain), "%s", dom);
	if (!domain_usable(dom)) {
		snprintf(o->problem, sizeof(o->problem), "no usable domain (RFC 7208 4.3)");
		return;
	}
	SPF_request_t *req = SPF_request_new(w->server);
	if (!req)
		log_fatal(NULL, NULL, "out_of_memory", "what=%s", "libspf2 request");
	if (!set_client(req, j->ip)) {
		SPF_request_free(req);
		o->result = AUTH_SPF_PERMERROR;
		snprintf(o->problem, sizeof(o->problem), "client address %s is not an IP address", j->ip);
		return;
	}
	if (*j->helo && SPF_request_set_helo_dom(req, j->helo) != SPF_E_SUCCESS)
		log_fatal(NULL, NULL, "out_of_memory", "what=%s", "libspf2 request");
	if (!helo && SPF_request_set_env_from(req, j->mailfrom) != 0)
		log_fatal(NULL, NULL, "out_of_memory", "what=%s", "libspf2 request");
	req->cur_dom = helo ? req->helo_dom : req->env_from_dp;
	SPF_response_t *resp = SPF_response_new(req);
	if (!resp || !req->cur_dom)
		log_fatal(NULL, NULL, "out_of_memory", "what=%s", "libspf2 response");

	struct spf_eval e = { .c = c, .req = req, .resp = resp, .deadline_ms = j->deadline_ms };
	w->ev = &e;
	SPF_record_t *rec = NULL;
	SPF_errcode_t err = spf_get_spf(w->server, req, resp, &rec);
	if (err == SPF_E_SUCCESS) {
		resp->spf_record_exp = rec;
		SPF_record_interpret(rec, req, resp, 0);
		SPF_record_free(rec);
		resp->spf_record_exp = NULL;
		o->result = from_libspf2(resp->result);
		if (o->result == AUTH_SPF_PERMERROR)
			snprintf(o->problem, sizeof(o->problem), "%s",
				 e.record_problem[0] ? e.record_problem : SPF_strerror(resp->err));
		else if (o->result == AUTH_SPF_TEMPERROR)
			snprintf(o->problem, sizeof(o->problem), "a DNS lookup failed (%s)", SPF_strerror(resp->err));
	} else if (err == SPF_E_DNS_ERROR) {
		o->result = AUTH_SPF_TEMPERROR;
		snprintf(o->problem, sizeof(o->problem), "DNS error looking up the SPF record of %s", o->domain);
	} else if (err == SPF_E_NOT_SPF) {
		o->result = AUTH_SPF_NONE;
		snprintf(o->problem, sizeof(o->problem), "%s has no SPF record", o->domain);
	} else {
		o->result = AUTH_SPF_PERMERROR;
		snprintf(o->problem, sizeof(o->problem), "%s",
			 e.record_problem[0] ? e.record_problem : SPF_strerror(err));
	}
	if (e.stop) {
		o->result = e.stop == STOP_LIMIT ? AUTH_SPF_PERMERROR : AUTH_SPF_TEMPERROR;
		snprintf(o->problem, sizeof(o->problem), "%s", e.problem);
	}
	if (o->result == AUTH_SPF_FAIL) {
		/* The exp= text get_exp made, if libspf2 used it in the end;
		 * else the default, expanded here (libspf2 garbles spaces). */
		if (e.exp_text[0] && resp->explanation && strcmp(resp->explanation, e.exp_text) == 0) {
			snprintf(o->explanation, sizeof(o->explanation), "%s", e.exp_text);
		} else {
			struct buf text = BUF_INIT;
			e.explaining = true;
			e.stop = STOP_NO;
			if (expand_explain(w->server, &e, c->p->explanation, &text))
				snprintf(o->explanation, sizeof(o->explanation), "%s", buf_cstr(&text));
			buf_free(&text);
		}
	}
	o->terms = e.terms;
	o->voids = e.voids;
	o->queries = e.queries;
	w->ev = NULL;
	SPF_response_free(resp);
	SPF_request_free(req);
}

static void run_job(void *owner, void *state, struct workers_job *job)
{
	(void)owner;
	struct spf_worker *w = state;
	struct spf_job *j = (struct spf_job *)job;
	struct spf_outcome *o = &j->out;
	bool null_sender = !*j->mailfrom;
	if (now_ms() >= j->deadline_ms) {
		memset(o, 0, sizeof(*o));
		o->result = AUTH_SPF_TEMPERROR;
		snprintf(o->identity, sizeof(o->identity), "%s", null_sender ? "helo" : "mailfrom");
		snprintf(o->problem, sizeof(o->problem), "waited past the timeout for a worker");
	} else if (null_sender) {
		eval_identity(w, j, true, o);
	} else {
		if (w->c->p->check_helo && *j->helo) {
			eval_identity(w, j, true, o);
			if (o->result == AUTH_SPF_FAIL)
				goto out;
		}
		eval_identity(w, j, false, o);
	}
out:
	o->ms = now_ms() - j->start_ms;
}

/* From the loop, each finished evaluation before any is handed back. */
static void count_job(void *owner, struct workers_job *job)
{
	struct spf_check *c = owner;
	struct spf_job *j = (struct spf_job *)job;
	if (c->m_results) {
		char l[64];
		snprintf(l, sizeof(l), "result=\"%s\"", spf_result_name(j->out.result));
		metric_inc(c->m_results, l);
	}
}

static void free_job(struct workers_job *job)
{
	struct spf_job *j = (struct spf_job *)job;
	free(j->mailfrom);
	free(j->helo);
	free(j);
}

/* From the loop: a finished evaluation to its caller.  The check is not
 * touched: the last callback may free it (its session was the last user
 * of the chain). */
static void job_done(struct workers_job *job)
{
	struct spf_job *j = (struct spf_job *)job;
	j->done(j->arg, &j->out);
	free_job(job);
}

void spf_evaluate(struct spf_check *c, const struct spf_request *rq, spf_done_fn done, void *arg)
{
	struct spf_job *j = xcalloc(1, sizeof(*j));
	snprintf(j->ip, sizeof(j->ip), "%s", rq->ip ? rq->ip : "");
	j->mailfrom = xstrndup(rq->mailfrom ? rq->mailfrom : "", 512);
	j->helo = xstrndup(rq->helo ? rq->helo : "", 255);
	j->start_ms = now_ms();
	j->deadline_ms = j->start_ms + c->p->timeout;
	j->done = done;
	j->arg = arg;
	if (!workers_submit(c->pool, &j->link)) {
		/* Overloaded: answered at once, through the loop all the same. */
		j->out.result = AUTH_SPF_TEMPERROR;
		snprintf(j->out.identity, sizeof(j->out.identity), "%s", *j->mailfrom ? "mailfrom" : "helo");
		snprintf(j->out.problem, sizeof(j->out.problem), "too many evaluations waiting");
		workers_return(c->pool, &j->link);
	}
}

/* ---- the header ---------------------------------------------------------- */

/* A key-value value: the dot-atom as it is, else a quoted-string. */
static void kv_value(char *out, size_t outlen, const char *v, bool force_quotes)
{
	bool atom = !force_quotes && *v;
	for (const char *p = v; *p && atom; p++)
		if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-/=?^_`{|}~.", *p))
			atom = false;
	if (atom) {
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

static void comment_for(const struct spf_outcome *o, const char *ip, const char *receiver, char *out,
			size_t outlen)
{
	char raw[700];
	const char *who = o->sender[0] ? o->sender : o->domain;
	switch (o->result) {
	case AUTH_SPF_PASS:
		snprintf(raw, sizeof(raw), "%s: domain of %s designates %s as permitted sender", receiver, who, ip);
		break;
	case AUTH_SPF_FAIL:
		snprintf(raw, sizeof(raw), "%s: domain of %s does not designate %s as permitted sender", receiver,
			 who, ip);
		break;
	case AUTH_SPF_SOFTFAIL:
		snprintf(raw, sizeof(raw),
			 "%s: domain of transitioning %s does not designate %s as permitted sender", receiver, who,
			 ip);
		break;
	case AUTH_SPF_NEUTRAL:
		snprintf(raw, sizeof(raw), "%s: %s is neither permitted nor denied by domain of %s", receiver, ip,
			 who);
		break;
	case AUTH_SPF_TEMPERROR:
		snprintf(raw, sizeof(raw), "%s: temporary error looking up %s: %s", receiver, who, o->problem);
		break;
	case AUTH_SPF_PERMERROR:
		snprintf(raw, sizeof(raw), "%s: permanent error in the SPF records of %s: %s", receiver, who,
			 o->problem);
		break;
	default:
		snprintf(raw, sizeof(raw), "%s: domain of %s does not designate permitted sender hosts", receiver,
			 who);
		break;
	}
	clean_text(out, outlen, raw, true);
}

void spf_received_spf(const struct spf_outcome *o, const struct spf_request *rq, const char *receiver,
		      char *out, size_t outlen)
{
	char comment[400], ip[80], from[400], helo[300], recv[300], problem[260];
	comment_for(o, rq->ip, receiver, comment, sizeof(comment));
	kv_value(ip, sizeof(ip), rq->ip, false);
	kv_value(from, sizeof(from), rq->mailfrom ? rq->mailfrom : "", true);
	kv_value(helo, sizeof(helo), rq->helo ? rq->helo : "", false);
	kv_value(recv, sizeof(recv), receiver, false);
	int n = snprintf(out, outlen, "%s (%s) client-ip=%s; envelope-from=%s; helo=%s; receiver=%s; identity=%s;",
			 spf_result_name(o->result), comment, ip, from, helo, recv, o->identity);
	if ((o->result == AUTH_SPF_TEMPERROR || o->result == AUTH_SPF_PERMERROR) && o->problem[0] && n > 0 &&
	    (size_t)n < outlen) {
		kv_value(problem, sizeof(problem), o->problem, true);
		snprintf(out + n, outlen - (size_t)n, " problem=%s;", problem);
	}
}

/* ---- the check ----------------------------------------------------------- */

struct spf_hook {
	struct spf_check *c;
	struct check_ctx *ctx;
	struct check_call *call;
};

static void spf_answered(void *arg, const struct spf_outcome *o)
{
	struct spf_hook *h = arg;
	struct spf_check *c = h->c;
	struct check_ctx *ctx = h->ctx;
	struct check_call *call = h->call;
	free(h);
	const char *ip = ctx->client->addr;
	struct spf_request rq = { ip, ctx->env ? ctx->env->sender : "", ctx->helo ? ctx->helo : "" };

	ctx->auth.spf = o->result;
	snprintf(ctx->auth.spf_domain, sizeof(ctx->auth.spf_domain), "%s", o->domain);
	snprintf(ctx->auth.spf_identity, sizeof(ctx->auth.spf_identity), "%s", o->identity);
	enum spf_action act = (enum spf_action)c->p->act[o->result];
	log_info(ctx->sid, ctx->qid, "spf.result",
		 "result=%s identity=%s domain=%s client=%s action=%s explanation=%s problem=%s "
		 "terms=%u voids=%u queries=%u ms=%lld",
		 spf_result_name(o->result), o->identity, o->domain, ip, action_names[act], o->explanation,
		 o->problem, o->terms, o->voids, o->queries, o->ms);

	char value[1024];
	if (c->p->header) {
		spf_received_spf(o, &rq, c->receiver, value, sizeof(value));
		check_ctx_add_header(ctx, "Received-SPF", value);
	}
	/* The reason: reply text and the chain's log line. */
	char why[400], text[256];
	const char *detail = o->result == AUTH_SPF_FAIL && o->explanation[0] ? o->explanation
		: o->problem[0] ? o->problem : "";
	snprintf(why, sizeof(why), "SPF %s for %s from %s (%s)%s%s", spf_result_name(o->result),
		 o->domain[0] ? o->domain : "no domain", ip, o->identity, *detail ? ": " : "", detail);
	clean_text(text, sizeof(text), why, false);

	bool error = o->result == AUTH_SPF_TEMPERROR || o->result == AUTH_SPF_PERMERROR;
	struct verdict v = { .kind = V_CONTINUE };
	switch (act) {
	case ACT_CONTINUE:
		break;
	case ACT_TAG:
		comment_for(o, ip, c->receiver, value, sizeof(value));
		{
			char tag[600];
			snprintf(tag, sizeof(tag), "%s (%s)", spf_result_name(o->result), value);
			check_ctx_add_header(ctx, "X-Rampart-SPF", tag);
		}
		break;
	case ACT_REJECT:
		v.kind = V_REJECT;
		v.code = 550;
		snprintf(v.enh, sizeof(v.enh), "%s", error ? "5.7.24" : "5.7.23");
		break;
	case ACT_TEMPFAIL:
		v.kind = V_TEMPFAIL;
		v.code = 451;
		snprintf(v.enh, sizeof(v.enh), "%s", error ? "4.7.24" : "4.7.23");
		break;
	}
	snprintf(v.reason, sizeof(v.reason), "%s", text);
	check_done(call, &v);
}

static void spf_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct spf_check *c = inst;
	memset(&ctx->auth, 0, sizeof(ctx->auth));
	const char *ip = ctx->client ? ctx->client->addr : NULL;
	if (!ip || !net_is_ip(ip)) {
		log_info(ctx->sid, ctx->qid, "spf.skipped", "reason=%s client=%s", "no client address", ip ? ip : "");
		check_continue(call);
		return;
	}
	if (c->p->skip_authenticated && ctx->client->login && *ctx->client->login) {
		log_debug(ctx->sid, ctx->qid, "spf.skipped", "reason=%s client=%s", "authenticated", ip);
		check_continue(call);
		return;
	}
	if (c->p->skip_networks.n && cidr_list_match(&c->p->skip_networks, ip)) {
		log_debug(ctx->sid, ctx->qid, "spf.skipped", "reason=%s client=%s", "skip_networks", ip);
		check_continue(call);
		return;
	}
	struct spf_hook *h = xcalloc(1, sizeof(*h));
	h->c = c;
	h->ctx = ctx;
	h->call = call;
	struct spf_request rq = { ip, ctx->env ? ctx->env->sender : "", ctx->helo ? ctx->helo : "" };
	spf_evaluate(c, &rq, spf_answered, h);
}

/* libspf2 reports through global handlers: into our log.  Its errors are
 * broken invariants (assertions): they end the process, as libspf2 expects. */
static void spf_log_error(const char *file, int line, const char *msg) __attribute__((noreturn));
static void spf_log_error(const char *file, int line, const char *msg)
{
	log_panic(NULL, NULL, "spf.libspf2_error", "file=%s line=%d error=%s", file ? file : "", line,
		  msg ? msg : "");
}

static void spf_log_other(const char *file, int line, const char *msg)
{
	log_debug(NULL, NULL, "spf.libspf2", "file=%s line=%d message=%s", file ? file : "", line,
		  msg ? msg : "");
}

static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;    /* set once, never changed */

static void set_handlers(void)
{
	SPF_error_handler = spf_log_error;
	SPF_warning_handler = spf_log_other;
	SPF_info_handler = spf_log_other;
	SPF_debug_handler = spf_log_other;
}

/* One worker's libspf2 server, its resolver hooked to the worker. */
static void *worker_init(void *owner, size_t i, char *why, size_t whylen)
{
	(void)i;
	(void)why;
	(void)whylen;
	struct spf_check *c = owner;
	struct spf_worker *w = xcalloc(1, sizeof(*w));
	w->c = c;
	w->layer.lookup = spf_lookup;
	w->layer.get_spf = spf_get_spf;
	w->layer.get_exp = spf_get_exp;
	w->layer.name = "rampart";
	w->layer.hook = w;
	w->server = SPF_server_new_dns(&w->layer, 0);
	if (!w->server)
		log_fatal(NULL, NULL, "out_of_memory", "what=%s", "libspf2 server");
	SPF_server_set_rec_dom(w->server, c->receiver);
	return w;
}

static void worker_fini(void *owner, void *state)
{
	(void)owner;
	struct spf_worker *w = state;
	SPF_server_free(w->server);
	free(w);
}

/* Evaluations not handed back at the end belong to sessions that are
 * gone (a check is freed only when no session uses it). */
static const struct workers_def spf_workers = {
	.max_waiting = MAX_WAITING,
	.init = worker_init,
	.fini = worker_fini,
	.run = run_job,
	.collect = count_job,
	.done = job_done,
	.discard = free_job,
};

static void spf_free(void *inst)
{
	struct spf_check *c = inst;
	if (!c)
		return;
	workers_free(c->pool);
	free(c);
}

static void spf_stop(void *inst)
{
	struct spf_check *c = inst;
	workers_free(c->pool);
	c->pool = NULL;
}

static void *spf_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct spf_params *p = params;
	if (!env->dns || !env->base) {
		snprintf(why, whylen, "needs the process's resolver and event loop");
		return NULL;
	}
	for (size_t i = 0; i < p->skip_networks.n; i++) {
		struct cidr net;
		if (!cidr_parse(p->skip_networks.v[i], &net)) {
			snprintf(why, whylen, "skip_networks: '%s' is not a network (expected e.g. 192.0.2.0/24)",
				 p->skip_networks.v[i]);
			return NULL;
		}
	}
	if (!macro_ok(p->explanation, strlen(p->explanation), true, NULL)) {
		snprintf(why, whylen, "explanation: '%s' is not an SPF explain-string (RFC 7208 7.1)",
			 p->explanation);
		return NULL;
	}
	pthread_once(&handlers_once, set_handlers);
	struct spf_check *c = xcalloc(1, sizeof(*c));
	c->p = p;
	c->dns = env->dns;
	snprintf(c->receiver, sizeof(c->receiver), "%s", env->hostname && *env->hostname ? env->hostname : "localhost");
	if (env->metrics)
		c->m_results = metrics_counter(env->metrics, "rampart_spf_results_total",
					       "SPF evaluations, by result.");
	c->pool = workers_new(env->base, (size_t)p->threads, &spf_workers, c, why, whylen);
	if (!c->pool) {
		spf_free(c);
		return NULL;
	}
	return c;
}

const struct check_def check_spf = {
	.name = "spf",
	.doc = "SPF (RFC 7208): act on the result for the MAIL FROM (or HELO) domain; Received-SPF header",
	.params = &spf_params_set,
	.init = spf_init,
	.free = spf_free,
	.stop = spf_stop,
	.hooks = { [PHASE_MAIL] = spf_mail },
};
