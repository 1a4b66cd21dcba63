/* jinja: a Jinja2-subset interpreter for chat templates (lexer -> parser -> immutable AST ->
 * evaluator), with the semantics of Python Jinja2 as Hugging Face transformers configures it:
 * trim_blocks, lstrip_blocks, loop controls, an immutable sandbox, raise_exception, tojson.
 *
 * Supported: {% if/elif/else %}, {% for a[, b] in x [if c] %} with {% else %}, loop.index,
 * index0, revindex, revindex0, first, last, length, previtem, nextitem; {% set %} of names,
 * namespace attributes (ns.x = ...) and blocks ({% set x %}...{% endset %}); {% break %},
 * {% continue %}, {% raw %}, transformers' {% generation %}; comments; whitespace control
 * ({%- -%} {{- -}} {#- -#} {%+ +%}). Expressions: str/int/float/bool/none literals, lists,
 * tuples, dicts, + - * / // % ** ~, comparisons (chained), and/or/not, in/not in, a if c else b,
 * attribute and subscript access, slices ([::-1], [1:]), is-tests (defined, undefined, none,
 * string, number, integer, float, boolean, true, false, mapping, iterable, sequence, callable,
 * odd, even, divisibleby, eq/equalto/ne/lt/le/gt/ge, in, sameas, lower, upper), filters (trim,
 * length/count, upper, lower, capitalize, title, default/d, tojson, string, join, first, last,
 * items, list, select, reject, selectattr, rejectattr, map, replace, int, float, abs, reverse,
 * safe), str methods (strip, lstrip, rstrip, split, startswith, endswith, upper, lower,
 * replace, title, capitalize, join, find, count), dict methods (get, items, keys, values), and
 * the globals raise_exception, namespace, range, dict, strftime_now. Undefined names behave as
 * Jinja2's default Undefined. Not supported (refused at parse time with a message naming the
 * construct): macros, call blocks, {% filter %}, {% with %}, include/import/extends/blocks,
 * recursive loops, unknown filters and tests; strings are Python str (lengths, indexes and
 * slices count code points, not bytes).
 *
 * Limits, so that a hostile template or conversation cannot hang or exhaust the daemon: source
 * size, nesting depth, steps per render, memory per render, range() length, data nesting. */
#ifndef LORAD_JINJA_H
#define LORAD_JINJA_H

#include <jansson.h>
#include <stddef.h>

#include "core/error.h"

#define JINJA_MAX_SOURCE (1u << 20)       /* bytes of template source */
#define JINJA_MAX_DEPTH 64                /* nesting of blocks and expressions */
#define JINJA_MAX_STEPS 10000000u         /* evaluation steps per render */
#define JINJA_MAX_MEMORY (64u << 20)      /* bytes per render, plus 8x the variables' size */
#define JINJA_MAX_RANGE 100000            /* items of one range() */

typedef struct jinja_template jinja_template;

/* Parses src (len bytes, UTF-8). name (copied) is used in error messages. On error returns NULL
 * and fills err (LR_EINVAL, "template 'NAME' line N: ..."). The result is immutable: it may be
 * rendered by several threads at once. */
jinja_template *jinja_parse(const char *name, const char *src, size_t len, lr_error *err);
void jinja_free(jinja_template *t);  /* accepts NULL */

/* Renders with the global variables of vars (a JSON object, borrowed; JSON null is Python None).
 * On success *out is a malloc'd NUL-terminated string the caller frees and *len its length.
 * On error returns LR_EINVAL (LR_ENOMEM when out of memory) and sets *out = NULL: the message is
 * exactly the template's when it called raise_exception(msg), otherwise
 * "template 'NAME' line N: ...". Thread-safe. */
int jinja_render(const jinja_template *t, const json_t *vars, char **out, size_t *len,
                 lr_error *err);

#endif
