/*
 * bayes.c — tokens of a message and the chi-square score (bayes.h).
 */
#include "bayes.h"
#include "header.h"
#include "mime.h"
#include "msgtext.h"
#include "../util/alloc.h"
#include "../util/buf.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEF_MAX_TOKENS 3000
#define MAX_FIELDS 1000         /* header fields looked at: all SMTP takes by default (max_headers) */

/* ---- the tokens of one message, each once -------------------------------- */

struct toks {
	uint64_t *set;                  /* FNV-1a hashes seen; 0 = empty slot */
	size_t mask;
	size_t n, max;
	bayes_token_fn fn;
	void *arg;
};

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 14695981039346656037ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h ? h : 1;
}

/* prefix + word (cut at BAYES_TOKEN_MAX), given on unless seen. */
static void emit(struct toks *T, const char *prefix, const char *w, size_t wl)
{
	if (T->n >= T->max)
		return;
	char tok[BAYES_TOKEN_MAX + 1];
	size_t pl = prefix ? strlen(prefix) : 0;
	if (pl > BAYES_TOKEN_MAX)
		pl = BAYES_TOKEN_MAX;
	if (pl)
		memcpy(tok, prefix, pl);
	if (wl > BAYES_TOKEN_MAX - pl) {
		wl = BAYES_TOKEN_MAX - pl;
		/* never cut inside a UTF-8 sequence: w[wl] is the first byte left out */
		while (wl > 0 && ((unsigned char)w[wl] & 0xC0) == 0x80)
			wl--;
	}
	memcpy(tok + pl, w, wl);
	size_t len = pl + wl;
	tok[len] = '\0';
	/* a token is a state-store key: no control characters */
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)tok[i] < 0x20 || tok[i] == 0x7F)
			tok[i] = '?';
	if (len == 0)
		return;
	uint64_t h = fnv1a(tok, len);
	size_t i = (size_t)h & T->mask;
	while (T->set[i]) {
		if (T->set[i] == h)
			return;
		i = (i + 1) & T->mask;
	}
	T->set[i] = h;
	T->n++;
	T->fn(T->arg, tok, len);
}

static void lower_ascii(char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x80)
			s[i] = (char)tolower((unsigned char)s[i]);
}

static bool edge_punct(unsigned char c)
{
	return c < 0x80 && (ispunct(c) || c == ' ');
}

/* The bytes of the blank at s[i] (white space, or a non-breaking space
 * U+00A0); 0 when s[i] starts no blank. */
static size_t blank_len(const char *s, size_t i, size_t n)
{
	if (isspace((unsigned char)s[i]))
		return 1;
	if ((unsigned char)s[i] == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] == 0xA0)
		return 2;
	return 0;
}

/* The words of UTF-8 text, split at blanks, in one pass. */
static void text_words(struct toks *T, const char *prefix, const char *s, size_t n, bool body)
{
	size_t i = 0, bl;
	while (i < n && T->n < T->max) {
		while (i < n && (bl = blank_len(s, i, n)) > 0)
			i += bl;
		size_t b = i;
		while (i < n && blank_len(s, i, n) == 0)
			i++;
		size_t e = i;
		while (b < e && edge_punct((unsigned char)s[b]))
			b++;
		while (e > b && edge_punct((unsigned char)s[e - 1]))
			e--;
		size_t wl = e - b;
		if (wl == 0)
			continue;
		char w[256];
		if (wl >= sizeof(w))
			wl = sizeof(w) - 1;
		memcpy(w, s + b, wl);
		w[wl] = '\0';
		lower_ascii(w, wl);
		if (!body) {
			if (wl >= 2)
				emit(T, prefix, w, wl);
			continue;
		}
		if (memmem(w, wl, "://", 3) || strncmp(w, "www.", 4) == 0)
			continue;               /* a link: its host is a url: token */
		const char *at = memchr(w, '@', wl);
		if (at && memchr(at, '.', wl - (size_t)(at - w))) {
			emit(T, "email:", at + 1, wl - (size_t)(at + 1 - w));
			continue;
		}
		bool ascii = true;
		for (size_t k = 0; k < wl && ascii; k++)
			ascii = (unsigned char)w[k] < 0x80;
		size_t maxl = ascii ? 12 : 24;
		if (wl >= 3 && wl <= maxl) {
			emit(T, NULL, w, wl);
		} else if (wl > maxl) {
			char sk[32];
			int l = snprintf(sk, sizeof(sk), "skip:%c %zu", ascii ? w[0] : '?', wl / 10 * 10);
			emit(T, NULL, sk, (size_t)l);
		}
	}
}

static void url_tokens(void *arg, const char *u, size_t n)
{
	struct toks *T = arg;
	char host[256];
	if (!mime_url_host(u, n, host, sizeof(host))) {
		emit(T, "url:", "invalid", 7);
		return;
	}
	size_t hl = strlen(host);
	emit(T, "url:", host, hl);
	bool numeric = strspn(host, "0123456789.") == hl || strchr(host, ':');
	if (numeric) {
		emit(T, "url:", "ip-literal", 10);
		return;
	}
	/* parent domains, down to two labels */
	const char *p = host;
	for (;;) {
		const char *dot = strchr(p, '.');
		if (!dot || !strchr(dot + 1, '.'))
			break;
		p = dot + 1;
		emit(T, "url:", p, strlen(p));
	}
}

