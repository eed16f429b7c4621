/*
 * passdb.c — accounts of the submission stage (passdb.h): loading,
 * lookups (a sorted array, binary search), password checks with
 * libxcrypt's crypt_r, sender ownership, and the atomic rewrite
 * rampartctl user uses.
 */
#include "passdb.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/fs.h"

#include <crypt.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define LINE_MAX_LEN 8192

struct passdb {
	char *path;
	struct passdb_account *a;
	size_t n;
	struct stat st;
	struct stat bad;                /* a version of the file that did not load (reported once) */
	time_t checked;
};

static bool same_version(const struct stat *a, const struct stat *b)
{
	return a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_size == b->st_size && a->st_ino == b->st_ino;
}

static void account_free(struct passdb_account *a)
{
	free(a->name);
	if (a->hash) {
		OPENSSL_cleanse(a->hash, strlen(a->hash));
		free(a->hash);
	}
	for (size_t i = 0; i < a->nsenders; i++)
		free(a->senders[i]);
	free(a->senders);
}

void passdb_free(struct passdb *db)
{
	if (!db)
		return;
	for (size_t i = 0; i < db->n; i++)
		account_free(&db->a[i]);
	free(db->a);
	free(db->path);
	free(db);
}

static int by_name(const void *x, const void *y)
{
	return strcasecmp(((const struct passdb_account *)x)->name, ((const struct passdb_account *)y)->name);
}

static bool name_ok(const char *n)
{
	if (!*n || strlen(n) > 255)
		return false;
	for (const unsigned char *p = (const unsigned char *)n; *p; p++)
		if (*p <= ' ' || *p == 0x7f || *p == ':')
			return false;
	return true;
}

/* A senders= entry: an address, @domain, @.domain or *. */
static bool sender_ok(const char *s)
{
	if (strcmp(s, "*") == 0)
		return true;
	const char *at = strrchr(s, '@');
	if (!at || !at[1] || strlen(s) > 320)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p <= ' ' || *p == 0x7f || *p == ',' || *p == '<' || *p == '>')
			return false;
	return at[1] != '.' || at[2];
}

/* One line into a; false with why (what was expected). */
static bool parse_line(char *line, struct passdb_account *a, char *why, size_t whylen)
{
	memset(a, 0, sizeof(*a));
	char *c1 = strchr(line, ':');
	if (!c1) {
		snprintf(why, whylen, "expected NAME:HASH[:OPTIONS]");
		return false;
	}
	*c1 = '\0';
	char *hash = c1 + 1, *opts = strchr(hash, ':');
	if (opts)
		*opts++ = '\0';
	if (!name_ok(line)) {
		snprintf(why, whylen, "bad account name '%.64s' (no blanks or ':')", line);
		return false;
	}
	bool locked = hash[0] == '!';
	const char *h = locked ? hash + 1 : hash;
	if (!locked && !*h) {
		snprintf(why, whylen, "account %s: empty password hash (lock it with '!' instead)", line);
		return false;
	}
	if (*h && h[0] != '$') {
		snprintf(why, whylen, "account %s: expected a crypt(3) hash ($y$... or $6$...)", line);
		return false;
	}
	a->name = xstrdup(line);
	a->hash = xstrdup(h);
	a->locked = locked;
	char *sv;
	for (char *w = opts ? strtok_r(opts, " \t", &sv) : NULL; w; w = strtok_r(NULL, " \t", &sv)) {
		if (strcmp(w, "app") == 0) {
			a->app = true;
		} else if (strncmp(w, "senders=", 8) == 0) {
			char *sv2;
			for (char *e = strtok_r(w + 8, ",", &sv2); e; e = strtok_r(NULL, ",", &sv2)) {
				if (!sender_ok(e)) {
					snprintf(why, whylen, "account %s: bad sender '%.64s' (expected local@domain, "
						 "@domain, @.domain or *)", a->name, e);
					account_free(a);
					return false;
				}
				a->senders = xrealloc(a->senders, (a->nsenders + 1) * sizeof(*a->senders));
				a->senders[a->nsenders++] = xstrdup(e);
			}
		} else {
			snprintf(why, whylen, "account %s: unknown option '%.32s' (expected app or senders=LIST)", a->name,
				 w);
			account_free(a);
			return false;
		}
	}
	return true;
}

