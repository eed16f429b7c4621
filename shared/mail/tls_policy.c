/*
 * tls_policy.c — the outbound TLS policy table (see tls_policy.h).
 *
 * Entries are kept sorted by destination (lower case) and found with
 * bsearch; a lookup costs one search for the domain and one per parent
 * domain.  The table is immutable once built, so any number of lookups
 * may run at once.
 */
#include "tls_policy.h"

#include "../util/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define EXPECTED "expected DESTINATION:none|may|encrypt|verify[:match=NAME]...[:ca=/path/ca.pem]"
#define DNS_NAME_MAX 253

struct entry {
	char *dest;                     /* "example.com" or ".example.com", lower case */
	enum tls_level level;
	struct strlist match;           /* verify: names (lower case); n == 0: the host */
	char *ca;                       /* verify: own CA file; NULL: the table's */
	const char *text;               /* the entry as configured (for errors), during the build */
};

struct tls_policy_table {
	enum tls_level mx_default, smarthost;
	char *ca_file;                  /* "" for the system store */
	struct entry *e;
	size_t n;
	char **cas;                     /* distinct CA files verify answers can name */
	size_t ncas;
};

static const char *const level_names[] = { "none", "may", "encrypt", "verify" };

const char *tls_level_name(enum tls_level l)
{
	return (unsigned)l < sizeof(level_names) / sizeof(level_names[0]) ? level_names[l] : "?";
}

bool tls_level_parse(const char *word, enum tls_level *out)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (strcasecmp(word, level_names[i]) == 0) {
			*out = (enum tls_level)i;
			return true;
		}
	return false;
}

/* A DNS name of n bytes (ASCII letters, digits, '-', '_'; labels of 1 to
 * 63 bytes); with lead_dot, one leading '.' is allowed ("any name below").
 * NULL when fine, else what is wrong. */
static const char *bad_dns_name(const char *s, size_t n, bool lead_dot)
{
	if (lead_dot && n > 0 && s[0] == '.') {
		s++;
		n--;
	}
	if (n == 0)
		return "empty name";
	if (n > DNS_NAME_MAX)
		return "name longer than 253 bytes";
	size_t label = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '.') {
			if (label == 0)
				return "empty label in name";
			label = 0;
			continue;
		}
		if (ch >= 0x80)
			return "non-ASCII name (write IDNs as xn-- A-labels)";
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '-' || ch == '_'))
			return "bad character in name";
		if (++label > 63)
			return "label longer than 63 bytes";
	}
	if (label == 0)
		return "name ends with '.'";
	return NULL;
}

