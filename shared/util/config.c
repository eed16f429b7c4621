/*
 * config.c — rampart.conf: INI parsing into sections of key/value pairs,
 * typed binding of one section onto a caller's struct through a parameter
 * table (defaults, then the file, then RAMPART_<SECTION>_<KEY> from the
 * environment), and the dump and documentation printers used by
 * `rampartctl config check`.
 *
 * Syntax, one item per line (lines are bounded, see CONFIG_MAX_LINE):
 *   [section]        a-z, 0-9, '.', '_', '-'; each section appears once
 *   key = value      surrounding whitespace trimmed; keys before the first
 *                    header belong to [global]; a key appears once per section
 *   key = "value"    quotes keep spaces and '#'; \" and \\ are escapes
 *   # or ;           full-line comment; in an unquoted value a '#' at its
 *                    start or after whitespace also starts a comment
 *
 * Numeric bounds: min == max == 0 means "no bound" (for PT_SIZE and
 * PT_TIME that still means non-negative).  PT_STR: min > 0 makes the value
 * required (non-empty), max > 0 caps its length; PT_LIST: min/max count the
 * items.  A required string or list may have an empty default: bind then
 * reports it as unset unless the file or the environment gives it.
 *
 * There is no global state: a struct config owns everything it parsed, so
 * a reload parses a new one, binds it, and swaps.
 */
#include "config.h"
#include "alloc.h"
#include "buf.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_MAX_LINE 8192               /* bytes per line, newline excluded */
#define CONFIG_MAX_FILE (16u * 1024 * 1024) /* whole file */
#define GLOBAL_SECTION "global"

struct cfg_entry {
	char *key;
	char *value;
	int line;
};

struct cfg_section {
	char *name;
	int line;               /* 0: [global] implied by keys before any header */
	struct cfg_entry *e;
	size_t n, cap;
};

struct config {
	char *path;             /* file path, or the name given to config_parse_string */
	struct cfg_section *sec;
	size_t nsec, capsec;
	const char **names;     /* section names in file order (for config_sections) */
};

/* ---- small helpers ------------------------------------------------------ */

