/*
 * state_ctl.h — the state store ([state]) opened offline by rampartctl's
 * commands on the defences' data (greylist, ratelimit), with the
 * parameters of their check, and its asynchronous operations run to their
 * end on a private event loop.
 */
#ifndef RAMPART_STATE_CTL_H
#define RAMPART_STATE_CTL_H

#include <stdbool.h>
#include <stddef.h>

#include "mail/state.h"

struct event_base;
struct param_set;

struct state_ctl {
	struct event_base *base;        /* private loop for the asynchronous API */
	struct state *st;               /* NULL: no LMDB file yet (nothing stored) */
	const char *check;              /* the command's check: "greylist", "ratelimit" */
	struct state_config scfg;       /* [state] */
	bool scfg_bound;
	const struct param_set *set;    /* the check's parameters (bound into params when not NULL) */
	void *params;
	char section[160];              /* the section they came from */
};

/* Open the store of the configuration file path ([state]) for a command on
 * check's data, with the check's parameters (of set, into params) from the
 * section the instance's chain reads them from (chain_check_section);
 * valid(arg, path), unless NULL, judges them (printing why not) before
 * the store is opened.  The log shows only errors (the store's own
 * messages, a Redis connection coming and going, when something is
 * wrong).  A missing LMDB file is left alone (true with st NULL: nothing
 * is stored yet) unless create: then it is made and, when run as root,
 * given to the owner of its directory so that the daemons (an
 * unprivileged user) can still open it.  False after printing why;
 * state_ctl_close releases what was opened and bound in any case. */
bool state_ctl_open(struct state_ctl *c, const char *path, const char *instance, const char *check,
		    const struct param_set *set, void *params, bool (*valid)(void *arg, const char *path), void *arg,
		    bool create);
/* The same with an LMDB file named on the command line (--db) instead of
 * a configuration: [state]'s defaults, that file.  A missing file is made
 * when create, else an error (printed). */
bool state_ctl_open_lmdb(struct state_ctl *c, const char *file, const char *check, bool create);
void state_ctl_close(struct state_ctl *c);

/* One operation's outcome: the operation's callback state_ctl_done fills it. */
struct state_ctl_op {
	bool done;
	enum state_status status;
	char reason[256];
	char value[STATE_VALUE_MAX + 1];        /* get: NUL-terminated */
	size_t vlen;
	double tokens;                          /* take */
	char cursor[STATE_KEY_MAX + 64];        /* scan: where the next page starts; "" at the end */
	void (*entry)(void *arg, const struct state_entry *e);  /* scan: each entry found */
	void *arg;
};

void state_ctl_done(void *arg, const struct state_result *r);
/* Run the loop until op is done; false after printing "rampartctl: CHECK:
 * WHAT: state store (BACKEND): REASON" when it failed (STATE_ERROR). */
bool state_ctl_wait(struct state_ctl *c, struct state_ctl_op *op, const char *what);
/* Every entry under prefix, a page (STATE_SCAN_MAX) at a time, to
 * entry(arg, e); after each page, page(arg) (unless NULL) may end the
 * scan (false).  False on a store error (printed). */
bool state_ctl_scan(struct state_ctl *c, const char *prefix, void (*entry)(void *arg, const struct state_entry *e),
		    bool (*page)(void *arg), void *arg);

/* secs as its two largest units, the smaller one left out when zero:
 * "3d 4h", "5m", "0s" (secs <= 0). */
void state_ctl_duration(long long secs, char *out, size_t outlen);

#endif
