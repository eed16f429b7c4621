/*
 * ledger.h — per-sender accounting: for each envelope sender, sender
 * domain and authenticated login (or application), the messages accepted,
 * recipients, bytes, recipients delivered, deferred and bounced, and
 * what the checks refused.
 *
 * Kept in memory, saved atomically to a file (periodically and at exit)
 * and loaded at start-up, so counts survive restarts; `rampartctl stats
 * senders` reads the same file.  Bounded: past max_entries new senders
 * are counted under "other".
 */
#ifndef RAMPART_LEDGER_H
#define RAMPART_LEDGER_H

#include <stdbool.h>
#include <stdio.h>
#include <stddef.h>

enum ledger_kind { LEDGER_SENDER, LEDGER_DOMAIN, LEDGER_LOGIN, LEDGER_KINDS };

struct ledger_counts {
	unsigned long long messages, recipients, bytes, delivered, deferred, bounced;
	unsigned long long rejected;    /* commands and messages the checks refused */
};

struct ledger;

struct ledger *ledger_new(size_t max_entries);
void ledger_free(struct ledger *l);
/* Load counts saved earlier (a missing file is fine); false and why (the
 * first bad line, how many) when lines were malformed: those are skipped,
 * every good line is loaded. */
bool ledger_load(struct ledger *l, const char *path, char *why, size_t whylen);
/* Write tmp + fsync + rename; false and why on failure. */
bool ledger_save(const struct ledger *l, const char *path, char *why, size_t whylen);

/* A message was accepted.  login may be NULL. */
void ledger_accepted(struct ledger *l, const char *sender, const char *login, size_t nrcpt, size_t bytes);
/* A check refused a command or the message (sender may be NULL: before MAIL). */
void ledger_rejected(struct ledger *l, const char *sender, const char *login);
/* One recipient's delivery outcome: 2xx delivered, 5xx bounced, else deferred. */
void ledger_outcome(struct ledger *l, const char *sender, const char *login, int code);

/* Counts of one key ("" sender is the null sender). NULL if unknown. */
const struct ledger_counts *ledger_get(const struct ledger *l, enum ledger_kind kind, const char *key);

typedef void (*ledger_each_fn)(void *arg, enum ledger_kind kind, const char *key, const struct ledger_counts *c);
void ledger_each(const struct ledger *l, ledger_each_fn fn, void *arg);
const char *ledger_kind_name(enum ledger_kind kind);

/* Print a saved ledger file as a table, biggest senders first (kind NULL:
 * all kinds); false and why if it cannot be read. */
bool ledger_print(const char *path, const char *kind, size_t top, FILE *out, char *why, size_t whylen);

#endif
