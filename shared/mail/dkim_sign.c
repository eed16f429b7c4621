/*
 * dkim_sign.c — DKIM signing on libopendkim (see dkim_sign.h): the key
 * table, keys loaded once, From-domain selection, one signature per key.
 *
 * libopendkim does the canonicalisation, hashing, signing and header
 * formatting; this file only decides what to sign and with which key.
 * Each key file is read, parsed and checked once, and tried once with a
 * test signature.  libopendkim's dkim_sign() takes the private key only
 * as a string and parses it again for every message; the parsed key is
 * handed to it instead (see "the key parsed once" below), which makes a
 * signature about four times cheaper.
 *
 * Known defects of the library made up for here: libopendkim
 * 2.11.0~beta2 (Debian 12) never frees the crypto structure of an ed25519
 * signature (fixed upstream by OpenDKIM PR #321); each signature's memory
 * is tracked and what the library leaves is freed (see "the memory of one
 * signature").
 */
#include "dkim_sign.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <opendkim/dkim.h>

#define KT_LINE_MAX   4096        /* key table line */
#define KEYFILE_MAX   65536       /* key file size */
#define FROM_MAX      8192        /* unfolded From field value */
#define DOMAIN_MAX    253
#define COMMENT_DEPTH 32
#define SIG_PREFIX    "DKIM-Signature: "

struct dkim_key {
	char *domain;           /* lower case */
	char *selector;
	char *path;             /* key file, for messages */
	dkim_alg_t alg;
	unsigned bits;
	unsigned line;          /* in the key table */
	unsigned char *pem;     /* NUL-terminated, as handed to dkim_sign() */
	size_t pemlen;
	EVP_PKEY *pkey;         /* the parsed key, handed to libopendkim */
	unsigned long handed;   /* references handed out since pkey was made */
	unsigned long reuses;   /* signatures made with pkey */
};

struct dkim_signer {
	DKIM_LIB *lib;
	char *path;
	struct dkim_key *keys;  /* sorted by domain, then table order */
	size_t nkeys;
};

/* Header fields signed when present; From is also oversigned. */
static const char *const sign_hdrs[] = {
	"from", "to", "cc", "subject", "date", "message-id", "reply-to",
	"mime-version", "content-type", "content-transfer-encoding",
	"in-reply-to", "references", NULL
};
static const char *const oversign_hdrs[] = { "from", NULL };

/* ---- names ------------------------------------------------------------- */