static void seterr(struct config_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(struct config_error *err, const char *fmt, ...)
{
	if (!err)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
}

static void setwhy(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void setwhy(char *why, size_t whylen, const char *fmt, ...)
{
	if (!why || whylen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Trim blanks in place; returns the new start. */
static char *trim(char *s)
{
	while (is_blank(*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && is_blank(s[n - 1]))
		s[--n] = '\0';
	return s;
}

static bool has_ctl(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
			return true;
	return false;
}

/* A value as shown inside an error message: bounded, one line. */
static void shown(char *out, size_t outlen, const char *s)
{
	const size_t max = 60;
	size_t i = 0, o = 0;
	for (; s[i] && i < max && o + 1 < outlen; i++, o++) {
		unsigned char c = (unsigned char)s[i];
		out[o] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	out[o] = '\0';
	if (s[i] && outlen > o + 3)
		memcpy(out + o, "...", 4);
}

static bool valid_section_name(const char *s)
{
	if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' ||
		      *s == '-'))
			return false;
	return true;
}

static bool valid_key(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!(isalnum((unsigned char)*s) || *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

/* ---- the raw parse ------------------------------------------------------ */

static struct cfg_section *find_section(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nsec; i++)
		if (strcmp(cfg->sec[i].name, name) == 0)
			return &cfg->sec[i];
	return NULL;
}

static const struct cfg_entry *find_entry(const struct cfg_section *s, const char *key)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcasecmp(s->e[i].key, key) == 0)
			return &s->e[i];
	return NULL;
}

static size_t add_section(struct config *cfg, const char *name, int line)
{
	if (cfg->nsec == cfg->capsec) {
		cfg->capsec = cfg->capsec ? cfg->capsec * 2 : 8;
		cfg->sec = xrealloc(cfg->sec, cfg->capsec * sizeof(*cfg->sec));
	}
	struct cfg_section *s = &cfg->sec[cfg->nsec];
	memset(s, 0, sizeof(*s));
	s->name = xstrdup(name);
	s->line = line;
	return cfg->nsec++;
}

static void add_entry(struct cfg_section *s, const char *key, const char *value, int line)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 8;
		s->e = xrealloc(s->e, s->cap * sizeof(*s->e));
	}
	s->e[s->n].key = xstrdup(key);
	s->e[s->n].value = xstrdup(value);
	s->e[s->n].line = line;
	s->n++;
}

/*
 * The text after '=' (already trimmed), in place: a quoted value loses its
 * quotes and escapes; an unquoted one loses a trailing comment.
 */
static bool unquote(char *v, const char **why)
{
	if (*v != '"') {
		for (char *p = v; *p; p++)
			if (*p == '#' && (p == v || is_blank(p[-1]))) {
				*p = '\0';
				break;
			}
		size_t n = strlen(v);
		while (n > 0 && is_blank(v[n - 1]))
			v[--n] = '\0';
		return true;
	}
	char *r = v + 1, *w = v;
	for (;;) {
		if (*r == '\0') {
			*why = "unterminated quoted value (missing closing '\"')";
			return false;
		}
		if (*r == '"')
			break;
		if (*r == '\\' && (r[1] == '"' || r[1] == '\\')) {
			*w++ = r[1];
			r += 2;
			continue;
		}
		*w++ = *r++;
	}
	r++;
	while (is_blank(*r))
		r++;
	if (*r && *r != '#') {
		*why = "unexpected text after the closing quote";
		return false;
	}
	*w = '\0';
	return true;
}

static void build_names(struct config *cfg)
{
	cfg->names = xcalloc(cfg->nsec + 1, sizeof(*cfg->names));
	for (size_t i = 0; i < cfg->nsec; i++)
		cfg->names[i] = cfg->sec[i].name;
}

static struct config *parse_text(const char *name, const char *text, size_t len,
				 struct config_error *err)
{
	struct config *cfg = xcalloc(1, sizeof(*cfg));
	cfg->path = xstrdup(name);
	char *line = xmalloc(CONFIG_MAX_LINE + 1);
	size_t cur = SIZE_MAX;   /* index of the current section */
	size_t pos = 0;
	int lineno = 0;

	if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)   /* UTF-8 BOM */
		pos = 3;
	while (pos < len) {
		lineno++;
		const char *start = text + pos;
		const char *nl = memchr(start, '\n', len - pos);
		size_t ll = nl ? (size_t)(nl - start) : len - pos;
		pos += ll + (nl ? 1 : 0);
		if (ll > CONFIG_MAX_LINE) {
			seterr(err, "%s:%d: line too long (more than %d bytes)", name, lineno,
			       CONFIG_MAX_LINE);
			goto fail;
		}
		if (memchr(start, '\0', ll)) {
			seterr(err, "%s:%d: NUL byte in line", name, lineno);
			goto fail;
		}
		memcpy(line, start, ll);
		line[ll] = '\0';
		char *s = trim(line);
		if (*s == '\0' || *s == '#' || *s == ';')
			continue;

		if (*s == '[') {
			size_t sl = strlen(s);
			if (s[sl - 1] != ']')
				goto syntax;
			s[sl - 1] = '\0';
			char *sec = trim(s + 1);
			if (!valid_section_name(sec)) {
				char show[80];
				shown(show, sizeof(show), sec);
				seterr(err, "%s:%d: bad section name [%s] (use a-z, 0-9, '.', '_', '-')",
				       name, lineno, show);
				goto fail;
			}
			struct cfg_section *old = find_section(cfg, sec);
			if (old && old->line == 0) {        /* keys came before an explicit [global] */
				old->line = lineno;
				cur = (size_t)(old - cfg->sec);
				continue;
			}
			if (old) {
				seterr(err, "%s:%d: duplicate section [%s] (first on line %d)", name, lineno,
				       sec, old->line);
				goto fail;
			}
			cur = add_section(cfg, sec, lineno);
			continue;
		}

		char *eq = strchr(s, '=');
		if (!eq)
			goto syntax;
		*eq = '\0';
		char *key = trim(s);
		if (!valid_key(key))
			goto syntax;
		char *val = trim(eq + 1);
		const char *why = NULL;
		if (!unquote(val, &why)) {
			seterr(err, "%s:%d: %s", name, lineno, why);
			goto fail;
		}
		if (cur == SIZE_MAX) {
			struct cfg_section *g = find_section(cfg, GLOBAL_SECTION);
			cur = g ? (size_t)(g - cfg->sec) : add_section(cfg, GLOBAL_SECTION, 0);
		}
		struct cfg_section *sec = &cfg->sec[cur];
		const struct cfg_entry *dup = find_entry(sec, key);
		if (dup) {
			seterr(err, "%s:%d: duplicate key '%s' in [%s] (first set on line %d)", name, lineno,
			       key, sec->name, dup->line);
			goto fail;
		}
		add_entry(sec, key, val, lineno);
		continue;
syntax:
		seterr(err, "%s:%d: expected 'key = value' or '[section]'", name, lineno);
		goto fail;
	}
	free(line);
	build_names(cfg);
	return cfg;
fail:
	free(line);
	config_free(cfg);
	return NULL;
}