static char *lower_dup(const char *s, size_t n)
{
	char *d = xstrndup(s, n);
	for (char *p = d; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	return d;
}

static void entry_clear(struct entry *e)
{
	free(e->dest);
	strlist_free(&e->match);
	free(e->ca);
	memset(e, 0, sizeof(*e));
}

/* One entry of tls_policy_domains into e (cleared on failure). */
static bool parse_entry(const char *text, struct entry *e, char *why, size_t whylen)
{
#define FAIL(...) do { \
		char w_[256]; \
		snprintf(w_, sizeof(w_), __VA_ARGS__); \
		snprintf(why, whylen, "tls_policy_domains: '%.300s': %s; " EXPECTED, text, w_); \
		entry_clear(e); \
		return false; \
	} while (0)

	memset(e, 0, sizeof(*e));
	e->text = text;
	size_t len = strlen(text);
	if (len > TLS_POLICY_MAX_ENTRY)
		FAIL("entry longer than %d bytes", TLS_POLICY_MAX_ENTRY);

	/* the destination */
	const char *colon = strchr(text, ':');
	if (!colon)
		FAIL("no ':LEVEL'");
	size_t dn = (size_t)(colon - text);
	if (dn > 1 && text[dn - 1] == '.')
		dn--;           /* a final dot */
	const char *bad = bad_dns_name(text, dn, true);
	if (bad)
		FAIL("destination: %s", bad);
	e->dest = lower_dup(text, dn);

	/* the level */
	const char *f = colon + 1;
	const char *end = strchr(f, ':');
	size_t fn = end ? (size_t)(end - f) : strlen(f);
	char word[16];
	if (fn == 0 || fn >= sizeof(word))
		FAIL("bad level '%.*s'", (int)(fn < 40 ? fn : 40), f);
	memcpy(word, f, fn);
	word[fn] = '\0';
	if (!tls_level_parse(word, &e->level))
		FAIL("unknown level '%s'", word);

	/* attributes */
	while (end) {
		f = end + 1;
		end = strchr(f, ':');
		fn = end ? (size_t)(end - f) : strlen(f);
		if (fn == 0)
			FAIL("empty field");
		if (fn >= 6 && strncasecmp(f, "match=", 6) == 0) {
			if (e->match.n >= TLS_POLICY_MAX_MATCH)
				FAIL("more than %d match= names", TLS_POLICY_MAX_MATCH);
			if ((bad = bad_dns_name(f + 6, fn - 6, true)))
				FAIL("match=%.*s: %s", (int)(fn - 6 < 260 ? fn - 6 : 260), f + 6, bad);
			e->match.v = xrealloc(e->match.v, (e->match.n + 1) * sizeof(char *));
			e->match.v[e->match.n++] = lower_dup(f + 6, fn - 6);
		} else if (fn >= 3 && strncasecmp(f, "ca=", 3) == 0) {
			if (e->ca)
				FAIL("ca= given twice");
			if (fn == 3 || f[3] != '/')
				FAIL("ca= needs an absolute path");
			e->ca = xstrndup(f + 3, fn - 3);
		} else {
			FAIL("unknown attribute '%.*s' (match=NAME or ca=PATH)", (int)(fn < 60 ? fn : 60), f);
		}
	}
	if (e->level != TLS_LEVEL_VERIFY && (e->match.n || e->ca))
		FAIL("match= and ca= apply only to the verify level, not %s", tls_level_name(e->level));
	return true;
#undef FAIL
}

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct entry *)a)->dest, ((const struct entry *)b)->dest);
}

static int key_cmp(const void *key, const void *b)
{
	return strcmp(key, ((const struct entry *)b)->dest);
}

static void add_ca(struct tls_policy_table *t, const char *ca)
{
	for (size_t i = 0; i < t->ncas; i++)
		if (strcmp(t->cas[i], ca) == 0)
			return;
	t->cas = xrealloc(t->cas, (t->ncas + 1) * sizeof(char *));
	t->cas[t->ncas++] = xstrdup(ca);
}

struct tls_policy_table *tls_policy_new(const struct tls_policy_config *cfg, char *why, size_t whylen)
{
	if ((unsigned)cfg->mx_default > TLS_LEVEL_VERIFY || (unsigned)cfg->smarthost > TLS_LEVEL_VERIFY) {
		snprintf(why, whylen, "tls_policy: unknown level");
		return NULL;
	}
	const struct strlist *l = cfg->entries;
	size_t n = l ? l->n : 0;
	if (n > TLS_POLICY_MAX_ENTRIES) {
		snprintf(why, whylen, "tls_policy_domains: %zu entries, at most %d", n, TLS_POLICY_MAX_ENTRIES);
		return NULL;
	}
	struct tls_policy_table *t = xcalloc(1, sizeof(*t));
	t->mx_default = cfg->mx_default;
	t->smarthost = cfg->smarthost;
	t->ca_file = xstrdup(cfg->ca_file ? cfg->ca_file : "");
	t->e = xcalloc(n ? n : 1, sizeof(*t->e));
	for (size_t i = 0; i < n; i++) {
		if (!parse_entry(l->v[i], &t->e[i], why, whylen)) {
			tls_policy_free(t);
			return NULL;
		}
		t->n++;
	}
	qsort(t->e, t->n, sizeof(*t->e), entry_cmp);
	for (size_t i = 1; i < t->n; i++)
		if (strcmp(t->e[i - 1].dest, t->e[i].dest) == 0) {
			snprintf(why, whylen, "tls_policy_domains: '%.300s' and '%.300s' are both for '%s'; "
				 "expected one entry per destination", t->e[i - 1].text, t->e[i].text, t->e[i].dest);
			tls_policy_free(t);
			return NULL;
		}
	bool global_ca = t->mx_default == TLS_LEVEL_VERIFY || t->smarthost == TLS_LEVEL_VERIFY;
	for (size_t i = 0; i < t->n; i++) {
		t->e[i].text = NULL;    /* the strlist is the caller's */
		if (t->e[i].level != TLS_LEVEL_VERIFY)
			continue;
		if (t->e[i].ca)
			add_ca(t, t->e[i].ca);
		else
			global_ca = true;
	}
	if (global_ca)
		add_ca(t, t->ca_file);
	return t;
}