struct passdb *passdb_load(const char *path, char *why, size_t whylen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(why, whylen, "%s: cannot read: %s", path, strerror(errno));
		return NULL;
	}
	struct passdb *db = xcalloc(1, sizeof(*db));
	db->path = xstrdup(path);
	fstat(fileno(f), &db->st);
	db->checked = time(NULL);
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	size_t acap = 0;
	while ((n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (n > LINE_MAX_LEN) {
			snprintf(why, whylen, "%s:%u: line too long (at most %d bytes)", path, lineno, LINE_MAX_LEN);
			goto fail;
		}
		while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
			line[--n] = '\0';
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p || *p == '#')
			continue;
		char w[256];
		if (db->n == acap) {
			acap = acap ? acap * 2 : 16;
			db->a = xrealloc(db->a, acap * sizeof(*db->a));
		}
		if (!parse_line(p, &db->a[db->n], w, sizeof(w))) {
			snprintf(why, whylen, "%s:%u: %s", path, lineno, w);
			goto fail;
		}
		db->n++;
	}
	free(line);
	fclose(f);
	qsort(db->a, db->n, sizeof(*db->a), by_name);
	for (size_t i = 1; i < db->n; i++)
		if (strcasecmp(db->a[i - 1].name, db->a[i].name) == 0) {
			snprintf(why, whylen, "%s: account %s is listed twice", path, db->a[i].name);
			passdb_free(db);
			return NULL;
		}
	return db;
fail:
	if (line)
		OPENSSL_cleanse(line, cap);
	free(line);
	fclose(f);
	passdb_free(db);
	return NULL;
}

bool passdb_refresh(struct passdb **dbp, char *why, size_t whylen)
{
	struct passdb *db = *dbp;
	time_t now = time(NULL);
	if (now == db->checked)
		return true;
	db->checked = now;
	struct stat st;
	if (stat(db->path, &st) != 0) {
		snprintf(why, whylen, "%s: %s (keeping the old accounts)", db->path, strerror(errno));
		return false;
	}
	if (same_version(&st, &db->st) || same_version(&st, &db->bad))
		return true;
	struct passdb *n = passdb_load(db->path, why, whylen);
	if (!n) {
		db->bad = st;
		return false;
	}
	passdb_free(db);
	*dbp = n;
	return true;
}

size_t passdb_count(const struct passdb *db)
{
	return db->n;
}

const struct passdb_account *passdb_find(const struct passdb *db, const char *name)
{
	struct passdb_account key = { .name = (char *)name };
	return db->n ? bsearch(&key, db->a, db->n, sizeof(*db->a), by_name) : NULL;
}

const char *passdb_decoy(const struct passdb *db)
{
	/* the middle account: one of the kind most accounts have, with
	 * files where the method changed over the years */
	for (size_t k = 0; k < db->n; k++) {
		const struct passdb_account *a = &db->a[(db->n / 2 + k) % db->n];
		if (a->hash && a->hash[0] == '$')
			return a->hash;
	}
	return NULL;
}

/* ---- passwords ----------------------------------------------------------- */

static char dummy_hash[CRYPT_OUTPUT_SIZE];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void make_dummy(void)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt))) {
		const char *h = crypt_r("rampart-no-such-account", salt, cd);
		if (h && h[0] == '$')
			snprintf(dummy_hash, sizeof(dummy_hash), "%s", h);
	}
	free(cd);
}

bool passdb_verify(const char *hash, const char *password)
{
	bool real = hash && hash[0] == '$';
	if (!real) {
		pthread_once(&dummy_once, make_dummy);
		hash = dummy_hash[0] ? dummy_hash : "$6$rampart$";
	}
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *h = crypt_r(password, hash, cd);
	/* crypt_r answers "*..." on a bad setting; never equal to a hash */
	bool ok = real && h && h[0] == '$' && strlen(h) == strlen(hash) &&
		  CRYPTO_memcmp(h, hash, strlen(hash)) == 0;
	OPENSSL_cleanse(cd, sizeof(*cd));
	free(cd);
	return ok;
}

