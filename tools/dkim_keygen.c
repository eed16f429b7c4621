/*
 * dkim_keygen.c — `rampartctl dkim keygen` (see dkim_keygen.h): OpenSSL 3
 * makes the key, it is written with O_EXCL and mode 0600, and the public
 * half is printed as the DKIM TXT record (RFC 6376 3.6.1; RFC 8463 for
 * ed25519, whose p= is the raw 32-byte public key).
 */
#include "dkim_keygen.h"
#include "mail/dkim_sign.h"
#include "util/alloc.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define RSA_BITS_DEFAULT 2048
#define RSA_BITS_MIN     1024
#define RSA_BITS_MAX     4096
#define TXT_STRING_MAX   255     /* one DNS character-string */

struct keygen_opts {
	char *domain;           /* lower case */
	char *selector;         /* lower case */
	const char *dir;
	bool ed25519;
	bool txt_only;
	long bits;              /* 0: default */
};

static int usage(FILE *f)
{
	fprintf(f, "usage: rampartctl dkim keygen DOMAIN SELECTOR [--ed25519] [--bits N] [--dir DIR] [--txt-only]\n"
		   "  --ed25519    an ed25519-sha256 key (RFC 8463) instead of RSA\n"
		   "  --bits N     RSA key size, %d..%d (default %d)\n"
		   "  --dir DIR    where to write SELECTOR._domainkey.DOMAIN.key (default .)\n"
		   "  --txt-only   print only \"SELECTOR._domainkey.DOMAIN TXT-DATA\" on one line\n",
		RSA_BITS_MIN, RSA_BITS_MAX, RSA_BITS_DEFAULT);
	return 2;
}

static char *lower_dup(const char *s)
{
	char *d = xstrdup(s);
	for (char *p = d; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return d;
}

/* Option value: "--opt=VALUE" or "--opt VALUE". */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
	size_t n = strlen(name);

	if (strncmp(argv[*i], name, n) != 0)
		return NULL;
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (argv[*i][n] == '\0' && *i + 1 < argc)
		return argv[++*i];
	return NULL;
}

/* 0 parsed, 2 usage error (message printed), -1 help printed. */
static int parse_args(int argc, char **argv, struct keygen_opts *o, FILE *out, FILE *err)
{
	const char *pos[2] = { NULL, NULL };
	int npos = 0;
	const char *v;

	memset(o, 0, sizeof(*o));
	o->dir = ".";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--ed25519") == 0) {
			o->ed25519 = true;
		} else if (strcmp(a, "--txt-only") == 0) {
			o->txt_only = true;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(out);
			return -1;
		} else if ((v = opt_value(argc, argv, &i, "--bits"))) {
			char *end;
			errno = 0;
			o->bits = strtol(v, &end, 10);
			if (errno || end == v || *end || o->bits < RSA_BITS_MIN || o->bits > RSA_BITS_MAX) {
				fprintf(err, "rampartctl: --bits: \"%s\" is not a number from %d to %d\n",
					v, RSA_BITS_MIN, RSA_BITS_MAX);
				return 2;
			}
		} else if ((v = opt_value(argc, argv, &i, "--dir"))) {
			if (!*v) {
				fprintf(err, "rampartctl: --dir needs a directory\n");
				return 2;
			}
			o->dir = v;
		} else if (a[0] == '-' && a[1] != '\0') {
			fprintf(err, "rampartctl: dkim keygen: unknown or incomplete option \"%s\"\n", a);
			return usage(err);
		} else if (npos < 2) {
			pos[npos++] = a;
		} else {
			fprintf(err, "rampartctl: dkim keygen: unexpected argument \"%s\"\n", a);
			return usage(err);
		}
	}
	if (npos != 2)
		return usage(err);
	if (o->ed25519 && o->bits) {
		fprintf(err, "rampartctl: --bits is for RSA keys; an ed25519 key is always 256 bits\n");
		return 2;
	}
	if (!o->bits)
		o->bits = RSA_BITS_DEFAULT;
	if (!dkim_dns_name_valid(pos[0])) {
		fprintf(err, "rampartctl: \"%s\" is not a domain name\n", pos[0]);
		return 2;
	}
	if (!dkim_dns_name_valid(pos[1]) ||
	    strlen(pos[0]) + strlen(pos[1]) + sizeof("._domainkey.") - 1 > 253) {
		fprintf(err, "rampartctl: \"%s\" is not a selector (letters, digits, '-' and '.'; "
			     "SELECTOR._domainkey.DOMAIN at most 253 octets)\n", pos[1]);
		return 2;
	}
	o->domain = lower_dup(pos[0]);
	o->selector = lower_dup(pos[1]);
	return 0;
}