void tls_policy_free(struct tls_policy_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++)
		entry_clear(&t->e[i]);
	free(t->e);
	for (size_t i = 0; i < t->ncas; i++)
		free(t->cas[i]);
	free(t->cas);
	free(t->ca_file);
	free(t);
}

/* -- the sources, asked in order; the first that answers wins -- */

typedef bool (*policy_source)(const struct tls_policy_table *t, const struct tls_policy_query *q,
			      const char *domain, struct tls_policy *out);

static bool from_smarthost(const struct tls_policy_table *t, const struct tls_policy_query *q,
			   const char *domain, struct tls_policy *out)
{
	(void)domain;
	if (!q->smarthost)
		return false;
	out->level = t->smarthost;
	out->source = "smarthost";
	return true;
}

static bool from_entries(const struct tls_policy_table *t, const struct tls_policy_query *q,
			 const char *domain, struct tls_policy *out)
{
	(void)q;
	if (!*domain || !t->n)
		return false;
	const struct entry *e = bsearch(domain, t->e, t->n, sizeof(*t->e), key_cmp);
	for (const char *p = domain; !e && (p = strchr(p, '.')) != NULL; p++)
		e = bsearch(p, t->e, t->n, sizeof(*t->e), key_cmp);     /* ".parent", closest first */
	if (!e)
		return false;
	out->level = e->level;
	out->match = e->match.n ? &e->match : NULL;
	if (e->ca)
		out->ca_file = e->ca;
	out->source = "domain";
	out->entry = e->dest;
	return true;
}

static bool from_default(const struct tls_policy_table *t, const struct tls_policy_query *q,
			 const char *domain, struct tls_policy *out)
{
	(void)q; (void)domain;
	out->level = t->mx_default;
	out->source = "default";
	return true;
}

/* MTA-STS and DANE go here, before the default. */
static const policy_source sources[] = { from_smarthost, from_entries, from_default };

void tls_policy_lookup(const struct tls_policy_table *t, const struct tls_policy_query *q,
		       struct tls_policy *out)
{
	/* the domain in lower case, without a final dot; too long: none */
	char domain[DNS_NAME_MAX + 2] = "";
	const char *d = q->domain ? q->domain : "";
	size_t n = strlen(d);
	if (n && d[n - 1] == '.')
		n--;
	if (n < sizeof(domain)) {
		for (size_t i = 0; i < n; i++)
			domain[i] = (d[i] >= 'A' && d[i] <= 'Z') ? (char)(d[i] - 'A' + 'a') : d[i];
		domain[n] = '\0';
	}
	for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++) {
		*out = (struct tls_policy){ .ca_file = t->ca_file, .entry = "" };
		if (sources[i](t, q, domain, out))
			return;
	}
}

size_t tls_policy_ca_count(const struct tls_policy_table *t)
{
	return t->ncas;
}

const char *tls_policy_ca_file(const struct tls_policy_table *t, size_t i)
{
	return i < t->ncas ? t->cas[i] : NULL;
}

bool tls_policy_any_required(const struct tls_policy_table *t)
{
	if (t->mx_default >= TLS_LEVEL_ENCRYPT || t->smarthost >= TLS_LEVEL_ENCRYPT)
		return true;
	for (size_t i = 0; i < t->n; i++)
		if (t->e[i].level >= TLS_LEVEL_ENCRYPT)
			return true;
	return false;
}