bool dkim_dns_name_valid(const char *name)
{
	size_t total = 0, label = 0;
	const char *p;

	if (!name || !*name)
		return false;
	for (p = name; *p; p++, total++) {
		unsigned char c = (unsigned char)*p;
		if (c == '.') {
			if (label == 0 || p[-1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!isalnum(c) && c != '-')
			return false;
		if (c == '-' && label == 0)
			return false;
		if (++label > 63)
			return false;
	}
	return total <= DOMAIN_MAX && label > 0 && p[-1] != '-';
}

static void lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

/* The first OpenSSL error as text ("" when none); the queue is cleared
 * so no stale error reaches another user of OpenSSL in this thread. */
static const char *ssl_error(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	buf[0] = '\0';
	if (e)
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

/* ---- the key parsed once ------------------------------------------------
 *
 * libopendkim parses the key string again in every dkim_eom(), with
 * PEM_read_bio_PrivateKey().  On OpenSSL 3.0 that costs several times the
 * signature itself (decoder set-up, and for RSA the Montgomery set-up of a
 * fresh key object).  The definition below takes precedence over
 * libcrypto's in the whole process (ELF symbol interposition; the library
 * resolves the name through the executable first).  While this thread is
 * inside sign_with() and the memory BIO holds exactly the PEM text of the
 * key in use, it returns a new reference to the key parsed at start-up;
 * every other call goes to OpenSSL's reader unchanged
 * (PEM_read_bio_PrivateKey is PEM_read_bio_PrivateKey_ex in the default
 * library context).  Should a later libopendkim parse keys some other way,
 * signing still works, only slower, and dkim_signer_key_reuses() says so.
 *
 * libopendkim 2.11 never releases an ed25519 key it loaded, so those
 * references are never given back: after KEY_RENEW references the key is
 * replaced by a copy, which keeps the reference count far from overflow
 * and leaks one key object (~150 bytes) per KEY_RENEW signatures instead
 * of the library's ~0.5 KiB per signature.
 */
#define KEY_RENEW (1UL << 20)

static __thread struct dkim_key *signing_key;

/* A copy of an ed25519 key for libopendkim to use.  Its own function so
 * that the references the library keeps (above) can be told apart by the
 * leak checker (tests/lsan.supp); NULL when OpenSSL cannot copy it, and
 * then libopendkim parses the PEM itself. */
static EVP_PKEY *ed25519_key_copy(EVP_PKEY *pk)
{
	return EVP_PKEY_dup(pk);
}

EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb *cb, void *u)
{
	struct dkim_key *k = signing_key;
	char *data = NULL;
	long n;

	if (k && k->pkey && !x && bp && BIO_method_type(bp) == BIO_TYPE_MEM &&
	    (n = BIO_get_mem_data(bp, &data)) > 0 && (size_t)n == k->pemlen &&
	    memcmp(data, k->pem, k->pemlen) == 0) {
		if (k->handed >= KEY_RENEW) {
			EVP_PKEY *fresh = k->alg == DKIM_SIGN_RSASHA256 ? EVP_PKEY_dup(k->pkey)
								       : ed25519_key_copy(k->pkey);
			if (fresh) {
				EVP_PKEY_free(k->pkey);
				k->pkey = fresh;
				k->handed = 0;
			}
		}
		if (EVP_PKEY_up_ref(k->pkey) == 1) {
			k->handed++;
			k->reuses++;
			return k->pkey;
		}
	}
	return PEM_read_bio_PrivateKey_ex(bp, x, cb, u, NULL, NULL);
}

/* ---- the memory of one signature -----------------------------------------
 *
 * libopendkim allocates through the functions given to dkim_init(), passing
 * the closure given to dkim_sign() for everything that belongs to one
 * handle (NULL for the library's own memory).  2.11 does not free all of a
 * handle's memory in dkim_free() (for ed25519, its crypto structure: 64
 * bytes a signature, without end in a long-running stage), so each
 * signature gets its own list of blocks and whatever is left in it after
 * dkim_free() is released here.
 */
struct sig_mem {
	union sig_block *head;
};

union sig_block {
	struct {
		union sig_block *prev, *next;
	} l;
	max_align_t align;      /* what follows the header stays aligned */
};

static void *sig_malloc(void *closure, size_t n)
{
	struct sig_mem *m = closure;
	union sig_block *b;

	if (!m)
		return xmalloc(n);
	b = xmalloc(sizeof(*b) + n);
	b->l.prev = NULL;
	b->l.next = m->head;
	if (m->head)
		m->head->l.prev = b;
	m->head = b;
	return b + 1;
}

static void sig_free(void *closure, void *p)
{
	struct sig_mem *m = closure;
	union sig_block *b;

	if (!m || !p) {
		free(p);
		return;
	}
	b = (union sig_block *)p - 1;
	if (b->l.prev)
		b->l.prev->l.next = b->l.next;
	else
		m->head = b->l.next;
	if (b->l.next)
		b->l.next->l.prev = b->l.prev;
	free(b);
}

/* Free what the library left of a handle; the number of blocks. */
static size_t sig_mem_release(struct sig_mem *m)
{
	size_t n = 0;

	while (m->head) {
		union sig_block *b = m->head;
		m->head = b->l.next;
		free(b);
		n++;
	}
	return n;
}

/* ---- one signature ----------------------------------------------------- */

/* Append one "DKIM-Signature: ...\r\n" made with key k; false with why. */
static bool sign_once(struct dkim_signer *s, const struct dkim_key *k, struct sig_mem *mem,
		      const char *msg, size_t len, struct buf *out, char *why, size_t whylen)
{
	DKIM_STAT st = DKIM_STAT_OK;
	DKIM *d;
	unsigned char *hdr = NULL;
	size_t hlen = 0;
	const char *step = "dkim_sign";

	d = dkim_sign(s->lib, (const unsigned char *)"rampart", mem, k->pem,
		      (const unsigned char *)k->selector, (const unsigned char *)k->domain,
		      DKIM_CANON_RELAXED, DKIM_CANON_RELAXED, k->alg, -1, &st);
	if (!d) {
		set_why(why, whylen, "s=%s d=%s: dkim_sign: %s", k->selector, k->domain,
			dkim_getresultstr(st));
		ERR_clear_error();
		return false;
	}
	/* dkim_chunk() copies what it needs and does not write to the data. */
	st = dkim_chunk(d, (unsigned char *)(uintptr_t)msg, len);
	if (st == DKIM_STAT_OK) {
		step = "dkim_chunk";
		st = dkim_chunk(d, NULL, 0);
	}
	if (st == DKIM_STAT_OK) {
		step = "dkim_eom";
		st = dkim_eom(d, NULL);
	}
	if (st == DKIM_STAT_OK) {
		step = "dkim_getsighdr";
		st = dkim_getsighdr_d(d, strlen(SIG_PREFIX), &hdr, &hlen);
	}
	if (st != DKIM_STAT_OK) {
		const char *err = dkim_geterror(d);
		set_why(why, whylen, "s=%s d=%s: %s: %s%s%s", k->selector, k->domain, step,
			dkim_getresultstr(st), err && *err ? ": " : "", err ? err : "");
		dkim_free(d);
		ERR_clear_error();
		return false;
	}
	buf_puts(out, SIG_PREFIX);
	buf_append(out, hdr, hlen);
	buf_puts(out, "\r\n");
	dkim_free(d);
	if (out->overflow) {
		set_why(why, whylen, "s=%s d=%s: signature does not fit the output buffer",
			k->selector, k->domain);
		return false;
	}
	return true;
}

/* sign_once() with k's parsed key offered to libopendkim (see above). */
static bool sign_with(struct dkim_signer *s, struct dkim_key *k, const char *msg,
		      size_t len, struct buf *out, char *why, size_t whylen)
{
	struct sig_mem mem = { NULL };
	bool ok;

	signing_key = k;
	ok = sign_once(s, k, &mem, msg, len, out, why, whylen);
	signing_key = NULL;
	sig_mem_release(&mem);
	return ok;
}

/* ---- key files --------------------------------------------------------- */

static int no_password(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;      /* never prompt: encrypted keys are refused */
}

/* Read the whole key file (bounded) into a fresh buffer; NULL with why. */
static unsigned char *read_key_file(const char *path, size_t *lenp, char *why, size_t whylen)
{
	struct stat st;
	unsigned char *data;
	size_t n = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0) {
		set_why(why, whylen, "cannot open: %s", strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		set_why(why, whylen, "not a regular file");
		close(fd);
		return NULL;
	}
	if (st.st_size <= 0 || st.st_size > KEYFILE_MAX) {
		set_why(why, whylen, "size %lld is not that of a private key (1..%d bytes)",
			(long long)st.st_size, KEYFILE_MAX);
		close(fd);
		return NULL;
	}
	if (st.st_mode & (S_IWGRP | S_IRWXO))
		log_warn(NULL, NULL, "dkim_key_permissions", "file=%s mode=%o",
			 path, (unsigned)(st.st_mode & 07777));
	data = xmalloc((size_t)st.st_size + 1);
	while (n < (size_t)st.st_size) {
		ssize_t r = read(fd, data + n, (size_t)st.st_size - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			set_why(why, whylen, "cannot read: %s", r < 0 ? strerror(errno) : "file shrank");
			OPENSSL_cleanse(data, n);
			free(data);
			close(fd);
			return NULL;
		}
		n += (size_t)r;
	}
	close(fd);
	data[n] = '\0';
	*lenp = n;
	return data;
}

/* Parse the key file, check it against the algorithm and keep it as the
 * PEM text libopendkim will parse per message.  False with why. */
static bool load_key(struct dkim_key *k, char *why, size_t whylen)
{
	char err[256];
	size_t len = 0;
	unsigned char *data = read_key_file(k->path, &len, why, whylen);
	EVP_PKEY *pk = NULL;
	BIO *b;
	bool ok = false;

	if (!data)
		return false;
	ERR_clear_error();
	if (memmem(data, len, "-----BEGIN", 10)) {
		b = BIO_new_mem_buf(data, (int)len);
		if (b)
			pk = PEM_read_bio_PrivateKey(b, NULL, no_password, NULL);
		BIO_free(b);
	} else {
		const unsigned char *p = data;
		pk = d2i_AutoPrivateKey(NULL, &p, (long)len);
	}
	OPENSSL_cleanse(data, len);
	free(data);
	if (!pk) {
		ssl_error(err, sizeof err);
		set_why(why, whylen, "not an unencrypted private key in PEM or DER%s%s",
			err[0] ? ": " : "", err);
		return false;
	}

	if (k->alg == DKIM_SIGN_RSASHA256) {
		if (!EVP_PKEY_is_a(pk, "RSA")) {
			set_why(why, whylen, "a %s key, but rsa-sha256 needs an RSA key",
				EVP_PKEY_get0_type_name(pk));
			goto out;
		}
		k->bits = (unsigned)EVP_PKEY_get_bits(pk);
		if (k->bits < 1024) {
			set_why(why, whylen, "RSA key of %u bits: at least 1024 needed (RFC 8301), 2048 recommended",
				k->bits);
			goto out;
		}
		if (k->bits < 2048)
			log_warn(NULL, NULL, "dkim_key_weak", "file=%s bits=%u recommended=2048",
				 k->path, k->bits);
	} else {
		if (!EVP_PKEY_is_a(pk, "ED25519")) {
			set_why(why, whylen, "a %s key, but ed25519-sha256 needs an ED25519 key",
				EVP_PKEY_get0_type_name(pk));
			goto out;
		}
		k->bits = 256;
	}

	/* Secure-memory BIO: cleared when freed. */
	b = BIO_new(BIO_s_secmem());
	if (b) {
		int r = k->alg == DKIM_SIGN_RSASHA256
			? PEM_write_bio_PrivateKey_traditional(b, pk, NULL, NULL, 0, NULL, NULL)
			: PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL);
		char *p = NULL;
		long n = r == 1 ? BIO_get_mem_data(b, &p) : 0;
		if (n > 0) {
			k->pem = xmalloc((size_t)n + 1);
			memcpy(k->pem, p, (size_t)n);
			k->pem[n] = '\0';
			k->pemlen = (size_t)n;
			ok = true;
		}
		BIO_free(b);
	}
	if (!ok)
		set_why(why, whylen, "cannot re-encode the key: %s", ssl_error(err, sizeof err));
out:
	if (ok && k->alg == DKIM_SIGN_RSASHA256) {
		k->pkey = pk;
		pk = NULL;
	} else if (ok) {
		k->pkey = ed25519_key_copy(pk);
	}
	EVP_PKEY_free(pk);
	ERR_clear_error();
	return ok;
}

static void key_clear(struct dkim_key *k)
{
	free(k->domain);
	free(k->selector);
	free(k->path);
	if (k->pem)
		OPENSSL_clear_free(k->pem, k->pemlen + 1);
	EVP_PKEY_free(k->pkey);
	memset(k, 0, sizeof(*k));
}

/* ---- the key table ----------------------------------------------------- */

static int key_cmp(const void *a, const void *b)
{
	const struct dkim_key *x = a, *y = b;
	int c = strcmp(x->domain, y->domain);

	if (c)
		return c;
	return x->line < y->line ? -1 : x->line > y->line;
}

/* Index of the first key of domain (lower case), or nkeys. */
static size_t first_key(const struct dkim_signer *s, const char *domain)
{
	size_t lo = 0, hi = s->nkeys;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(s->keys[mid].domain, domain) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->nkeys && strcmp(s->keys[lo].domain, domain) == 0 ? lo : s->nkeys;
}

/* KEYFILE relative to the key table's directory unless absolute. */
static char *key_path(const char *table, const char *file)
{
	const char *slash = strrchr(table, '/');

	if (file[0] == '/' || !slash)
		return xstrdup(file);
	return xasprintf("%.*s/%s", (int)(slash - table), table, file);
}

/* Sign a small message with the key once, so that a key libopendkim
 * cannot use is found at start-up and not on every message. */
static bool try_key(struct dkim_signer *s, struct dkim_key *k, char *why, size_t whylen)
{
	struct buf out = BUF_INIT;
	char *msg = xasprintf("From: <postmaster@%s>\r\nSubject: DKIM key check\r\n\r\n"
			      "DKIM key check\r\n", k->domain);
	bool ok = sign_with(s, k, msg, strlen(msg), &out, why, whylen);

	buf_free(&out);
	free(msg);
	return ok;
}

static bool parse_line(struct dkim_signer *s, const char *path, unsigned lineno, char *line,
		       char *why, size_t whylen)
{
	char *tok[5];
	size_t ntok = 0;
	char *save = NULL, *t;
	char kwhy[512];
	struct dkim_key k;

	if ((t = strchr(line, '#')))
		*t = '\0';
	for (t = strtok_r(line, " \t\r\f\v", &save); t && ntok < 5;
	     t = strtok_r(NULL, " \t\r\f\v", &save))
		tok[ntok++] = t;
	if (ntok == 0)
		return true;
	if (ntok != 4) {
		set_why(why, whylen, "%s:%u: expected DOMAIN SELECTOR ALGORITHM KEYFILE, got %zu%s field%s",
			path, lineno, ntok, ntok == 5 ? " or more" : "", ntok == 1 ? "" : "s");
		return false;
	}
	if (!dkim_dns_name_valid(tok[0])) {
		set_why(why, whylen, "%s:%u: \"%s\" is not a domain name", path, lineno, tok[0]);
		return false;
	}
	if (!dkim_dns_name_valid(tok[1])) {
		set_why(why, whylen, "%s:%u: \"%s\" is not a selector (letters, digits, '-' and '.')",
			path, lineno, tok[1]);
		return false;
	}
	memset(&k, 0, sizeof k);
	if (strcasecmp(tok[2], "rsa-sha256") == 0) {
		k.alg = DKIM_SIGN_RSASHA256;
	} else if (strcasecmp(tok[2], "ed25519-sha256") == 0) {
		k.alg = DKIM_SIGN_ED25519SHA256;
	} else {
		set_why(why, whylen, "%s:%u: unknown algorithm \"%s\": expected rsa-sha256 or ed25519-sha256",
			path, lineno, tok[2]);
		return false;
	}
	k.domain = xstrdup(tok[0]);
	lower(k.domain);
	k.selector = xstrdup(tok[1]);
	lower(k.selector);
	k.line = lineno;
	k.path = key_path(path, tok[3]);
	if (!load_key(&k, kwhy, sizeof kwhy)) {
		set_why(why, whylen, "%s:%u: key file %s: %s", path, lineno, k.path, kwhy);
		key_clear(&k);
		return false;
	}
	if (!try_key(s, &k, kwhy, sizeof kwhy)) {
		set_why(why, whylen, "%s:%u: key file %s: libopendkim cannot sign with it: %s",
			path, lineno, k.path, kwhy);
		key_clear(&k);
		return false;
	}
	s->keys = xrealloc(s->keys, (s->nkeys + 1) * sizeof(*s->keys));
	s->keys[s->nkeys++] = k;
	return true;
}

struct dkim_signer *dkim_signer_new(const char *path, char *why, size_t whylen)
{
	struct dkim_signer *s;
	char line[KT_LINE_MAX + 2];
	unsigned lineno = 0;
	unsigned int flags = DKIM_LIBFLAGS_NONE;
	bool ok = true;
	FILE *f;

	set_why(why, whylen, "%s", "");
	f = fopen(path, "re");
	if (!f) {
		set_why(why, whylen, "%s: cannot read: %s", path, strerror(errno));
		return NULL;
	}
	s = xcalloc(1, sizeof(*s));
	s->path = xstrdup(path);
	s->lib = dkim_init(sig_malloc, sig_free);
	if (!s->lib) {
		set_why(why, whylen, "%s: dkim_init failed", path);
		ok = false;
	}
	if (ok && (dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags) !=
			   DKIM_STAT_OK ||
		   dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS,
				(void *)(uintptr_t)sign_hdrs, sizeof(char **)) != DKIM_STAT_OK ||
		   dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS,
				(void *)(uintptr_t)oversign_hdrs, sizeof(char **)) != DKIM_STAT_OK)) {
		set_why(why, whylen, "%s: cannot set libopendkim options", path);
		ok = false;
	}
	while (ok && fgets(line, sizeof line, f)) {
		size_t l = strlen(line);
		lineno++;
		if (l > 0 && line[l - 1] == '\n') {
			line[--l] = '\0';
		} else if (!feof(f)) {
			set_why(why, whylen, "%s:%u: line longer than %d bytes", path, lineno, KT_LINE_MAX);
			ok = false;
			break;
		}
		ok = parse_line(s, path, lineno, line, why, whylen);
	}
	if (ok && ferror(f)) {
		set_why(why, whylen, "%s: read error: %s", path, strerror(errno));
		ok = false;
	}
	fclose(f);
	if (ok && s->nkeys == 0) {
		set_why(why, whylen, "%s: no keys (expected lines DOMAIN SELECTOR ALGORITHM KEYFILE)", path);
		ok = false;
	}
	if (!ok) {
		dkim_signer_free(s);
		return NULL;
	}
	qsort(s->keys, s->nkeys, sizeof(*s->keys), key_cmp);
	/* One selector once per domain (a domain's keys are adjacent). */
	for (size_t i = 0; i < s->nkeys; i++)
		for (size_t j = i + 1; j < s->nkeys && strcmp(s->keys[j].domain, s->keys[i].domain) == 0; j++)
			if (strcmp(s->keys[j].selector, s->keys[i].selector) == 0) {
				set_why(why, whylen, "%s:%u: selector %s of %s is already at line %u",
					path, s->keys[j].line, s->keys[j].selector, s->keys[j].domain,
					s->keys[i].line);
				dkim_signer_free(s);
				return NULL;
			}
	for (size_t i = 0; i < s->nkeys; i++)
		log_info(NULL, NULL, "dkim_key_loaded", "table=%s line=%u domain=%s selector=%s alg=%s bits=%u",
			 path, s->keys[i].line, s->keys[i].domain, s->keys[i].selector,
			 s->keys[i].alg == DKIM_SIGN_RSASHA256 ? "rsa-sha256" : "ed25519-sha256",
			 s->keys[i].bits);
	return s;
}