struct config *config_parse_string(const char *name, const char *text, struct config_error *err)
{
	return parse_text(name ? name : "(string)", text ? text : "", text ? strlen(text) : 0, err);
}

struct config *config_parse_file(const char *path, struct config_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		seterr(err, "%s: cannot read: %s", path, strerror(errno));
		return NULL;
	}
	struct buf b = BUF_INIT;
	buf_set_limit(&b, CONFIG_MAX_FILE + 1);
	char chunk[8192];
	for (;;) {
		ssize_t r = read(fd, chunk, sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			seterr(err, "%s: cannot read: %s", path, strerror(errno));
			close(fd);
			buf_free(&b);
			return NULL;
		}
		if (r == 0)
			break;
		if (!buf_append(&b, chunk, (size_t)r) || b.len > CONFIG_MAX_FILE) {
			seterr(err, "%s: cannot read: file larger than %u bytes", path, CONFIG_MAX_FILE);
			close(fd);
			buf_free(&b);
			return NULL;
		}
	}
	close(fd);
	struct config *cfg = parse_text(path, buf_cstr(&b), b.len, err);
	buf_free(&b);
	return cfg;
}

void config_free(struct config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->nsec; i++) {
		struct cfg_section *s = &cfg->sec[i];
		for (size_t j = 0; j < s->n; j++) {
			free(s->e[j].key);
			free(s->e[j].value);
		}
		free(s->e);
		free(s->name);
	}
	free(cfg->sec);
	free(cfg->names);
	free(cfg->path);
	free(cfg);
}

const char *config_path(const struct config *cfg)
{
	return cfg ? cfg->path : NULL;
}

const char **config_sections(const struct config *cfg, size_t *n)
{
	if (!cfg) {
		if (n)
			*n = 0;
		return NULL;
	}
	if (n)
		*n = cfg->nsec;
	return cfg->names;
}

bool config_has_section(const struct config *cfg, const char *section)
{
	return cfg && find_section(cfg, section) != NULL;
}

void config_section_stage(const char *section, char *out, size_t outlen)
{
	if (!out || outlen == 0)
		return;
	size_t n = strcspn(section, ".");
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, section, n);
	out[n] = '\0';
}

/* ---- values ------------------------------------------------------------- */

#define KIB 1024LL
#define MIB (1024LL * 1024)
#define GIB (1024LL * 1024 * 1024)
#define T_S 1000LL
#define T_M (60 * T_S)
#define T_H (60 * T_M)
#define T_D (24 * T_H)
#define T_W (7 * T_D)

bool parse_digits(const char **s, unsigned long long limit, unsigned long long *v)
{
	const char *p = *s;
	unsigned long long n = 0;
	if (!isdigit((unsigned char)*p))
		return false;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (n > (limit - d) / 10)
			return false;
		n = n * 10 + d;
	}
	*s = p;
	*v = n;
	return true;
}

static bool parse_int(const char *s, long long *out)
{
	bool neg = false;
	if (*s == '-' || *s == '+')
		neg = *s++ == '-';
	unsigned long long v;
	unsigned long long limit = neg ? (unsigned long long)LLONG_MAX + 1 : (unsigned long long)LLONG_MAX;
	if (!parse_digits(&s, limit, &v) || *s)
		return false;
	if (neg)
		*out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
	else
		*out = (long long)v;
	return true;
}

struct unit {
	const char *name;
	long long mult;
};

static const struct unit size_units[] = {
	{ "", 1 }, { "b", 1 }, { "k", KIB }, { "kb", KIB }, { "m", MIB }, { "mb", MIB },
	{ "g", GIB }, { "gb", GIB }, { NULL, 0 },
};

static const struct unit time_units[] = {
	{ "", T_S }, { "ms", 1 }, { "s", T_S }, { "m", T_M }, { "h", T_H }, { "d", T_D },
	{ "w", T_W }, { NULL, 0 },
};

/* A non-negative number with an optional unit (blanks allowed between). */
static bool parse_scaled(const char *s, const struct unit *units, long long *out)
{
	unsigned long long v;
	if (!parse_digits(&s, (unsigned long long)LLONG_MAX, &v))
		return false;
	while (is_blank(*s))
		s++;
	for (const struct unit *u = units; u->name; u++)
		if (strcasecmp(s, u->name) == 0) {
			if (v > (unsigned long long)(LLONG_MAX / u->mult))
				return false;
			*out = (long long)v * u->mult;
			return true;
		}
	return false;
}

