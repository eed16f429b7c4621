/*
 * maildir.c — Maildir delivery (see maildir.h).  File names follow the
 * Maildir++ convention "time.Mmicros_Pseq_Rrand.host,S=size" so the quota
 * can be summed from directory entries without opening the files.
 */
#include "maildir.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/config.h"
#include "../util/fs.h"
#include "../util/id.h"

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static int ensure_maildir(const char *dir)
{
	char p[4096];
	static const char *subs[] = { "tmp", "new", "cur" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, subs[i]);
		struct stat st;
		if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
			continue;
		if (fs_mkdir_p(p, 0700) != 0)
			return -1;
	}
	return 0;
}

static long long sum_dir(const char *dir, const char *sub)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", dir, sub);
	DIR *d = opendir(p);
	if (!d)
		return 0;
	long long total = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		/* the size in the name (",S=1234"), when it is one: the user
		 * can rename files through IMAP, so "S=-100000" or a number
		 * past what fits is no size; the file's own size then */
		long long n = -1;
		const char *s = strstr(e->d_name, ",S=");
		unsigned long long v;
		if (s) {
			s += 3;
			if (parse_digits(&s, 1ULL << 50, &v) && (*s == '\0' || *s == ',' || *s == ':'))
				n = (long long)v;
		}
		struct stat st;
		if (n < 0 && fstatat(dirfd(d), e->d_name, &st, 0) == 0)
			n = st.st_size;
		if (n > 0)
			total = total > LLONG_MAX - n ? LLONG_MAX : total + n;
	}
	closedir(d);
	return total;
}

bool maildir_component(const char *in, size_t n, char *out, size_t outlen)
{
	if (n == 0 || n >= outlen || in[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '/' || c < 0x20 || c == 0x7f)
			return false;
		out[i] = (char)tolower(c);
	}
	out[n] = '\0';
	return true;
}

long long maildir_usage(const char *dir)
{
	return sum_dir(dir, "new") + sum_dir(dir, "cur");
}

enum maildir_result maildir_deliver(const char *dir, const char *prefix, const char *data, size_t len,
				    long long quota, char *name_out, size_t name_len, char *why, size_t whylen)
{
	/* The stored form: LF line endings. */
	struct buf b = BUF_INIT;
	buf_reserve(&b, len + strlen(prefix));
	buf_puts(&b, prefix);
	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\r' && i + 1 < len && data[i + 1] == '\n')
			continue;
		buf_putc(&b, data[i]);
	}
	if (quota > 0) {
		if ((long long)b.len > quota) {
			snprintf(why, whylen, "message of %zu bytes is larger than the mailbox quota of %lld", b.len, quota);
			buf_free(&b);
			return MAILDIR_TOO_BIG;
		}
		long long used = maildir_usage(dir);
		if (used > quota - (long long)b.len) {
			snprintf(why, whylen, "mailbox full (%lld of %lld bytes used)", used, quota);
			buf_free(&b);
			return MAILDIR_OVER_QUOTA;
		}
	}
	if (ensure_maildir(dir) != 0) {
		snprintf(why, whylen, "cannot create Maildir %s: %s", dir, strerror(errno));
		buf_free(&b);
		return MAILDIR_TEMPFAIL;
	}
	struct timeval tv;
	gettimeofday(&tv, NULL);
	char host[128];
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	for (char *h = host; *h; h++)
		if (*h == '/' || *h == ':')
			*h = '_';
	char rnd[ID_LEN + 1];
	id_new(rnd);
	char name[512], tmp[4096], dst[4096];
	snprintf(name, sizeof(name), "%lld.M%ldP%dR%s.%s,S=%zu", (long long)tv.tv_sec, (long)tv.tv_usec,
		 (int)getpid(), rnd, host, b.len);
	snprintf(tmp, sizeof(tmp), "%s/tmp/%s", dir, name);
	snprintf(dst, sizeof(dst), "%s/new/%s", dir, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(why, whylen, "cannot create %s: %s", tmp, strerror(errno));
		buf_free(&b);
		return MAILDIR_TEMPFAIL;
	}
	bool ok = fs_write_all(fd, b.data, b.len) && fsync(fd) == 0;
	int saved = errno;
	if (close(fd) != 0 && ok) {
		ok = false;
		saved = errno;
	}
	buf_free(&b);
	if (!ok) {
		snprintf(why, whylen, "cannot write %s: %s", tmp, strerror(saved));
		unlink(tmp);
		return MAILDIR_TEMPFAIL;
	}
	if (rename(tmp, dst) != 0) {
		snprintf(why, whylen, "cannot move %s into new/: %s", tmp, strerror(errno));
		unlink(tmp);
		return MAILDIR_TEMPFAIL;
	}
	char newdir[4096];
	snprintf(newdir, sizeof(newdir), "%s/new", dir);
	if (!fs_sync_dir(newdir)) {
		snprintf(why, whylen, "cannot sync %s: %s", newdir, strerror(errno));
		/* The file is there, but not known to be durable: say 4xx; a
		 * retry may deliver twice, which is better than losing it. */
		return MAILDIR_TEMPFAIL;
	}
	if (name_out)
		snprintf(name_out, name_len, "%s", name);
	return MAILDIR_OK;
}
