/*
 * header.h — walking the header section of a message (RFC 5322 2.2):
 * one field at a time, with its folded continuation lines, bounded by
 * the length given; nothing is copied.  Lines end in CRLF or a bare LF.
 */
#ifndef RAMPART_HEADER_H
#define RAMPART_HEADER_H

#include <stdbool.h>
#include <stddef.h>

struct hdr_field {
	const char *name;       /* the field name, without trailing blanks */
	size_t name_len;
	const char *value;      /* after the colon, through the folded lines, */
	size_t value_len;       /* without the last line end */
	size_t off, len;        /* the whole field in the message, line ends included */
};

/* Offset of the body: just after the empty line that ends the header
 * section, or len when there is none. */
size_t hdr_body_start(const char *msg, size_t len);

/* The field starting at *pos in msg[0..hlen), *pos moved past it.  A
 * line that is not a field (no colon, or a continuation line without a
 * field before it) is passed over.  False at the end of the section (the
 * empty line, or hlen). */
bool hdr_next(const char *msg, size_t hlen, size_t *pos, struct hdr_field *f);

/* The field's name is name (case-insensitive). */
bool hdr_is(const struct hdr_field *f, const char *name);

/* The addresses of a mailbox-list or address-list field value (From, To,
 * Cc, Reply-To; RFC 5322 3.4): each mailbox's addr-spec, "local@domain",
 * comments, display names, angle brackets and folding removed, group
 * names and their terminating ';' passed over, to fn(arg, addr) in order
 * (fn returns false to stop).  An addr-spec longer than HDR_ADDR_MAX is
 * handed over cut.  False when the value is malformed (an unterminated
 * quoted string, comment or angle-addr). */
#define HDR_ADDR_MAX 320
bool hdr_addresses(const char *value, size_t len, bool (*fn)(void *arg, const char *addr), void *arg);

#endif