struct addr_ctx {
	struct toks *T;
};

static bool addr_token(void *arg, const char *addr)
{
	struct toks *T = arg;
	char a[HDR_ADDR_MAX + 1];
	snprintf(a, sizeof(a), "%s", addr);
	lower_ascii(a, strlen(a));
	emit(T, "from:addr:", a, strlen(a));
	const char *at = strrchr(a, '@');
	if (at)
		emit(T, "from:domain:", at + 1, strlen(at + 1));
	return true;
}

static void header_tokens(struct toks *T, const char *msg, const struct mime_part *root)
{
	size_t pos = 0;
	struct hdr_field f;
	unsigned nfields = 0;
	bool have_mid = false;
	struct buf u = BUF_INIT;
	buf_set_limit(&u, 4096);
	while (nfields < MAX_FIELDS && hdr_next(msg + root->hdr_off, root->hdr_len, &pos, &f)) {
		nfields++;
		char name[48];
		size_t nl = f.name_len < sizeof(name) - 1 ? f.name_len : sizeof(name) - 1;
		memcpy(name, f.name, nl);
		name[nl] = '\0';
		lower_ascii(name, nl);
		emit(T, "h:", name, nl);
		if (hdr_is(&f, "Subject")) {
			buf_reset(&u);
			mime_header_utf8(f.value, f.value_len, &u);
			text_words(T, "subject:", u.data ? u.data : "", u.len, false);
		} else if (hdr_is(&f, "From") || hdr_is(&f, "Reply-To")) {
			hdr_addresses(f.value, f.value_len, addr_token, T);
			/* the display name's words: what comes before '<' */
			const char *lt = memchr(f.value, '<', f.value_len);
			if (lt && hdr_is(&f, "From")) {
				buf_reset(&u);
				mime_header_utf8(f.value, (size_t)(lt - f.value), &u);
				text_words(T, "from:name:", u.data ? u.data : "", u.len, false);
			}
		} else if (hdr_is(&f, "Message-ID")) {
			have_mid = true;
			const char *at = memchr(f.value, '@', f.value_len);
			const char *gt = at ? memchr(at, '>', f.value_len - (size_t)(at - f.value)) : NULL;
			if (at && gt && gt > at + 1) {
				char d[128];
				size_t dl = (size_t)(gt - at - 1) < sizeof(d) - 1 ? (size_t)(gt - at - 1) : sizeof(d) - 1;
				memcpy(d, at + 1, dl);
				lower_ascii(d, dl);
				emit(T, "message-id:@", d, dl);
			} else {
				emit(T, "message-id:", "invalid", 7);
			}
		} else if (hdr_is(&f, "X-Mailer") || hdr_is(&f, "User-Agent")) {
			char v[64];
			const char *s = f.value;
			size_t n = f.value_len;
			while (n && isspace((unsigned char)*s)) {
				s++;
				n--;
			}
			size_t vl = 0;
			for (size_t k = 0; k < n && vl < 40; k++)
				if (s[k] != '\r' && s[k] != '\n')
					v[vl++] = s[k];
			lower_ascii(v, vl);
			emit(T, "x-mailer:", v, vl);
		}
	}
	if (!have_mid)
		emit(T, "message-id:", "none", 4);
	buf_free(&u);
}

static void part_tokens(struct toks *T, const struct mime_part *p)
{
	char ct[100];
	int l = snprintf(ct, sizeof(ct), "%s/%s", p->type, p->subtype);
	emit(T, "ct:", ct, (size_t)l);
	if (p->charset[0])
		emit(T, "charset:", p->charset, strlen(p->charset));
	static const char *const ctes[] = { "7bit", "8bit", "binary", "quoted-printable", "base64", "other" };
	emit(T, "cte:", ctes[p->cte], strlen(ctes[p->cte]));
	if (p->filename[0]) {
		const char *dot = strrchr(p->filename, '.');
		char ext[16];
		size_t el = dot ? strlen(dot + 1) : 0;
		if (el > 0 && el < sizeof(ext)) {
			memcpy(ext, dot + 1, el);
			lower_ascii(ext, el);
			emit(T, "filename:ext:", ext, el);
		} else {
			emit(T, "filename:ext:", "none", 4);
		}
	}
}

static void url_text(struct toks *T, const struct msgtext *t)
{
	for (const char *u = msgtext_url(t, NULL); u && T->n < T->max; u = msgtext_url(t, u))
		url_tokens(T, u, strlen(u));
}