void dkim_signer_free(struct dkim_signer *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->nkeys; i++)
		key_clear(&s->keys[i]);
	free(s->keys);
	if (s->lib)
		dkim_close(s->lib);
	free(s->path);
	free(s);
}

unsigned long dkim_signer_key_reuses(const struct dkim_signer *s)
{
	unsigned long n = 0;

	for (size_t i = 0; i < s->nkeys; i++)
		n += s->keys[i].reuses;
	return n;
}

size_t dkim_signer_key_count(const struct dkim_signer *s)
{
	return s ? s->nkeys : 0;
}

bool dkim_signer_has_domain(const struct dkim_signer *s, const char *domain)
{
	char d[DOMAIN_MAX + 2];
	size_t n;

	if (!s || !domain || (n = strlen(domain)) == 0 || n > DOMAIN_MAX + 1)
		return false;
	memcpy(d, domain, n + 1);
	if (d[n - 1] == '.')
		d[n - 1] = '\0';
	lower(d);
	return first_key(s, d) < s->nkeys;
}

/* ---- the From domain --------------------------------------------------- */

/* s[i] is '(': index after the comment, or SIZE_MAX when unterminated. */
static size_t skip_comment(const char *s, size_t n, size_t i)
{
	int depth = 0;

	for (; i < n; i++) {
		if (s[i] == '\\')
			i++;
		else if (s[i] == '(' && ++depth > COMMENT_DEPTH)
			return SIZE_MAX;
		else if (s[i] == ')' && --depth == 0)
			return i + 1;
	}
	return SIZE_MAX;
}

