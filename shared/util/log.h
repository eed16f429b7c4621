/*
 * log.h — structured logging: one JSON object per line.
 *
 * Every line carries time, level, stage, instance, the session id and the
 * queue id (when known) and an event name, followed by event fields.  The
 * fields are given as a printf-like list of key=value pairs:
 *
 *     log_info(sid, qid, "delivered", "rcpt=%s code=%d", rcpt, 250);
 *
 * Keys are literal; %d/%i/%u/%ld/%lu/%lld/%llu/%zu/%zd/%f values become JSON
 * numbers, %s, %.*s and %c become JSON strings (escaped).  Severities:
 * warn for something unusual but handled, error for a failed operation the
 * process survives, fatal for a broken environment (logs and exits 1),
 * panic for a broken invariant (logs and aborts).
 */
#ifndef RAMPART_LOG_H
#define RAMPART_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum log_level { LL_DEBUG, LL_INFO, LL_WARN, LL_ERROR, LL_FATAL, LL_PANIC };

void log_init(const char *stage, const char *instance);
void log_set_level(enum log_level level);
bool log_level_parse(const char *name, enum log_level *out);
void log_set_syslog(bool on);
/* Where lines go: a file descriptor (default 2). */
void log_set_fd(int fd);
bool log_enabled(enum log_level level);

void log_emit(enum log_level level, const char *sid, const char *qid, const char *event,
	      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void log_vemit(enum log_level level, const char *sid, const char *qid, const char *event,
	       const char *fmt, va_list ap);

#define log_debug(sid, qid, ev, ...) \
	do { if (log_enabled(LL_DEBUG)) log_emit(LL_DEBUG, sid, qid, ev, __VA_ARGS__); } while (0)
#define log_info(sid, qid, ev, ...)  log_emit(LL_INFO, sid, qid, ev, __VA_ARGS__)
#define log_warn(sid, qid, ev, ...)  log_emit(LL_WARN, sid, qid, ev, __VA_ARGS__)
#define log_error(sid, qid, ev, ...) log_emit(LL_ERROR, sid, qid, ev, __VA_ARGS__)

void log_fatal(const char *sid, const char *qid, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 4, 5), noreturn));
void log_panic(const char *sid, const char *qid, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 4, 5), noreturn));

/* Fill a caller's bounded "why" buffer (the reason string every
 * fallible function returns); NULL or 0 length is allowed. */
void set_why(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Render one line into a caller's buffer (used by log_emit and tests). */
struct buf;
void log_format(struct buf *out, enum log_level level, const char *sid, const char *qid,
		const char *event, const char *fmt, va_list ap);

#endif
