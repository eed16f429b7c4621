/*
 * userlist.c — load, look up and publish the list of mail users.
 * Lookups go through an open-addressing hash of lower-cased addresses.
 */
#include "userlist.h"
#include "maildir.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/config.h"
#include "../util/fs.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct user {
	char *addr;
	long long quota;
};

struct userlist {
	char *path;
	struct user *slots;
	size_t cap, n;
	struct stat st;
	time_t checked;
};

static size_t hash(const char *s)
{
	size_t h = 1469598103934665603ULL;
	for (; *s; s++) {
		h ^= (unsigned char)tolower((unsigned char)*s);
		h *= 1099511628211ULL;
	}
	return h;
}

static void insert(struct userlist *u, char *addr, long long quota)
{
	if ((u->n + 1) * 2 > u->cap) {
		size_t ncap = u->cap ? u->cap * 2 : 64;
		struct user *ns = xcalloc(ncap, sizeof(*ns));
		for (size_t i = 0; i < u->cap; i++) {
			if (!u->slots[i].addr)
				continue;
			size_t j = hash(u->slots[i].addr) & (ncap - 1);
			while (ns[j].addr)
				j = (j + 1) & (ncap - 1);
			ns[j] = u->slots[i];
		}
		free(u->slots);
		u->slots = ns;
		u->cap = ncap;
	}
	size_t j = hash(addr) & (u->cap - 1);
	while (u->slots[j].addr) {
		if (strcasecmp(u->slots[j].addr, addr) == 0) {   /* duplicate: last wins */
			u->slots[j].quota = quota;
			free(addr);
			return;
		}
		j = (j + 1) & (u->cap - 1);
	}
	u->slots[j].addr = addr;
	u->slots[j].quota = quota;
	u->n++;
}

struct userlist *userlist_load(const char *path, char *why, size_t whylen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(why, whylen, "%s: cannot read: %s", path, strerror(errno));
		return NULL;
	}
	struct userlist *u = xcalloc(1, sizeof(*u));
	u->path = xstrdup(path);
	fstat(fileno(f), &u->st);
	u->checked = time(NULL);
	static const struct param_def qdef = { "quota", PT_SIZE, "0", 0, 1LL << 50, NULL, 0, "" };
	char *line = NULL;
	size_t cap = 0;
	ssize_t got;
	unsigned lineno = 0;
	while ((got = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (got > 2047) {
			snprintf(why, whylen, "%s:%u: line too long", path, lineno);
			goto fail;
		}
		if (memchr(line, '\0', (size_t)got)) {
			/* the rest of the line would be read as something else */
			snprintf(why, whylen, "%s:%u: NUL byte in the line", path, lineno);
			goto fail;
		}
		char *p = line;
		while (isspace((unsigned char)*p))
			p++;
		if (!*p || *p == '#')
			continue;
		char *addr = p;
		while (*p && !isspace((unsigned char)*p))
			p++;
		char *end = p;
		while (isspace((unsigned char)*p))
			p++;
		*end = '\0';
		if (!strchr(addr, '@') || strlen(addr) > 256) {
			snprintf(why, whylen, "%s:%u: expected 'user@domain [quota]', got '%s'", path, lineno, addr);
			goto fail;
		}
		{
			/* the store delivers to mail_root/domain/local: an entry it
			 * could never deliver to would take mail only to bounce it */
			const char *at = strrchr(addr, '@');
			char part[257];
			if (!maildir_component(addr, (size_t)(at - addr), part, sizeof(part)) ||
			    !maildir_component(at + 1, strlen(at + 1), part, sizeof(part))) {
				snprintf(why, whylen,
					 "%s:%u: '%s' is not usable as a mailbox (an empty part, a leading '.', "
					 "'/' or a control character)", path, lineno, addr);
				goto fail;
			}
		}
		long long quota = 0;
		if (*p && *p != '#') {
			char *q = p;
			while (*p && !isspace((unsigned char)*p))
				p++;
			char *qend = p;
			while (isspace((unsigned char)*p))
				p++;
			*qend = '\0';
			if (*p && *p != '#') {     /* "a@b 100 m" must not be a 100-byte quota */
				char *extra = p;
				while (*p && !isspace((unsigned char)*p))
					p++;
				*p = '\0';
				snprintf(why, whylen, "%s:%u: expected 'user@domain [quota]', got '%s' after the quota",
					 path, lineno, extra);
				goto fail;
			}
			char qwhy[256];
			if (!config_parse_value(&qdef, q, &quota, qwhy, sizeof(qwhy))) {
				snprintf(why, whylen, "%s:%u: quota: %s", path, lineno, qwhy);
				goto fail;
			}
		}
		insert(u, xstrdup(addr), quota);
	}
	free(line);
	fclose(f);
	return u;
fail:
	free(line);
	fclose(f);
	userlist_free(u);
	return NULL;
}

void userlist_free(struct userlist *u)
{
	if (!u)
		return;
	for (size_t i = 0; i < u->cap; i++)
		free(u->slots[i].addr);
	free(u->slots);
	free(u->path);
	free(u);
}

bool userlist_refresh(struct userlist **up, char *why, size_t whylen)
{
	struct userlist *u = *up;
	time_t now = time(NULL);
	if (now == u->checked)
		return true;
	u->checked = now;
	struct stat st;
	if (stat(u->path, &st) != 0) {
		snprintf(why, whylen, "%s: %s (keeping the old list)", u->path, strerror(errno));
		return false;
	}
	if (st.st_mtim.tv_sec == u->st.st_mtim.tv_sec && st.st_mtim.tv_nsec == u->st.st_mtim.tv_nsec &&
	    st.st_size == u->st.st_size && st.st_ino == u->st.st_ino)
		return true;
	struct userlist *n = userlist_load(u->path, why, whylen);
	if (!n)
		return false;
	userlist_free(u);
	*up = n;
	return true;
}

size_t userlist_count(const struct userlist *u)
{
	return u->n;
}

bool userlist_find(const struct userlist *u, const char *addr, long long *quota)
{
	if (!u->cap)
		return false;
	size_t j = hash(addr) & (u->cap - 1);
	while (u->slots[j].addr) {
		if (strcasecmp(u->slots[j].addr, addr) == 0) {
			if (quota)
				*quota = u->slots[j].quota;
			return true;
		}
		j = (j + 1) & (u->cap - 1);
	}
	return false;
}

bool userlist_publish(const struct userlist *u, const char *path, char *why, size_t whylen)
{
	struct buf b = BUF_INIT;
	buf_puts(&b, "# valid mail users, published by rampart-store; do not edit\n");
	for (size_t i = 0; i < u->cap; i++)
		if (u->slots[i].addr)
			buf_printf(&b, "%s\n", u->slots[i].addr);
	char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	bool ok = fd >= 0;
	size_t off = 0;
	while (ok && off < b.len) {
		ssize_t w = write(fd, b.data + off, b.len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			ok = false;
		else
			off += (size_t)w;
	}
	if (ok && fsync(fd) != 0)
		ok = false;
	if (fd >= 0 && close(fd) != 0)
		ok = false;
	if (ok && rename(tmp, path) != 0)
		ok = false;
	if (ok) {
		char *dir = xstrdup(path);
		char *slash = strrchr(dir, '/');
		if (slash)
			*slash = '\0';
		if (!fs_sync_dir(slash ? (*dir ? dir : "/") : "."))
			ok = false;
		free(dir);
	}
	if (!ok) {
		snprintf(why, whylen, "%s: cannot write: %s", path, strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	buf_free(&b);
	return ok;
}