char *passdb_hash(const char *password, const char *method, char *why, size_t whylen)
{
	const char *prefix = !method || !*method || strcmp(method, "yescrypt") == 0 ? "$y$"
			     : strcmp(method, "sha512") == 0 ? "$6$" : NULL;
	if (!prefix) {
		snprintf(why, whylen, "unknown hash method '%s' (expected yescrypt or sha512)", method);
		return NULL;
	}
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	if (!crypt_gensalt_rn(prefix, 0, NULL, 0, salt, sizeof(salt))) {
		snprintf(why, whylen, "crypt_gensalt: %s", strerror(errno));
		return NULL;
	}
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *h = crypt_r(password, salt, cd);
	char *out = h && h[0] == '$' ? xstrdup(h) : NULL;
	if (!out)
		snprintf(why, whylen, "crypt: %s", strerror(errno));
	OPENSSL_cleanse(cd, sizeof(*cd));
	free(cd);
	return out;
}

/* ---- sender ownership ---------------------------------------------------- */

/* local and domain of addr, lower-cased; the local part without its
 * +subaddress when strip_tag. */
static bool split_addr(const char *addr, bool strip_tag, char *local, size_t llen, char *domain, size_t dlen)
{
	const char *at = strrchr(addr, '@');
	if (!at || at == addr || !at[1])
		return false;
	size_t n = (size_t)(at - addr);
	const char *plus = strip_tag ? memchr(addr, '+', n) : NULL;
	if (plus && plus > addr)
		n = (size_t)(plus - addr);
	if (n >= llen || strlen(at + 1) >= dlen)
		return false;
	for (size_t i = 0; i < n; i++)
		local[i] = (char)tolower((unsigned char)addr[i]);
	local[n] = '\0';
	size_t i = 0;
	for (const char *d = at + 1; *d; d++)
		domain[i++] = (char)tolower((unsigned char)*d);
	domain[i] = '\0';
	return true;
}

/* Does pattern pat give the address local@domain (base: its local part
 * without the +subaddress)?  An address pattern owns itself, and when it
 * has no +subaddress of its own also its +subaddresses: owning
 * "shared+billing@x" does not give "shared@x". */
static bool owns_one(const char *pat, const char *local, const char *base, const char *domain)
{
	if (strcmp(pat, "*") == 0)
		return true;
	const char *at = strrchr(pat, '@');
	if (at == pat) {
		if (at[1] == '.') {     /* @.domain: subdomains */
			size_t dl = strlen(domain), pl = strlen(at + 1);
			return dl > pl && strcasecmp(domain + dl - pl, at + 1) == 0;
		}
		return strcasecmp(at + 1, domain) == 0;
	}
	char pl[256], pd[256];
	if (!split_addr(pat, false, pl, sizeof(pl), pd, sizeof(pd)) || strcmp(pd, domain) != 0)
		return false;
	return strcmp(pl, local) == 0 || (!strchr(pl, '+') && strcmp(pl, base) == 0);
}

bool passdb_owns(const struct passdb_account *a, const char *addr)
{
	if (!addr || !*addr)
		return true;
	char local[256], base[256], domain[256];
	if (!split_addr(addr, false, local, sizeof(local), domain, sizeof(domain)) ||
	    !split_addr(addr, true, base, sizeof(base), domain, sizeof(domain)))
		return false;
	if (!a->nsenders)
		return owns_one(a->name, local, base, domain);
	for (size_t i = 0; i < a->nsenders; i++)
		if (owns_one(a->senders[i], local, base, domain))
			return true;
	return false;
}

/* ---- rewriting the file -------------------------------------------------- */

