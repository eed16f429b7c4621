/*
 * maildir.h — delivery into a Maildir (tmp -> new, with fsync), with a
 * mailbox quota computed from the Maildir++ ",S=size" in file names.
 */
#ifndef RAMPART_MAILDIR_H
#define RAMPART_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>

enum maildir_result {
	MAILDIR_OK,
	MAILDIR_OVER_QUOTA,         /* mailbox full now: 452 4.2.2 */
	MAILDIR_TOO_BIG,            /* larger than the whole quota: 552 5.2.2 */
	MAILDIR_TEMPFAIL,           /* I/O error, full disk: 451 4.3.0 */
};

/*
 * Deliver data (CRLF lines, as received) into the Maildir at dir (created
 * with tmp/, new/, cur/ if missing), prefixed by the given header lines
 * (e.g. "Return-Path: <a@b>\nDelivered-To: c@d\n", LF-terminated).  Lines
 * are stored with LF endings.  quota 0: none.  The file and the new/
 * directory are fsync'd before MAILDIR_OK.  why says what failed.
 */
enum maildir_result maildir_deliver(const char *dir, const char *prefix, const char *data, size_t len,
				    long long quota, char *name_out, size_t name_len, char *why, size_t whylen);
/* Bytes used by the messages in new/ and cur/ (from ",S=" or stat). */
long long maildir_usage(const char *dir);

/* An address part (local part or domain, in[0..n)) as one component of a
 * mailbox path, lower-cased into out: false when it is empty, too long,
 * starts with '.', or holds '/' or a control byte (no way out of the
 * mail root, no other user's Maildir). */
bool maildir_component(const char *in, size_t n, char *out, size_t outlen);

#endif
