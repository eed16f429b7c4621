/*
 * id.h — identifiers: session ids, queue ids, correlation ids.
 *
 * Ids are 16 characters of [0-9A-Za-z] from the kernel's random source,
 * unique across processes sharing a spool without coordination, and safe
 * as file names.
 */
#ifndef RAMPART_ID_H
#define RAMPART_ID_H

#include <stddef.h>

#define ID_LEN 16
void id_new(char out[ID_LEN + 1]);
/* True if s looks like an id (right length and alphabet): guards file
 * names built from user input. */
int id_valid(const char *s);

#endif