bool passdb_update(const char *path, const char *name, const char *hash, const char *options, bool remove,
		   bool create, char *why, size_t whylen)
{
	if (!name_ok(name)) {
		snprintf(why, whylen, "bad account name '%s' (no blanks or ':')", name);
		return false;
	}
	struct buf out = BUF_INIT;
	bool found = false;
	mode_t mode = 0600;
	FILE *f = fopen(path, "r");
	if (!f && errno != ENOENT) {
		snprintf(why, whylen, "%s: cannot read: %s", path, strerror(errno));
		return false;
	}
	if (f) {
		struct stat st;
		if (fstat(fileno(f), &st) == 0)
			mode = st.st_mode & 0777;
		char *line = NULL;
		size_t cap = 0;
		ssize_t n;
		while ((n = getline(&line, &cap, f)) >= 0) {
			const char *p = line;
			while (*p == ' ' || *p == '\t')
				p++;
			const char *colon = strchr(p, ':');
			if (*p != '#' && colon && (size_t)(colon - p) == strlen(name) && strncasecmp(p, name, strlen(name)) == 0) {
				found = true;
				if (remove)
					continue;
				/* NAME:HASH[:OPTIONS] with what is kept */
				const char *oh = colon + 1;
				const char *oo = strchr(oh, ':');
				size_t ohl = oo ? (size_t)(oo - oh) : strcspn(oh, "\r\n");
				buf_printf(&out, "%s:", name);
				if (hash)
					buf_puts(&out, hash);
				else
					buf_append(&out, oh, ohl);
				if (options) {
					if (*options)
						buf_printf(&out, ":%s", options);
				} else if (oo) {
					buf_append(&out, oo, strcspn(oo, "\r\n"));
				}
				buf_puts(&out, "\n");
				continue;
			}
			buf_append(&out, line, (size_t)n);
			if (n && line[n - 1] != '\n')
				buf_puts(&out, "\n");
		}
		if (line)
			OPENSSL_cleanse(line, cap);
		free(line);
		fclose(f);
	}
	if (!found && (remove || !create)) {
		snprintf(why, whylen, "no account %s in %s", name, path);
		buf_free(&out);
		return false;
	}
	if (!found) {
		if (!hash) {
			snprintf(why, whylen, "account %s needs a password", name);
			buf_free(&out);
			return false;
		}
		buf_printf(&out, "%s:%s%s%s\n", name, hash, options && *options ? ":" : "", options ? options : "");
	}
	/* the file as it would be must load: nothing is written otherwise */
	{
		char *line = NULL;
		size_t cap = 0;
		FILE *m = fmemopen(out.data ? out.data : (char *)"", out.len, "r");
		unsigned lineno = 0;
		ssize_t n;
		while (m && (n = getline(&line, &cap, m)) >= 0) {
			lineno++;
			while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
				line[--n] = '\0';
			char *p = line;
			while (*p == ' ' || *p == '\t')
				p++;
			if (!*p || *p == '#')
				continue;
			struct passdb_account acc;
			char w[256];
			if (!parse_line(p, &acc, w, sizeof(w))) {
				snprintf(why, whylen, "%s:%u would be wrong: %s (nothing written)", path, lineno, w);
				if (line)
					OPENSSL_cleanse(line, cap);
				free(line);
				fclose(m);
				OPENSSL_cleanse(out.data, out.cap);
				buf_free(&out);
				return false;
			}
			account_free(&acc);
		}
		if (line)
			OPENSSL_cleanse(line, cap);
		free(line);
		if (m)
			fclose(m);
	}
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	bool ok = fd >= 0 && fs_write_all(fd, out.data ? out.data : "", out.len) && fsync(fd) == 0;
	int e = errno;
	if (fd >= 0)
		close(fd);
	OPENSSL_cleanse(out.data, out.cap);
	buf_free(&out);
	if (ok && rename(tmp, path) != 0) {
		e = errno;
		ok = false;
	}
	if (!ok) {
		unlink(tmp);
		snprintf(why, whylen, "%s: cannot write: %s", path, strerror(e));
		return false;
	}
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash) {
		*slash = '\0';
		fs_sync_dir(*dir ? dir : "/");
	} else {
		fs_sync_dir(".");
	}
	return true;
}