/* v in the largest unit (at least base) that divides it exactly. */
static void fmt_scaled(char *out, size_t n, long long v, const struct unit *units, long long base,
		       const char *base_name)
{
	const struct unit *best = NULL;
	if (v > 0)
		for (const struct unit *u = units; u->name; u++)
			if (u->name[0] && u->mult > base && v % u->mult == 0 &&
			    (!best || u->mult > best->mult))
				best = u;
	if (best)
		snprintf(out, n, "%lld%s", v / best->mult, best->name);
	else
		snprintf(out, n, "%lld%s", v / base, base_name);
}

static void fmt_size(char *out, size_t n, long long v)
{
	fmt_scaled(out, n, v, size_units, 1, "");
}

static void fmt_time(char *out, size_t n, long long v)
{
	if (v == 0)
		snprintf(out, n, "0s");
	else if (v % T_S != 0)
		snprintf(out, n, "%lldms", v);
	else
		fmt_scaled(out, n, v, time_units, T_S, "s");
}

static void numeric_bounds(const struct param_def *p, long long *lo, long long *hi)
{
	if (p->min == 0 && p->max == 0) {
		*lo = p->type == PT_INT || p->type == PT_NUMBER ? LLONG_MIN : 0;
		*hi = LLONG_MAX;
	} else {
		*lo = p->min;
		*hi = p->max;
	}
}

static void fmt_num(char *out, size_t n, const struct param_def *p, long long v)
{
	if (p->type == PT_SIZE)
		fmt_size(out, n, v);
	else if (p->type == PT_TIME)
		fmt_time(out, n, v);
	else
		snprintf(out, n, "%lld", v);
}

/* "between 1k and 1g", "of at least 1k", "" (unbounded). */
static void fmt_bounds_phrase(char *out, size_t n, const struct param_def *p)
{
	long long lo, hi;
	char a[32], b[32];
	numeric_bounds(p, &lo, &hi);
	long long lowest = p->type == PT_INT || p->type == PT_NUMBER ? LLONG_MIN : 0;
	fmt_num(a, sizeof(a), p, lo);
	fmt_num(b, sizeof(b), p, hi);
	if (lo == lowest && hi == LLONG_MAX)
		out[0] = '\0';
	else if (hi == LLONG_MAX)
		snprintf(out, n, " of at least %s", a);
	else if (lo == lowest)
		snprintf(out, n, " of at most %s", b);
	else
		snprintf(out, n, " between %s and %s", a, b);
}

static void numeric_error(const struct param_def *p, const char *text, char *why, size_t whylen)
{
	char range[80], show[80];
	fmt_bounds_phrase(range, sizeof(range), p);
	shown(show, sizeof(show), text);
	const char *what = p->type == PT_INT ? "an integer" : p->type == PT_NUMBER ? "a number"
			   : p->type == PT_SIZE ? "a size" : "a duration";
	if (p->type == PT_INT || p->type == PT_NUMBER) {
		setwhy(why, whylen, "expected %s%s, got '%s'", what, range, show);
		return;
	}
	char eg[64];
	if (p->def && *p->def && strcmp(p->def, "0") != 0)   /* "0" usually means "off" */
		shown(eg, sizeof(eg), p->def);
	else
		snprintf(eg, sizeof(eg), "%s", p->type == PT_SIZE ? "10m" : "30s");
	setwhy(why, whylen, "expected %s%s (e.g. %s), got '%s'", what, range, eg, show);
}

/* Index of text in "a|b|c" (case-insensitive), or -1. */
static int enum_index(const char *choices, const char *text)
{
	if (!choices)
		return -1;
	size_t tl = strlen(text);
	int i = 0;
	for (const char *c = choices;; i++) {
		size_t cl = strcspn(c, "|");
		if (cl == tl && strncasecmp(c, text, tl) == 0)
			return i;
		if (!c[cl])
			return -1;
		c += cl + 1;
	}
}

/* The name of choice i ("" when out of range), into out. */
static void enum_name(const char *choices, int idx, char *out, size_t n)
{
	out[0] = '\0';
	if (!choices || idx < 0)
		return;
	const char *c = choices;
	for (int i = 0; i < idx; i++) {
		c = strchr(c, '|');
		if (!c)
			return;
		c++;
	}
	size_t cl = strcspn(c, "|");
	snprintf(out, n, "%.*s", (int)cl, c);
}

