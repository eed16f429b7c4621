/*
 * rx.h — the regular expressions of rules files, on PCRE2: a pattern
 * written "/PATTERN/FLAGS" ('/' inside it as "\/"; FLAGS any of i
 * caseless, x extended, s dot-all, m multi-line), compiled for UTF-8
 * (invalid UTF-8 in the subject is matched, not refused) and with the JIT
 * when PCRE2 has it; matching bounded by a match limit, so a
 * pathological pattern cannot stall a stage (over the limit: an error,
 * not a match).  And the reading of a rules file: one rule per line,
 * '#' comments and blank lines skipped, lines bounded, errors as
 * "FILE:LINE: what".
 */
#ifndef RAMPART_RX_H
#define RAMPART_RX_H

#include <stdbool.h>
#include <stddef.h>

struct rx;
struct rx_scratch;

/* The "/PATTERN/FLAGS" at *p, compiled; *p moved past it.  NULL and why
 * (what is wrong, and where in the pattern). */
struct rx *rx_parse(const char **p, char *why, size_t whylen);
void rx_free(struct rx *r);

/* Per matching thread: PCRE2's match data and the match limit. */
struct rx_scratch *rx_scratch_new(void);
void rx_scratch_free(struct rx_scratch *s);

/* 1: s[0..n) matches; 0: it does not; -1: the match was cut (the limit)
 * or failed. */
int rx_match(const struct rx *r, const char *s, size_t n, struct rx_scratch *m);

/* Each rule line of path to fn(arg, lineno, line) (leading blanks
 * skipped, line end removed; fn may modify it), at most max_rules of
 * them.  fn returns false with why for a bad line.  False with why
 * ("path:line: ...", or the file's error) on the first problem. */
bool rx_read_rules(const char *path, size_t max_rules,
		   bool (*fn)(void *arg, unsigned lineno, char *line, char *why, size_t whylen), void *arg,
		   char *why, size_t whylen);

#endif
