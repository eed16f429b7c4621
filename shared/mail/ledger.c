/*
 * ledger.c — per-sender accounting (see ledger.h).  The file is text, one
 * entry a line: "KIND<TAB>KEY<TAB>messages recipients bytes delivered
 * deferred bounced", after a "# rampart ledger 1" line.
 */
#include "ledger.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/config.h"
#include "../util/fs.h"
#include "../util/log.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct entry {
	enum ledger_kind kind;
	char *key;
	struct ledger_counts c;
};

struct ledger {
	struct entry *slots;
	size_t cap, n, max;
};

static const char *kind_names[] = { "sender", "domain", "login" };

const char *ledger_kind_name(enum ledger_kind kind)
{
	return kind_names[kind];
}

static size_t hash(enum ledger_kind kind, const char *s)
{
	size_t h = 1469598103934665603ULL ^ (size_t)kind;
	for (; *s; s++) {
		h ^= (unsigned char)tolower((unsigned char)*s);
		h *= 1099511628211ULL;
	}
	return h;
}

struct ledger *ledger_new(size_t max_entries)
{
	struct ledger *l = xcalloc(1, sizeof(*l));
	l->max = max_entries ? max_entries : 100000;
	return l;
}

void ledger_free(struct ledger *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->cap; i++)
		free(l->slots[i].key);
	free(l->slots);
	free(l);
}

static void grow(struct ledger *l)
{
	size_t ncap = l->cap ? l->cap * 2 : 256;
	struct entry *ns = xcalloc(ncap, sizeof(*ns));
	for (size_t i = 0; i < l->cap; i++) {
		if (!l->slots[i].key)
			continue;
		size_t j = hash(l->slots[i].kind, l->slots[i].key) & (ncap - 1);
		while (ns[j].key)
			j = (j + 1) & (ncap - 1);
		ns[j] = l->slots[i];
	}
	free(l->slots);
	l->slots = ns;
	l->cap = ncap;
}

static struct entry *find(const struct ledger *l, enum ledger_kind kind, const char *key)
{
	if (!l->cap)
		return NULL;
	size_t j = hash(kind, key) & (l->cap - 1);
	while (l->slots[j].key) {
		if (l->slots[j].kind == kind && strcasecmp(l->slots[j].key, key) == 0)
			return &l->slots[j];
		j = (j + 1) & (l->cap - 1);
	}
	return NULL;
}

static struct entry *get(struct ledger *l, enum ledger_kind kind, const char *key)
{
	struct entry *e = find(l, kind, key);
	if (e)
		return e;
	if (l->n >= l->max)
		key = "other";      /* bounded: the long tail shares one line */
	e = find(l, kind, key);
	if (e)
		return e;
	if ((l->n + 1) * 2 > l->cap)
		grow(l);
	size_t j = hash(kind, key) & (l->cap - 1);
	while (l->slots[j].key)
		j = (j + 1) & (l->cap - 1);
	l->slots[j].kind = kind;
	l->slots[j].key = xstrndup(key, 320);
	memset(&l->slots[j].c, 0, sizeof(l->slots[j].c));
	l->n++;
	return &l->slots[j];
}

static const char *domain_of(const char *sender)
{
	const char *at = strrchr(sender, '@');
	return at ? at + 1 : "";
}

void ledger_accepted(struct ledger *l, const char *sender, const char *login, size_t nrcpt, size_t bytes)
{
	struct entry *es[3] = { get(l, LEDGER_SENDER, sender), get(l, LEDGER_DOMAIN, domain_of(sender)),
				login && *login ? get(l, LEDGER_LOGIN, login) : NULL };
	for (size_t i = 0; i < 3; i++) {
		if (!es[i])
			continue;
		es[i]->c.messages++;
		es[i]->c.recipients += nrcpt;
		es[i]->c.bytes += bytes;
	}
}

void ledger_rejected(struct ledger *l, const char *sender, const char *login)
{
	struct entry *es[3] = { get(l, LEDGER_SENDER, sender ? sender : ""), get(l, LEDGER_DOMAIN, domain_of(sender ? sender : "")),
				login && *login ? get(l, LEDGER_LOGIN, login) : NULL };
	for (size_t i = 0; i < 3; i++)
		if (es[i])
			es[i]->c.rejected++;
}

void ledger_outcome(struct ledger *l, const char *sender, const char *login, int code)
{
	struct entry *es[3] = { get(l, LEDGER_SENDER, sender), get(l, LEDGER_DOMAIN, domain_of(sender)),
				login && *login ? get(l, LEDGER_LOGIN, login) : NULL };
	for (size_t i = 0; i < 3; i++) {
		if (!es[i])
			continue;
		if (code >= 200 && code < 300)
			es[i]->c.delivered++;
		else if (code >= 500 && code < 600)
			es[i]->c.bounced++;
		else
			es[i]->c.deferred++;
	}
}

const struct ledger_counts *ledger_get(const struct ledger *l, enum ledger_kind kind, const char *key)
{
	const struct entry *e = find(l, kind, key);
	return e ? &e->c : NULL;
}

void ledger_each(const struct ledger *l, ledger_each_fn fn, void *arg)
{
	for (size_t i = 0; i < l->cap; i++)
		if (l->slots[i].key)
			fn(arg, l->slots[i].kind, l->slots[i].key, &l->slots[i].c);
}

/* Keys are addresses and logins: no tabs or line ends may reach the file. */
static bool key_ok(const char *k)
{
	for (; *k; k++)
		if ((unsigned char)*k < 0x20 || *k == 0x7f)
			return false;
	return true;
}