/* s[i] is '"': index after the quoted string, or SIZE_MAX. */
static size_t skip_quoted(const char *s, size_t n, size_t i)
{
	for (i++; i < n; i++) {
		if (s[i] == '\\')
			i++;
		else if (s[i] == '"')
			return i + 1;
	}
	return SIZE_MAX;
}

static size_t skip_cfws(const char *s, size_t n, size_t i)
{
	while (i < n) {
		if (s[i] == ' ' || s[i] == '\t')
			i++;
		else if (s[i] == '(')
			i = skip_comment(s, n, i);
		else
			break;
	}
	return i;
}

/* The domain after an '@' at s[i-1], into out (lower case, no trailing
 * dot): a dot-atom or a domain literal.  Index after it, or SIZE_MAX. */
static size_t take_domain(const char *s, size_t n, size_t i, char *out, size_t outlen)
{
	size_t start, len;

	i = skip_cfws(s, n, i);
	if (i >= n)
		return SIZE_MAX;
	start = i;
	if (s[i] == '[') {
		while (i < n && s[i] != ']')
			i++;
		if (i >= n)
			return SIZE_MAX;
		i++;
	} else {
		while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' ||
				 s[i] == '_' || (unsigned char)s[i] >= 0x80))
			i++;
	}
	len = i - start;
	while (len > 0 && s[start + len - 1] == '.')
		len--;
	if (len == 0 || len >= outlen)
		return SIZE_MAX;
	memcpy(out, s + start, len);
	out[len] = '\0';
	lower(out);
	return i;
}