static void split_list(const char *text, struct strlist *l)
{
	size_t cap = 0;
	l->n = 0;
	l->v = NULL;
	const char *p = text;
	for (;;) {
		while (*p == ',' || isspace((unsigned char)*p))
			p++;
		if (!*p)
			break;
		const char *w = p;
		while (*p && *p != ',' && !isspace((unsigned char)*p))
			p++;
		if (l->n == cap) {
			cap = cap ? cap * 2 : 4;
			l->v = xrealloc(l->v, cap * sizeof(*l->v));
		}
		l->v[l->n++] = xstrndup(w, (size_t)(p - w));
	}
}

static const char *type_name(enum param_type t)
{
	switch (t) {
	case PT_BOOL: return "bool";
	case PT_INT: return "int";
	case PT_SIZE: return "size";
	case PT_TIME: return "time";
	case PT_STR: return "string";
	case PT_LIST: return "list";
	case PT_ENUM: return "enum";
	case PT_NUMBER: return "number";
	}
	return "?";
}

/*
 * Parse text as p's value into target + p->offset, replacing (and freeing)
 * what was there.  skip_min: a default may leave a required string or list
 * empty; bind reports it if nothing else sets it.
 */
static bool parse_value(const struct param_def *p, const char *text, void *target, char *why,
			size_t whylen, bool skip_min)
{
	void *field = (char *)target + p->offset;
	char show[80];

	switch (p->type) {
	case PT_BOOL: {
		static const char *yes[] = { "yes", "true", "on", "1" };
		static const char *no[] = { "no", "false", "off", "0" };
		for (size_t i = 0; i < 4; i++) {
			if (strcasecmp(text, yes[i]) == 0) {
				*(bool *)field = true;
				return true;
			}
			if (strcasecmp(text, no[i]) == 0) {
				*(bool *)field = false;
				return true;
			}
		}
		shown(show, sizeof(show), text);
		setwhy(why, whylen, "expected yes or no (also true/false, on/off, 1/0), got '%s'", show);
		return false;
	}
	case PT_INT:
	case PT_SIZE:
	case PT_TIME: {
		long long v, lo, hi;
		bool ok = p->type == PT_INT    ? parse_int(text, &v)
			  : p->type == PT_SIZE ? parse_scaled(text, size_units, &v)
					       : parse_scaled(text, time_units, &v);
		numeric_bounds(p, &lo, &hi);
		if (!ok || v < lo || v > hi) {
			numeric_error(p, text, why, whylen);
			return false;
		}
		*(long long *)field = v;
		return true;
	}
	case PT_NUMBER: {
		long long lo, hi;
		numeric_bounds(p, &lo, &hi);
		/* plain decimal only: [+-]digits[.digits] (no blanks, exponents, hex or nan) */
		size_t k = (text[0] == '+' || text[0] == '-') ? 1 : 0, d = 0;
		while (isdigit((unsigned char)text[k])) {
			k++;
			d++;
		}
		if (d && text[k] == '.') {
			size_t f = 0;
			for (k++; isdigit((unsigned char)text[k]); k++)
				f++;
			if (!f)
				d = 0;
		}
		char *end;
		errno = 0;
		double v = d && !text[k] ? strtod(text, &end) : 0;
		if (!d || text[k] || errno || !isfinite(v) || v < (double)lo || v > (double)hi) {
			numeric_error(p, text, why, whylen);
			return false;
		}
		*(double *)field = v;
		return true;
	}
	case PT_STR: {
		size_t len = strlen(text);
		if (has_ctl(text)) {
			setwhy(why, whylen, "control characters are not allowed");
			return false;
		}
		if (!skip_min && p->min > 0 && len == 0) {
			setwhy(why, whylen, "must not be empty");
			return false;
		}
		if (p->max > 0 && len > (unsigned long long)p->max) {
			setwhy(why, whylen, "expected at most %lld characters, got %zu", p->max, len);
			return false;
		}
		char **sp = field;
		free(*sp);
		*sp = xstrdup(text);
		return true;
	}
	case PT_LIST: {
		if (has_ctl(text)) {
			setwhy(why, whylen, "control characters are not allowed");
			return false;
		}
		struct strlist l;
		split_list(text, &l);
		if (!skip_min && p->min > 0 && l.n < (unsigned long long)p->min) {
			setwhy(why, whylen, "expected at least %lld item%s, got %zu", p->min,
			       p->min == 1 ? "" : "s", l.n);
			strlist_free(&l);
			return false;
		}
		if (p->max > 0 && l.n > (unsigned long long)p->max) {
			setwhy(why, whylen, "expected at most %lld item%s, got %zu", p->max,
			       p->max == 1 ? "" : "s", l.n);
			strlist_free(&l);
			return false;
		}
		struct strlist *dst = field;
		strlist_free(dst);
		*dst = l;
		return true;
	}
	case PT_ENUM: {
		int i = enum_index(p->choices, text);
		if (i < 0) {
			struct buf b = BUF_INIT;
			const char *c = p->choices ? p->choices : "";
			for (; *c; c++)
				if (*c == '|')
					buf_puts(&b, ", ");
				else
					buf_putc(&b, *c);
			shown(show, sizeof(show), text);
			setwhy(why, whylen, "expected one of %s, got '%s'", buf_cstr(&b), show);
			buf_free(&b);
			return false;
		}
		*(int *)field = i;
		return true;
	}
	}
	setwhy(why, whylen, "parameter has an unknown type %d", (int)p->type);
	return false;
}

