/*
 * log.c — JSON-lines logger.  Identity (stage, instance), level and sink
 * are set once at start-up by the process's main(); the logger keeps no
 * other state.
 */
#include "log.h"
#include "buf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct {
	char stage[32];
	char instance[64];
	enum log_level level;
	int fd;
	bool syslog;
} L = { "rampart", "", LL_INFO, 2, false };

static const char *level_names[] = { "debug", "info", "warn", "error", "fatal", "panic" };

void log_init(const char *stage, const char *instance)
{
	snprintf(L.stage, sizeof(L.stage), "%s", stage ? stage : "rampart");
	snprintf(L.instance, sizeof(L.instance), "%s", instance ? instance : L.stage);
}

void log_set_level(enum log_level level) { L.level = level; }
void log_set_fd(int fd) { L.fd = fd; }

void log_set_syslog(bool on)
{
	if (on && !L.syslog)
		openlog(L.stage, LOG_PID | LOG_NDELAY, LOG_MAIL);
	L.syslog = on;
}

bool log_level_parse(const char *name, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return true;
		}
	return false;
}

bool log_enabled(enum log_level level)
{
	return level >= L.level;
}

static void put_str_field(struct buf *out, const char *key, size_t klen, const char *val, size_t vlen)
{
	buf_puts(out, ",\"");
	buf_json_escape(out, key, klen);
	buf_puts(out, "\":\"");
	buf_json_escape(out, val, vlen);
	buf_putc(out, '"');
}

/* Walk "k1=%s k2=%d ..." consuming one argument per conversion. */
static void format_fields(struct buf *out, const char *fmt, va_list ap)
{
	const char *p = fmt;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *key = p;
		while (*p && *p != '=' && *p != ' ')
			p++;
		size_t klen = (size_t)(p - key);
		if (*p != '=') {            /* bare word: a flag */
			put_str_field(out, key, klen, "true", 4);
			continue;
		}
		p++;
		/* literal value up to the next space, or a conversion */
		if (*p != '%') {
			const char *v = p;
			while (*p && *p != ' ')
				p++;
			put_str_field(out, key, klen, v, (size_t)(p - v));
			continue;
		}
		p++;
		char spec[16];
		size_t sl = 0;
		spec[sl++] = '%';
		int prec_star = 0;
		if (p[0] == '.' && p[1] == '*') {
			prec_star = 1;
			p += 2;
		}
		while (*p && strchr("hlzjt", *p) && sl < sizeof(spec) - 2)
			spec[sl++] = *p++;
		char conv = *p ? *p++ : 's';
		spec[sl++] = conv;
		spec[sl] = '\0';
		char num[64];
		buf_puts(out, ",\"");
		buf_json_escape(out, key, klen);
		buf_puts(out, "\":");
		switch (conv) {
		case 's': {
			const char *s;
			size_t n;
			if (prec_star) {
				int w = va_arg(ap, int);
				s = va_arg(ap, const char *);
				n = s ? strnlen(s, w < 0 ? 0 : (size_t)w) : 0;
			} else {
				s = va_arg(ap, const char *);
				n = s ? strlen(s) : 0;
			}
			if (!s) {
				buf_puts(out, "null");
				break;
			}
			buf_putc(out, '"');
			buf_json_escape(out, s, n);
			buf_putc(out, '"');
			break;
		}
		case 'c': {
			char c = (char)va_arg(ap, int);
			buf_putc(out, '"');
			buf_json_escape(out, &c, 1);
			buf_putc(out, '"');
			break;
		}
		case 'f': case 'g': case 'e':
			snprintf(num, sizeof(num), "%g", va_arg(ap, double));
			buf_puts(out, num);
			break;
		case 'd': case 'i': case 'u': case 'x': {
			int is_signed = conv == 'd' || conv == 'i';
			const char *m = spec + 1;
			unsigned long long uv = 0;
			long long sv = 0;
			if (strncmp(m, "ll", 2) == 0 || strncmp(m, "j", 1) == 0) {
				if (is_signed) sv = va_arg(ap, long long); else uv = va_arg(ap, unsigned long long);
			} else if (m[0] == 'l' || m[0] == 'z' || m[0] == 't') {
				if (is_signed) sv = va_arg(ap, long); else uv = va_arg(ap, unsigned long);
			} else {
				if (is_signed) sv = va_arg(ap, int); else uv = va_arg(ap, unsigned int);
			}
			if (conv == 'x')
				snprintf(num, sizeof(num), "\"%llx\"", uv);
			else if (is_signed)
				snprintf(num, sizeof(num), "%lld", sv);
			else
				snprintf(num, sizeof(num), "%llu", uv);
			buf_puts(out, num);
			break;
		}
		default:
			buf_puts(out, "null");
			break;
		}
		while (*p && *p != ' ')   /* ignore trailing junk in a token */
			p++;
	}
}

void log_format(struct buf *out, enum log_level level, const char *sid, const char *qid,
		const char *event, const char *fmt, va_list ap)
{
	struct timeval tv;
	struct tm tm;
	char ts[64];
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", (long)(tv.tv_usec / 1000));

	buf_printf(out, "{\"time\":\"%s\",\"level\":\"%s\",\"stage\":\"", ts, level_names[level]);
	buf_json_escape(out, L.stage, strlen(L.stage));
	buf_puts(out, "\",\"instance\":\"");
	buf_json_escape(out, L.instance, strlen(L.instance));
	buf_putc(out, '"');
	if (sid && *sid) {
		buf_puts(out, ",\"session\":\"");
		buf_json_escape(out, sid, strlen(sid));
		buf_putc(out, '"');
	}
	if (qid && *qid) {
		buf_puts(out, ",\"queue_id\":\"");
		buf_json_escape(out, qid, strlen(qid));
		buf_putc(out, '"');
	}
	buf_puts(out, ",\"event\":\"");
	buf_json_escape(out, event, strlen(event));
	buf_putc(out, '"');
	if (fmt)
		format_fields(out, fmt, ap);
	buf_puts(out, "}\n");
}

void log_vemit(enum log_level level, const char *sid, const char *qid, const char *event,
	       const char *fmt, va_list ap)
{
	if (!log_enabled(level) && level < LL_FATAL)
		return;
	int saved = errno;
	struct buf b = BUF_INIT;
	log_format(&b, level, sid, qid, event, fmt, ap);
	if (L.syslog) {
		static const int prio[] = { LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR, LOG_CRIT, LOG_ALERT };
		syslog(prio[level], "%.*s", (int)b.len - 1, b.data);
	} else {
		size_t off = 0;
		while (off < b.len) {
			ssize_t w = write(L.fd, b.data + off, b.len - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			off += (size_t)w;
		}
	}
	buf_free(&b);
	errno = saved;
}

void log_emit(enum log_level level, const char *sid, const char *qid, const char *event,
	      const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vemit(level, sid, qid, event, fmt, ap);
	va_end(ap);
}

void log_fatal(const char *sid, const char *qid, const char *event, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vemit(LL_FATAL, sid, qid, event, fmt, ap);
	va_end(ap);
	exit(1);
}

void log_panic(const char *sid, const char *qid, const char *event, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vemit(LL_PANIC, sid, qid, event, fmt, ap);
	va_end(ap);
	abort();
}

void set_why(char *why, size_t whylen, const char *fmt, ...)
{
	if (!why || !whylen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
}
