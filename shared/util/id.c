/*
 * id.c — random identifiers of ID_LEN characters of [0-9A-Za-z].
 *
 * Bytes come from getrandom(2); a byte is mapped onto the 62-character
 * alphabet only when it is below 248 (4 * 62), so every character is
 * equally likely (no modulo bias); other bytes are discarded.
 */
#include "id.h"
#include "log.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

static const char id_alphabet[] =
	"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#define ID_ALPHABET_LEN 62
#define ID_ACCEPT_BELOW (256 - 256 % ID_ALPHABET_LEN)   /* 248 */

static void random_fill(unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = getrandom(p, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			log_fatal(NULL, NULL, "getrandom_failed", "error=%s", strerror(errno));
		}
		p += r;
		n -= (size_t)r;
	}
}

void id_new(char out[ID_LEN + 1])
{
	unsigned char rnd[ID_LEN * 2];
	size_t have = 0;

	while (have < ID_LEN) {
		random_fill(rnd, sizeof rnd);
		for (size_t i = 0; i < sizeof rnd && have < ID_LEN; i++) {
			if (rnd[i] < ID_ACCEPT_BELOW)
				out[have++] = id_alphabet[rnd[i] % ID_ALPHABET_LEN];
		}
	}
	out[ID_LEN] = '\0';
}

static int id_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

int id_valid(const char *s)
{
	if (!s)
		return 0;
	for (size_t i = 0; i < ID_LEN; i++) {
		if (!id_char(s[i]))     /* also stops at a NUL before ID_LEN */
			return 0;
	}
	return s[ID_LEN] == '\0';
}