bool config_parse_value(const struct param_def *p, const char *text, void *target, char *why,
			size_t whylen)
{
	return parse_value(p, text, target, why, whylen, false);
}

/* ---- binding ------------------------------------------------------------ */

static const struct param_def *find_param(const struct param_set *set, const char *key)
{
	for (const struct param_def *p = set->params; p && p->name; p++)
		if (strcasecmp(p->name, key) == 0)
			return p;
	return NULL;
}

/* RAMPART_<SECTION>_<KEY>, upper case, '.' and '-' as '_'. */
static void env_name(struct buf *b, const char *section, const char *key)
{
	buf_reset(b);
	buf_puts(b, "RAMPART_");
	for (const char *s = section; *s; s++)
		buf_putc(b, (*s == '.' || *s == '-') ? '_' : (char)toupper((unsigned char)*s));
	buf_putc(b, '_');
	for (const char *s = key; *s; s++)
		buf_putc(b, (*s == '.' || *s == '-') ? '_' : (char)toupper((unsigned char)*s));
}

/* Case-insensitive edit distance; large when either string is long. */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 64 || lb > 64)
		return SIZE_MAX;
	size_t prev[65], cur[65];
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t sub = prev[j - 1] +
				     (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
			size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
			cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
		}
		memcpy(prev, cur, (lb + 1) * sizeof(size_t));
	}
	return prev[lb];
}

static void unknown_key(struct config_error *err, const struct config *cfg, const char *section,
			const struct cfg_entry *e, const struct param_set *set)
{
	const struct param_def *best = NULL;
	size_t bestd = SIZE_MAX;
	for (const struct param_def *p = set->params; p && p->name; p++) {
		size_t d = edit_distance(e->key, p->name);
		if (d < bestd) {
			bestd = d;
			best = p;
		}
	}
	struct buf hint = BUF_INIT;
	size_t klen = strlen(e->key);
	if (!best) {
		buf_puts(&hint, "this section takes no keys");
	} else if (bestd <= 2 && bestd < klen) {
		buf_printf(&hint, "did you mean '%s'?", best->name);
	} else {
		buf_puts(&hint, "known: ");
		bool first = true;
		for (const struct param_def *p = set->params; p->name; p++) {
			if (hint.len + strlen(p->name) > 200) {
				buf_puts(&hint, ", ...");
				break;
			}
			buf_printf(&hint, "%s%s", first ? "" : ", ", p->name);
			first = false;
		}
	}
	char show[80];
	shown(show, sizeof(show), e->key);
	seterr(err, "%s:%d: [%s] unknown key '%s' (%s)", cfg->path, e->line, section, show,
	       buf_cstr(&hint));
	buf_free(&hint);
}

static size_t value_len(const struct param_def *p, const void *target)
{
	const void *field = (const char *)target + p->offset;
	if (p->type == PT_STR)
		return *(char *const *)field ? strlen(*(char *const *)field) : 0;
	return ((const struct strlist *)field)->n;
}

