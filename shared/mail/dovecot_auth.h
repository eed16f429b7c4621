/*
 * dovecot_auth.h — SMTP AUTH credentials checked by a Dovecot that many
 * sites already run: a client of its auth-client socket (the Dovecot
 * authentication protocol, version 1: VERSION/CPID, then AUTH with the
 * PLAIN mechanism and OK/FAIL answers, over one UNIX-socket connection per
 * process, requests pipelined by id).
 *
 * Every check has a deadline; a connection that cannot be made, breaks or
 * says something unexpected fails the checks waiting on it as temporary
 * (the client gets 454, not 535) and is made again for the next check.
 */
#ifndef RAMPART_DOVECOT_AUTH_H
#define RAMPART_DOVECOT_AUTH_H

#include <stdbool.h>

struct event_base;
struct dovecot_auth;

enum dovecot_result { DOVECOT_OK, DOVECOT_FAIL, DOVECOT_TEMPFAIL };

typedef void (*dovecot_done_fn)(void *arg, enum dovecot_result r, const char *reason);

struct dovecot_auth *dovecot_auth_new(struct event_base *base, const char *socket_path, long long timeout_ms);
void dovecot_auth_free(struct dovecot_auth *d);     /* pending checks: TEMPFAIL, "shutting down" */
/* Check user and password for a client at ip (over TLS: secured).  done
 * runs once, from the loop, never before this returns. */
void dovecot_auth_check(struct dovecot_auth *d, const char *user, const char *password, const char *ip,
			dovecot_done_fn done, void *arg);

#endif
