/*
 * shared.h — objects a check keeps for the life of the process, across
 * the generations of its instances (a SIGHUP builds new instances; an
 * antivirus engine that takes seconds to load must not be rebuilt on the
 * event loop each time).  The stage owns the table (check_env.shared) and
 * releases what is in it when it exits; keys are the check's own
 * ("clamav:/var/lib/clamav").  Used from the event loop thread only.
 */
#ifndef RAMPART_CHECK_SHARED_H
#define RAMPART_CHECK_SHARED_H

struct check_shared;

struct check_shared *check_shared_new(void);
/* Releases every object left, in the reverse order of their putting. */
void check_shared_free(struct check_shared *s);
/* The object under key, or NULL. */
void *check_shared_get(struct check_shared *s, const char *key);
/* Keep obj under key (which must be free) until the process ends. */
void check_shared_put(struct check_shared *s, const char *key, void *obj, void (*release)(void *obj));

#endif
