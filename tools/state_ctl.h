/*
 * state_ctl.h — the state store ([state]) opened offline by rampartctl's
 * commands on the defences' data (greylist, ratelimit).
 */
#ifndef RAMPART_STATE_CTL_H
#define RAMPART_STATE_CTL_H

#include <stdbool.h>

struct event_base;
struct state;
struct state_config;

struct state_ctl {
	struct event_base *base;        /* private loop for the asynchronous API */
	struct state *st;               /* NULL: no LMDB file yet (nothing stored) */
};

/* Open the store scfg describes (bound from [state], state_dir set); path
 * names the configuration file in messages.  A missing LMDB file is left
 * alone (true with st NULL: nothing is stored yet) unless create: then it
 * is made and, when run as root, given to the owner of its directory so
 * that the daemons (an unprivileged user) can still open it.  False after
 * printing why. */
bool state_ctl_open(struct state_ctl *c, const struct state_config *scfg, const char *path, bool create);
/* Run the loop until *done (set by an operation's callback). */
void state_ctl_wait(struct state_ctl *c, const bool *done);
void state_ctl_close(struct state_ctl *c);

#endif