/* The domain of the first address of an unfolded From value. */
static bool parse_from(const char *s, size_t n, char *out, size_t outlen, char *why, size_t whylen)
{
	char bare[DOMAIN_MAX + 2];
	bool have_bare = false;
	size_t i = 0;

	while (i < n) {
		switch (s[i]) {
		case '(':
			i = skip_comment(s, n, i);
			break;
		case '"':
			i = skip_quoted(s, n, i);
			break;
		case '<': {
			/* angle-addr: the domain follows the last '@' before '>' */
			size_t at = SIZE_MAX, j = i + 1;
			while (j < n && s[j] != '>') {
				if (s[j] == '"') {
					j = skip_quoted(s, n, j);
				} else if (s[j] == '(') {
					j = skip_comment(s, n, j);
				} else {
					if (s[j] == '@')
						at = j;
					j++;
				}
			}
			if (j >= n) {
				set_why(why, whylen, "From: unterminated <address>");
				return false;
			}
			if (at == SIZE_MAX || take_domain(s, j, at + 1, out, outlen) == SIZE_MAX) {
				set_why(why, whylen, "From: no domain in the first <address>");
				return false;
			}
			return true;
		}
		case '@':
			if (!have_bare) {
				size_t e = take_domain(s, n, i + 1, bare, sizeof bare);
				if (e == SIZE_MAX) {
					set_why(why, whylen, "From: no domain after '@'");
					return false;
				}
				have_bare = true;
				i = e;
			} else {
				i++;
			}
			break;
		case ',':
		case ';':
			if (have_bare)
				goto bare_done;
			i++;            /* empty list element or group end */
			break;
		case ':':
			have_bare = false;      /* a group's name ends here */
			i++;
			break;
		default:
			i++;
			break;
		}
		if (i == SIZE_MAX) {
			set_why(why, whylen, "From: unterminated quoted string or comment");
			return false;
		}
	}
	if (!have_bare) {
		set_why(why, whylen, "From: no address with a domain");
		return false;
	}
bare_done:
	if (strlen(bare) >= outlen) {
		set_why(why, whylen, "From: domain too long");
		return false;
	}
	memcpy(out, bare, strlen(bare) + 1);
	return true;
}