bool config_bind(const struct config *cfg, const char *section, const struct param_set *set,
		 void *target, struct config_error *err)
{
	char why[256];
	struct buf var = BUF_INIT;
	const char *path = cfg ? cfg->path : NULL;

	memset(target, 0, set->size);
	for (const struct param_def *p = set->params; p && p->name; p++)
		if (!parse_value(p, p->def ? p->def : "", target, why, sizeof(why), true))
			log_panic(NULL, NULL, "config_bad_default", "section=%s key=%s reason=%s", section,
				  p->name, why);

	const struct cfg_section *sec = cfg ? find_section(cfg, section) : NULL;
	for (size_t i = 0; sec && i < sec->n; i++) {
		const struct cfg_entry *e = &sec->e[i];
		const struct param_def *p = find_param(set, e->key);
		if (!p) {
			unknown_key(err, cfg, section, e, set);
			goto fail;
		}
		if (!parse_value(p, e->value, target, why, sizeof(why), false)) {
			seterr(err, "%s:%d: [%s] %s: %s", path, e->line, section, p->name, why);
			goto fail;
		}
	}

	for (const struct param_def *p = set->params; p && p->name; p++) {
		env_name(&var, section, p->name);
		const char *v = getenv(buf_cstr(&var));
		if (v && !parse_value(p, v, target, why, sizeof(why), false)) {
			seterr(err, "environment %s: %s", buf_cstr(&var), why);
			goto fail;
		}
	}

	/* Required strings and lists that only have their (empty) default. */
	for (const struct param_def *p = set->params; p && p->name; p++) {
		if ((p->type != PT_STR && p->type != PT_LIST) || p->min <= 0)
			continue;
		size_t have = value_len(p, target);
		if (have >= (unsigned long long)p->min)
			continue;
		env_name(&var, section, p->name);
		if (have == 0)
			seterr(err, "%s%s[%s] %s: required but not set (set it in [%s] or %s)",
			       path ? path : "", path ? ": " : "", section, p->name, section, buf_cstr(&var));
		else
			seterr(err, "%s%s[%s] %s: needs at least %lld items (set it in [%s] or %s)",
			       path ? path : "", path ? ": " : "", section, p->name, p->min, section,
			       buf_cstr(&var));
		goto fail;
	}
	buf_free(&var);
	return true;
fail:
	buf_free(&var);
	config_release(set, target);
	return false;
}

const char *config_str(const struct param_set *set, const void *target, const char *name)
{
	for (const struct param_def *d = set->params; d && d->name; d++)
		if (d->type == PT_STR && strcmp(d->name, name) == 0)
			return *(char *const *)((const char *)target + d->offset);
	return NULL;
}

void config_release(const struct param_set *set, void *target)
{
	if (!set || !target)
		return;
	for (const struct param_def *p = set->params; p && p->name; p++) {
		void *field = (char *)target + p->offset;
		if (p->type == PT_STR) {
			char **sp = field;
			free(*sp);
			*sp = NULL;
		} else if (p->type == PT_LIST) {
			strlist_free(field);
		}
	}
}

/* ---- printing ----------------------------------------------------------- */

static bool needs_quotes(const char *s)
{
	size_t n = strlen(s);
	return n == 0 || is_blank(s[0]) || is_blank(s[n - 1]) || s[0] == '"' || strchr(s, '#');
}

static void put_text(struct buf *b, const char *s)
{
	if (!needs_quotes(s)) {
		buf_puts(b, s);
		return;
	}
	buf_putc(b, '"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			buf_putc(b, '\\');
		buf_putc(b, *s);
	}
	buf_putc(b, '"');
}

/* The value of p in target, as it would be written in the file. */
static void put_value(struct buf *b, const struct param_def *p, const void *target)
{
	const void *field = (const char *)target + p->offset;
	char tmp[64];
	switch (p->type) {
	case PT_BOOL:
		buf_puts(b, *(const bool *)field ? "yes" : "no");
		break;
	case PT_INT:
	case PT_SIZE:
	case PT_TIME:
		fmt_num(tmp, sizeof(tmp), p, *(const long long *)field);
		buf_puts(b, tmp);
		break;
	case PT_NUMBER:
		snprintf(tmp, sizeof(tmp), "%g", *(const double *)field);
		buf_puts(b, tmp);
		break;
	case PT_STR: {
		const char *s = *(char *const *)field;
		put_text(b, s ? s : "");
		break;
	}
	case PT_LIST: {
		const struct strlist *l = field;
		struct buf j = BUF_INIT;
		for (size_t i = 0; i < l->n; i++) {
			if (i)
				buf_putc(&j, ' ');
			buf_puts(&j, l->v[i]);
		}
		put_text(b, buf_cstr(&j));
		buf_free(&j);
		break;
	}
	case PT_ENUM:
		enum_name(p->choices, *(const int *)field, tmp, sizeof(tmp));
		buf_puts(b, tmp);
		break;
	}
}

/* Column for the trailing comments: the widest "key = value", capped. */
static int comment_column(struct buf *lines, size_t n)
{
	size_t w = 0;
	for (size_t i = 0; i < n; i++)
		if (lines[i].len > w)
			w = lines[i].len;
	return w > 40 ? 40 : (int)w;
}

