/*
 * config.h — rampart.conf: declared parameters, INI parsing, overrides.
 *
 * rampart.conf is INI-style: a [global] section and one section per stage
 * instance.  A section's name is the instance name; the part before the
 * first '.' names the stage ([mx], [mx.b] are two instances of stage mx).
 *
 * Every parameter is declared once, in a table of struct param_def, with
 * its type, default, bounds and one line of documentation; the same table
 * drives parsing, validation, environment overrides, `rampartctl config
 * check` and the documentation.  Values are stored into a caller's struct
 * at the declared offsets.  Every key can be overridden by the environment
 * variable RAMPART_<SECTION>_<KEY> (upper case, '.' and '-' become '_').
 *
 * Errors name the place (file:line, or the environment variable) and what
 * was expected; an unknown key in a section that is bound is an error.
 */
#ifndef RAMPART_CONFIG_H
#define RAMPART_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum param_type {
	PT_BOOL,     /* bool: yes/no, true/false, on/off, 1/0 */
	PT_INT,      /* long long, within [min, max] */
	PT_SIZE,     /* long long bytes; suffixes k, m, g (powers of 1024) */
	PT_TIME,     /* long long milliseconds; suffixes ms, s, m, h, d; bare number = seconds */
	PT_STR,      /* char * (owned by the config), "" allowed unless min > 0 */
	PT_LIST,     /* struct strlist: comma- or space-separated words */
	PT_ENUM,     /* int: index into choices "a|b|c" */
	PT_NUMBER,   /* double: a decimal number ("5", "-1.5", no exponent), within [min, max] */
};

struct strlist {
	size_t n;
	char **v;
};

struct param_def {
	const char *name;
	enum param_type type;
	const char *def;        /* default, as it would be written in the file */
	long long min, max;     /* numeric bounds (PT_INT/SIZE/TIME); PT_STR/LIST: min items/len */
	const char *choices;    /* PT_ENUM: "queue|proxy" */
	size_t offset;          /* where the value lives in the target struct */
	const char *doc;        /* one line */
};

/* Terminates a table. */
#define PARAM_END { NULL, PT_BOOL, NULL, 0, 0, NULL, 0, NULL }

/* A stage (or the [global] section): its name, table and struct size. */
struct param_set {
	const char *stage;      /* "global", "mx", "store", ... */
	const char *doc;        /* one line: what the section configures */
	const struct param_def *params;
	size_t size;            /* sizeof the target struct */
};

struct config_error {
	char msg[512];          /* "rampart.conf:12: [mx] max_size: expected a size ..." */
};

/* Raw parse result: sections with key/value pairs and their lines. */
struct config;

struct config *config_parse_file(const char *path, struct config_error *err);
struct config *config_parse_string(const char *name, const char *text, struct config_error *err);
void config_free(struct config *cfg);
const char *config_path(const struct config *cfg);

/* Section names in file order; n set to the count. */
const char **config_sections(const struct config *cfg, size_t *n);
bool config_has_section(const struct config *cfg, const char *section);
/* The stage part of a section name: "mx.b" -> "mx" (into out). */
void config_section_stage(const char *section, char *out, size_t outlen);

/*
 * Fill target (a struct of set->size bytes) for section: defaults, then
 * the section's keys, then environment overrides.  The section need not
 * exist in the file (defaults and environment still apply).  Returns false
 * and fills err on the first bad value or unknown key.  On success,
 * release the values later with config_release(set, target).
 */
bool config_bind(const struct config *cfg, const char *section, const struct param_set *set,
		 void *target, struct config_error *err);
void config_release(const struct param_set *set, void *target);
/* The value of a bound PT_STR parameter by name; NULL when set has no
 * such string parameter. */
const char *config_str(const struct param_set *set, const void *target, const char *name);

/* Parse one value (used by bind and by tests). */
bool config_parse_value(const struct param_def *p, const char *text, void *target, char *why,
			size_t whylen);

/* Print the effective values of a bound section, one "key = value" line
 * each, with a comment saying where each came from (default, file:line,
 * environment). */
void config_dump(FILE *out, const struct config *cfg, const char *section,
		 const struct param_set *set, const void *target);
/* Print the documentation of a table (name, type, default, bounds, doc). */
void config_doc(FILE *out, const struct param_set *set);

/* Helpers for values. */
/* Decimal digits at *s (no sign, no blank), moved past them, into *v:
 * false when there is no digit or the number passes limit.  The one
 * number reader for configuration and for protocol and file fields. */
bool parse_digits(const char **s, unsigned long long limit, unsigned long long *v);
bool strlist_contains(const struct strlist *l, const char *s);        /* case-insensitive */
void strlist_free(struct strlist *l);

#endif