/* End of the line starting at i: index of its '\n' (or n) and, through
 * *content, the end of its text without CR. */
static size_t line_end(const char *msg, size_t n, size_t i, size_t *content)
{
	const char *nl = memchr(msg + i, '\n', n - i);
	size_t e = nl ? (size_t)(nl - msg) : n;

	*content = e > i && msg[e - 1] == '\r' ? e - 1 : e;
	return e;
}

bool dkim_from_domain(const char *msg, size_t n, char *out, size_t outlen, char *why, size_t whylen)
{
	char val[FROM_MAX + 1];
	size_t vn = 0, i = 0, end, content;

	if (outlen)
		out[0] = '\0';
	while (i < n) {
		end = line_end(msg, n, i, &content);
		if (content == i)
			break;                          /* empty line: end of header */
		if (msg[i] != ' ' && msg[i] != '\t') {
			const char *colon = memchr(msg + i, ':', content - i);
			size_t ne = colon ? (size_t)(colon - msg) : i;
			while (ne > i && (msg[ne - 1] == ' ' || msg[ne - 1] == '\t'))
				ne--;
			if (colon && ne - i == 4 && strncasecmp(msg + i, "from", 4) == 0) {
				size_t from = (size_t)(colon - msg) + 1;
				for (;;) {
					if (content - from > FROM_MAX - vn) {
						set_why(why, whylen, "From field longer than %d bytes", FROM_MAX);
						return false;
					}
					memcpy(val + vn, msg + from, content - from);
					vn += content - from;
					i = end < n ? end + 1 : n;
					if (i >= n || (msg[i] != ' ' && msg[i] != '\t'))
						break;
					from = i;       /* folded: the continuation line */
					end = line_end(msg, n, i, &content);
				}
				val[vn] = '\0';
				return parse_from(val, vn, out, outlen, why, whylen);
			}
		}
		i = end < n ? end + 1 : n;
	}
	set_why(why, whylen, "no From field");
	return false;
}

/* ---- signing ----------------------------------------------------------- */

int dkim_sign_message(struct dkim_signer *s, const char *msg, size_t len, struct buf *out,
		      char *why, size_t whylen)
{
	char domain[DOMAIN_MAX + 2];
	size_t first, start = out->len;
	bool overflow = out->overflow;
	int n = 0;

	set_why(why, whylen, "%s", "");
	if (!dkim_from_domain(msg, len, domain, sizeof domain, why, whylen))
		return 0;
	first = first_key(s, domain);
	if (first == s->nkeys) {
		set_why(why, whylen, "From domain %s has no DKIM key here", domain);
		return 0;
	}
	for (size_t i = first; i < s->nkeys && strcmp(s->keys[i].domain, domain) == 0; i++) {
		if (!sign_with(s, &s->keys[i], msg, len, out, why, whylen)) {
			buf_truncate(out, start);
			out->overflow = overflow;
			return -1;
		}
		n++;
	}
	return n;
}