void bayes_tokens_of(const char *msg, const struct msgtext *t, const struct bayes_tok_opts *o, bayes_token_fn fn,
		     void *arg)
{
	struct toks T = { .fn = fn, .arg = arg };
	T.max = o && o->max_tokens ? o->max_tokens : DEF_MAX_TOKENS;
	size_t slots = 16;
	while (slots < 2 * T.max)
		slots *= 2;
	T.set = xcalloc(slots, sizeof(*T.set));
	T.mask = slots - 1;
	const struct mime_msg *m = t->mime;
	static const char *const flags[] = { "depth", "too-many-parts", "no-boundary", "unclosed", "bad-header",
					     "no-parts", "bad-cte" };
	for (size_t k = 0; k < sizeof(flags) / sizeof(flags[0]); k++)
		if (m->flags & (1u << k))
			emit(&T, "mime:", flags[k], strlen(flags[k]));
	if (t->bad_encoding)
		emit(&T, "mime:", "bad-encoding", 12);
	if (t->unknown_charset)
		emit(&T, "charset:", "unknown", 7);
	if (t->html)
		emit(&T, "html:", "yes", 3);
	header_tokens(&T, msg, &m->parts[0]);
	for (size_t i = 1; i < m->nparts; i++)
		part_tokens(&T, &m->parts[i]);
	url_text(&T, t);
	text_words(&T, NULL, t->text.data ? t->text.data : "", t->text.len, true);
	free(T.set);
}

void bayes_tokens(const char *msg, size_t len, const struct bayes_tok_opts *o, bayes_token_fn fn, void *arg)
{
	struct msgtext t;
	msgtext_build(&t, msg, len, o ? o->max_text : 0, 0);
	bayes_tokens_of(msg, &t, o, fn, arg);
	msgtext_free(&t);
}

/* ---- the score ----------------------------------------------------------------- */

void bayes_params_default(struct bayes_params *p)
{
	p->unknown_strength = 0.45;
	p->unknown_prob = 0.5;
	p->min_strength = 0.1;
	p->max_clues = 150;
}

double bayes_chi2q(double x2, unsigned v)
{
	/* v is even: the series of the Poisson tail (as SpamBayes) */
	double m = x2 / 2.0;
	double term = exp(-m), sum = term;
	for (unsigned i = 1; i < v / 2; i++) {
		term *= m / i;
		sum += term;
	}
	return sum < 1.0 ? sum : 1.0;
}

static int by_strength(const void *a, const void *b, void *ctx)
{
	const struct bayes_token *t = ctx;
	double da = fabs(t[*(const size_t *)a].prob - 0.5), db = fabs(t[*(const size_t *)b].prob - 0.5);
	return da < db ? 1 : da > db ? -1 : 0;
}

void bayes_score(struct bayes_token *toks, size_t n, long long nspam, long long nham, const struct bayes_params *p,
		 struct bayes_result *r)
{
	struct bayes_params def;
	if (!p) {
		bayes_params_default(&def);
		p = &def;
	}
	memset(r, 0, sizeof(*r));
	r->score = 0.5;
	if (nspam <= 0 || nham <= 0) {
		for (size_t i = 0; i < n; i++)
			toks[i].prob = p->unknown_prob;
		return;
	}
	size_t *idx = xmalloc((n ? n : 1) * sizeof(*idx));
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct bayes_token *t = &toks[i];
		double sr = (double)t->spam / (double)nspam, hr = (double)t->ham / (double)nham;
		double prob = sr + hr > 0 ? sr / (sr + hr) : p->unknown_prob;
		double cnt = (double)(t->spam + t->ham);
		t->prob = (p->unknown_strength * p->unknown_prob + cnt * prob) / (p->unknown_strength + cnt);
		if (fabs(t->prob - 0.5) >= p->min_strength)
			idx[k++] = i;
	}
	qsort_r(idx, k, sizeof(*idx), by_strength, toks);
	if (k > p->max_clues)
		k = p->max_clues;
	/* products in mantissa and exponent, never underflowing */
	double S = 1.0, H = 1.0;
	int Se = 0, He = 0, e;
	for (size_t j = 0; j < k; j++) {
		double f = toks[idx[j]].prob;
		S *= 1.0 - f;
		H *= f;
		if (S < 1e-200) {
			S = frexp(S, &e);
			Se += e;
		}
		if (H < 1e-200) {
			H = frexp(H, &e);
			He += e;
		}
	}
	r->nclues = k;
	if (k) {
		double lnS = log(S) + Se * M_LN2, lnH = log(H) + He * M_LN2;
		double s = 1.0 - bayes_chi2q(-2.0 * lnS, 2 * (unsigned)k);
		double h = 1.0 - bayes_chi2q(-2.0 * lnH, 2 * (unsigned)k);
		r->spam_evidence = s;
		r->ham_evidence = h;
		r->score = (s - h + 1.0) / 2.0;
	}
	r->nshown = k < sizeof(r->clues) / sizeof(r->clues[0]) ? k : sizeof(r->clues) / sizeof(r->clues[0]);
	for (size_t j = 0; j < r->nshown; j++)
		r->clues[j] = idx[j];
	free(idx);
}