static char *base64(const unsigned char *p, size_t n)
{
	char *o = xmalloc(4 * ((n + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)o, p, (int)n);
	return o;
}

/* "v=DKIM1; k=...; p=..." for the public half of pk; NULL on failure. */
static char *txt_data(EVP_PKEY *pk, bool ed25519)
{
	char *b64 = NULL, *txt;

	if (ed25519) {
		unsigned char raw[32];
		size_t rl = sizeof raw;
		if (EVP_PKEY_get_raw_public_key(pk, raw, &rl) != 1 || rl != sizeof raw)
			return NULL;
		b64 = base64(raw, rl);
	} else {
		unsigned char *der = NULL;
		int dl = i2d_PUBKEY(pk, &der);     /* SubjectPublicKeyInfo */
		if (dl <= 0)
			return NULL;
		b64 = base64(der, (size_t)dl);
		OPENSSL_free(der);
	}
	txt = xasprintf("v=DKIM1; k=%s; p=%s", ed25519 ? "ed25519" : "rsa", b64);
	free(b64);
	return txt;
}

static bool write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

/* Create path (O_EXCL, 0600) with the PKCS#8 PEM of pk, durably.  On
 * failure the file is removed again and err has said why. */
static bool write_key(const char *path, const char *dir, EVP_PKEY *pk, FILE *err)
{
	BIO *b = BIO_new(BIO_s_secmem());      /* cleared when freed */
	char *pem = NULL;
	long n = 0;
	int fd, dfd;
	bool ok;

	if (!b || PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL) != 1 ||
	    (n = BIO_get_mem_data(b, &pem)) <= 0) {
		fprintf(err, "rampartctl: cannot encode the private key\n");
		BIO_free(b);
		return false;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		if (errno == EEXIST)
			fprintf(err, "rampartctl: %s exists: refusing to overwrite a key "
				     "(choose a new selector, or remove the file first)\n", path);
		else
			fprintf(err, "rampartctl: cannot create %s: %s\n", path, strerror(errno));
		BIO_free(b);
		return false;
	}
	/* 0600 whatever the umask. */
	ok = fchmod(fd, 0600) == 0 && write_all(fd, pem, (size_t)n) && fsync(fd) == 0;
	if (!ok)
		fprintf(err, "rampartctl: cannot write %s: %s\n", path, strerror(errno));
	if (close(fd) != 0 && ok) {
		fprintf(err, "rampartctl: cannot write %s: %s\n", path, strerror(errno));
		ok = false;
	}
	BIO_free(b);
	if (!ok) {
		unlink(path);
		return false;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		(void)fsync(dfd);
		close(dfd);
	}
	return true;
}

/* The TXT record in zone-file form, split into 255-octet strings. */
static void print_zone_record(FILE *out, const char *name, const char *txt)
{
	size_t n = strlen(txt);

	fprintf(out, "%s. IN TXT", name);
	for (size_t off = 0; off < n; off += TXT_STRING_MAX) {
		size_t len = n - off < TXT_STRING_MAX ? n - off : TXT_STRING_MAX;
		fprintf(out, " \"%.*s\"", (int)len, txt + off);
	}
	fputc('\n', out);
}

int dkim_keygen_run(int argc, char **argv, FILE *out, FILE *err)
{
	struct keygen_opts o;
	EVP_PKEY *pk = NULL;
	char *file = NULL, *path = NULL, *abs = NULL, *name = NULL, *txt = NULL;
	char absdir[PATH_MAX];
	const char *alg;
	int rc = 1, r;

	r = parse_args(argc, argv, &o, out, err);
	if (r != 0)
		return r < 0 ? 0 : r;
	alg = o.ed25519 ? "ed25519-sha256" : "rsa-sha256";
	if (!realpath(o.dir, absdir)) {
		fprintf(err, "rampartctl: --dir %s: %s\n", o.dir, strerror(errno));
		goto out;
	}
	pk = o.ed25519 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
		       : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)o.bits);
	if (!pk) {
		char e[256] = "";
		ERR_error_string_n(ERR_get_error(), e, sizeof e);
		fprintf(err, "rampartctl: key generation failed: %s\n", e);
		goto out;
	}
	name = xasprintf("%s._domainkey.%s", o.selector, o.domain);
	txt = txt_data(pk, o.ed25519);
	if (!txt) {
		fprintf(err, "rampartctl: cannot encode the public key\n");
		goto out;
	}
	file = xasprintf("%s.key", name);
	path = xasprintf("%s/%s", o.dir, file);
	abs = xasprintf("%s%s%s", absdir, strcmp(absdir, "/") ? "/" : "", file);
	if (!write_key(path, o.dir, pk, err))
		goto out;

	if (o.txt_only) {
		fprintf(out, "%s %s\n", name, txt);
		fprintf(err, "key table line: %s %s %s %s\n", o.domain, o.selector, alg, abs);
	} else {
		fprintf(out, "Private key: %s (%s, %u bits, mode 0600)\n\n", abs, alg,
			o.ed25519 ? 256u : (unsigned)o.bits);
		fprintf(out, "DNS TXT record to publish:\n");
		print_zone_record(out, name, txt);
		fprintf(out, "\nKey table line to add:\n%s %s %s %s\n", o.domain, o.selector, alg, abs);
	}
	rc = fflush(out) == 0 ? 0 : 1;
out:
	ERR_clear_error();
	EVP_PKEY_free(pk);
	free(o.domain);
	free(o.selector);
	free(file);
	free(path);
	free(abs);
	free(name);
	free(txt);
	return rc;
}

int dkim_keygen_main(int argc, char **argv)
{
	return dkim_keygen_run(argc, argv, stdout, stderr);
}