bool ledger_save(const struct ledger *l, const char *path, char *why, size_t whylen)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "# rampart ledger 2\n");
	for (size_t i = 0; i < l->cap; i++) {
		const struct entry *e = &l->slots[i];
		if (!e->key || !key_ok(e->key))
			continue;
		buf_printf(&b, "%s\t%s\t%llu %llu %llu %llu %llu %llu %llu\n", kind_names[e->kind], e->key, e->c.messages,
			   e->c.recipients, e->c.bytes, e->c.delivered, e->c.deferred, e->c.bounced, e->c.rejected);
	}
	char *tmp = xasprintf("%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	bool ok = fd >= 0 && fs_write_all(fd, b.data, b.len) && fsync(fd) == 0;
	int e = errno;
	if (fd >= 0 && close(fd) != 0 && ok) {
		ok = false;
		e = errno;
	}
	if (ok && rename(tmp, path) != 0) {
		ok = false;
		e = errno;
	}
	if (!ok) {
		set_why(why, whylen, "%s: %s", path, strerror(e));
		unlink(tmp);
	}
	free(tmp);
	buf_free(&b);
	return ok;
}

/* Parse one line into kind, key and counts; false if malformed. */
static bool parse_line(char *line, enum ledger_kind *kind, char **key, struct ledger_counts *c)
{
	char *t1 = strchr(line, '\t');
	if (!t1)
		return false;
	*t1 = '\0';
	char *t2 = strchr(t1 + 1, '\t');
	if (!t2)
		return false;
	*t2 = '\0';
	size_t k;
	for (k = 0; k < LEDGER_KINDS; k++)
		if (strcmp(line, kind_names[k]) == 0)
			break;
	if (k == LEDGER_KINDS)
		return false;
	*kind = (enum ledger_kind)k;
	*key = t1 + 1;
	/* six counts (format 1) or seven (format 2 adds rejected): decimal
	 * numbers that fit, one space apart, nothing else ("-1" and "6junk"
	 * are no counts) */
	unsigned long long *v[7] = { &c->messages, &c->recipients, &c->bytes, &c->delivered, &c->deferred,
				     &c->bounced, &c->rejected };
	c->rejected = 0;
	const char *p = t2 + 1;
	int n = 0;
	while (*p && n < 7) {
		if (!parse_digits(&p, ULLONG_MAX, v[n++]) || (*p != ' ' && *p != '\0'))
			return false;
		if (*p == ' ')
			p++;
	}
	return !*p && (n == 6 || n == 7);
}

bool ledger_load(struct ledger *l, const char *path, char *why, size_t whylen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		if (errno == ENOENT)
			return true;
		set_why(why, whylen, "%s: %s", path, strerror(errno));
		return false;
	}
	char line[1024];
	unsigned n = 0, bad = 0, first_bad = 0;
	while (fgets(line, sizeof(line), f)) {
		n++;
		line[strcspn(line, "\n")] = '\0';
		if (!*line || *line == '#')
			continue;
		enum ledger_kind kind;
		char *key;
		struct ledger_counts c = { 0 };
		if (!parse_line(line, &kind, &key, &c)) {
			/* one bad line costs that line, not every one after it */
			if (!bad++)
				first_bad = n;
			continue;
		}
		get(l, kind, key)->c = c;
	}
	fclose(f);
	if (bad)
		set_why(why, whylen, "%s:%u: expected 'KIND<TAB>KEY<TAB>six or seven counts' (%u line%s skipped)", path,
			first_bad, bad, bad == 1 ? "" : "s");
	return bad == 0;
}

struct row {
	enum ledger_kind kind;
	char *key;
	struct ledger_counts c;
};

static int by_messages(const void *a, const void *b)
{
	const struct row *x = a, *y = b;
	if (x->c.messages != y->c.messages)
		return x->c.messages < y->c.messages ? 1 : -1;
	return strcmp(x->key, y->key);
}

bool ledger_print(const char *path, const char *kind, size_t top, FILE *out, char *why, size_t whylen)
{
	struct ledger *l = ledger_new(0);
	FILE *probe = fopen(path, "r");
	if (!probe) {
		set_why(why, whylen, "%s: %s", path, strerror(errno));
		ledger_free(l);
		return false;
	}
	fclose(probe);
	if (!ledger_load(l, path, why, whylen)) {
		ledger_free(l);
		return false;
	}
	struct row *rows = xcalloc(l->n ? l->n : 1, sizeof(*rows));
	size_t n = 0;
	for (size_t i = 0; i < l->cap; i++) {
		struct entry *e = &l->slots[i];
		if (!e->key || (kind && strcmp(kind, kind_names[e->kind]) != 0))
			continue;
		rows[n++] = (struct row){ e->kind, e->key, e->c };
	}
	qsort(rows, n, sizeof(*rows), by_messages);
	fprintf(out, "%-7s %-40s %10s %10s %12s %10s %9s %8s %8s\n", "kind", "key", "messages", "rcpts", "bytes",
		"delivered", "deferred", "bounced", "rejected");
	for (size_t i = 0; i < n && (!top || i < top); i++)
		fprintf(out, "%-7s %-40s %10llu %10llu %12llu %10llu %9llu %8llu %8llu\n", kind_names[rows[i].kind],
			*rows[i].key ? rows[i].key : "<>", rows[i].c.messages, rows[i].c.recipients, rows[i].c.bytes,
			rows[i].c.delivered, rows[i].c.deferred, rows[i].c.bounced, rows[i].c.rejected);
	free(rows);
	ledger_free(l);
	return true;
}