void config_dump(FILE *out, const struct config *cfg, const char *section,
		 const struct param_set *set, const void *target)
{
	size_t n = 0;
	for (const struct param_def *p = set->params; p && p->name; p++)
		n++;
	struct buf *lines = xcalloc(n ? n : 1, sizeof(*lines));
	size_t i = 0;
	for (const struct param_def *p = set->params; p && p->name; p++, i++) {
		buf_printf(&lines[i], "%s = ", p->name);
		put_value(&lines[i], p, target);
	}
	int col = comment_column(lines, n);
	const struct cfg_section *sec = cfg ? find_section(cfg, section) : NULL;
	struct buf var = BUF_INIT;

	fprintf(out, "[%s]\n", section);
	i = 0;
	for (const struct param_def *p = set->params; p && p->name; p++, i++) {
		env_name(&var, section, p->name);
		const struct cfg_entry *e = sec ? find_entry(sec, p->name) : NULL;
		fprintf(out, "%-*s   # ", col, buf_cstr(&lines[i]));
		if (getenv(buf_cstr(&var)))
			fprintf(out, "env %s\n", buf_cstr(&var));
		else if (e)
			fprintf(out, "%s:%d\n", cfg->path, e->line);
		else
			fprintf(out, "default\n");
		buf_free(&lines[i]);
	}
	buf_free(&var);
	free(lines);
}

/* "size, 1k..1g", "string, required", "one of queue|proxy", ... */
static void describe(struct buf *b, const struct param_def *p)
{
	buf_puts(b, type_name(p->type));
	switch (p->type) {
	case PT_BOOL:
		break;
	case PT_INT:
	case PT_NUMBER:
	case PT_SIZE:
	case PT_TIME: {
		long long lo, hi;
		char a[32], c[32];
		numeric_bounds(p, &lo, &hi);
		long long lowest = p->type == PT_INT || p->type == PT_NUMBER ? LLONG_MIN : 0;
		fmt_num(a, sizeof(a), p, lo);
		fmt_num(c, sizeof(c), p, hi);
		if (lo == lowest && hi == LLONG_MAX)
			break;
		if (hi == LLONG_MAX)
			buf_printf(b, ", at least %s", a);
		else if (lo == lowest)
			buf_printf(b, ", at most %s", c);
		else
			buf_printf(b, ", %s..%s", a, c);
		break;
	}
	case PT_STR:
		if (p->min > 0)
			buf_puts(b, ", required");
		if (p->max > 0)
			buf_printf(b, ", at most %lld characters", p->max);
		break;
	case PT_LIST:
		if (p->min > 0)
			buf_printf(b, ", at least %lld item%s", p->min, p->min == 1 ? "" : "s");
		if (p->max > 0)
			buf_printf(b, ", at most %lld item%s", p->max, p->max == 1 ? "" : "s");
		break;
	case PT_ENUM:
		buf_printf(b, ", one of %s", p->choices ? p->choices : "");
		break;
	}
}

void config_doc(FILE *out, const struct param_set *set)
{
	/* Render each default through the parser, so the page shows exactly
	 * what bind would store and a bad default is caught here too. */
	void *tmp = xcalloc(1, set->size ? set->size : 1);
	char why[256];
	size_t n = 0;
	for (const struct param_def *p = set->params; p && p->name; p++)
		n++;
	struct buf *lines = xcalloc(n ? n : 1, sizeof(*lines));
	size_t i = 0;
	for (const struct param_def *p = set->params; p && p->name; p++, i++) {
		if (!parse_value(p, p->def ? p->def : "", tmp, why, sizeof(why), true))
			log_panic(NULL, NULL, "config_bad_default", "section=%s key=%s reason=%s",
				  set->stage, p->name, why);
		buf_printf(&lines[i], "%s = ", p->name);
		put_value(&lines[i], p, tmp);
	}
	int col = comment_column(lines, n);

	if (set->doc && *set->doc)
		fprintf(out, "# [%s]: %s\n", set->stage, set->doc);
	fprintf(out, "[%s]\n", set->stage);
	struct buf d = BUF_INIT;
	i = 0;
	for (const struct param_def *p = set->params; p && p->name; p++, i++) {
		buf_reset(&d);
		describe(&d, p);
		fprintf(out, "%-*s   # %s: %s\n", col, buf_cstr(&lines[i]), buf_cstr(&d),
			p->doc ? p->doc : "");
		buf_free(&lines[i]);
	}
	buf_free(&d);
	free(lines);
	config_release(set, tmp);
	free(tmp);
}

/* ---- string lists ------------------------------------------------------- */

bool strlist_contains(const struct strlist *l, const char *s)
{
	if (!l || !s)
		return false;
	for (size_t i = 0; i < l->n; i++)
		if (strcasecmp(l->v[i], s) == 0)
			return true;
	return false;
}

void strlist_free(struct strlist *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->n = 0;
	l->v = NULL;
}
